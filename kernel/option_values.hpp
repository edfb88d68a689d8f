#pragma once
// Turning TOML values and schema defaults into validated component options.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ember/options.hpp>
#include <ember/result.hpp>

namespace toml {
inline namespace v3 {
class node;
}
}  // namespace toml

namespace ember::kernel {

/// The values of the only substitutions a config may use: `{site}`, `{job_id}`, `{workspace}`.
/// `{{` and `}}` stand for literal braces. A value left empty is not available where the text is read
/// (a site file knows its site but no job), and using it there is an error.
struct Substitutions {
  std::optional<std::string> site = "local";
  std::optional<std::string> job_id = "job";
  std::optional<std::string> workspace = ".";
};

/// Replaces the substitutions in `text`; an unknown `{name}` or an unbalanced brace is an error.
Result<std::string> substitute(std::string_view text, const Substitutions& subs);

/// Converts a TOML value to an option of `type`. The error message says what is wrong, not where.
Result<OptionValue> option_from_toml(const toml::node& node, OptionType type, const Substitutions& subs);

/// Converts a schema default, written as a TOML value ("30s" with quotes, 64, true, ["a"]), or as a bare
/// word for string and duration options (30s, info), to an option of `type`.
Result<OptionValue> option_from_text(std::string_view text, OptionType type, const Substitutions& subs);

/// Whether `value` holds the alternative that `type` calls for.
bool holds_type(const OptionValue& value, OptionType type) noexcept;

/// What values an option takes, beyond its type: read from a component's schema (OptionSpec).
struct OptionConstraints {
  std::vector<std::string> choices;    ///< allowed strings (each element of a list); empty: any
  std::optional<OptionValue> minimum;  ///< integer, number, duration
  std::optional<OptionValue> maximum;  ///< integer, number, duration
};

/// Parses a schema's constraints for an option of `type`: '|'-separated choices (an alternative may hold
/// one `<lo-hi>`), and minimum / maximum written as defaults are. A null text is no constraint; a constraint
/// that does not fit the type, or a minimum above the maximum, is an error saying which.
Result<OptionConstraints> parse_constraints(OptionType type, const char* choices, const char* minimum,
                                            const char* maximum);

/// Checks a value against its constraints; Errc::invalid_option saying what the value must be.
Result<void> check_constraints(const OptionValue& value, const OptionConstraints& constraints);

/// The constraints in words, for `ember plugins describe`: "one of: job, task", "1..65536", ">= 1"; empty
/// when there are none.
std::string describe_constraints(const OptionConstraints& constraints);

/// Renders a value as TOML would write it ("30s" quoted, 64, true, ["a", "b"]).
std::string option_to_text(const OptionValue& value);

}  // namespace ember::kernel
