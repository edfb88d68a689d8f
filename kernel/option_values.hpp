#pragma once
// Turning TOML values and schema defaults into validated component options.

#include <optional>
#include <string>
#include <string_view>

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

/// Renders a value as TOML would write it ("30s" quoted, 64, true, ["a", "b"]).
std::string option_to_text(const OptionValue& value);

}  // namespace ember::kernel
