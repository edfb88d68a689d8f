#pragma once
// Component options: the schema a component declares and the validated values it receives.

#include <chrono>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <ember/kind.hpp>

namespace ember {

/// The type of an option's value, as declared in a component's schema.
enum class OptionType : std::uint32_t {
  string = 1,       ///< TOML string; `{site}`, `{job_id}`, `{workspace}` are substituted
  integer = 2,      ///< TOML integer (64-bit signed)
  number = 3,       ///< TOML float or integer, as double
  boolean = 4,      ///< TOML boolean
  duration = 5,     ///< TOML string such as "250ms", "30s", "5m", "1h" (a bare number is refused)
  string_list = 6,  ///< TOML array of strings, each substituted like a string
};

/// The TOML-facing name of an option type ("duration").
constexpr std::string_view to_string(OptionType type) noexcept {
  switch (type) {
    case OptionType::string:
      return "string";
    case OptionType::integer:
      return "integer";
    case OptionType::number:
      return "number";
    case OptionType::boolean:
      return "boolean";
    case OptionType::duration:
      return "duration";
    case OptionType::string_list:
      return "string_list";
  }
  return "unknown";
}

/// One declared option: plain data, so it can live in a plugin's constant descriptor and be serialized into
/// its ELF section at compile time. The constraints are checked by the kernel when it reads a config
/// (`ember validate` included), before any plugin code runs; write them with designated initializers:
///
///   {.name = "rounds", .type = OptionType::integer, .default_value = "3", .doc = "rounds", .minimum = "1"}
struct OptionSpec {
  const char* name;  ///< the TOML key, `[a-z0-9_]+`
  OptionType type;   ///< the value's type
  /// The default as TOML-like text ("30s", "64", "true", "[\"a\"]"); nullptr: the option is required.
  const char* default_value;
  const char* doc;  ///< one line for `ember plugins describe`
  /// string and string_list (each element): the allowed values, '|'-separated (an empty alternative is the
  /// empty string). An alternative may hold placeholders: `<lo-hi>` a decimal integer from lo to hi,
  /// `<name>` an identifier, `<any>` any text ("cpu|auto|cuda|cuda:<0-15>", "<name>=<any>"). nullptr: any.
  const char* choices = nullptr;
  /// integer, number, duration: the smallest allowed value, written as a default is ("1", "0.5", "10ms").
  const char* minimum = nullptr;
  /// integer, number, duration: the largest allowed value, written as a default is.
  const char* maximum = nullptr;
  /// Non-zero: the value (each element of a string_list) is the id of a job component of this kind, and
  /// `ember validate` checks that the job has it.
  Kind refers_to = Kind{};
};

/// A validated option value.
using OptionValue = std::variant<std::string, std::int64_t, double, bool, std::chrono::milliseconds,
                                 std::vector<std::string>>;

/// The options a component receives: every declared option, with config values over defaults. Reentrant;
/// the const getters are thread-safe.
/// The kernel has already checked names and types against the schema, so a getter fails only when the
/// component asks for a name it did not declare, or with another type (a bug in the component, reported
/// as std::out_of_range and turned into a create_failed error by the factory wrapper).
class Options {
 public:
  Options() = default;

  /// Sets a value (used by the kernel and by tests that build a component directly).
  void set(std::string name, OptionValue value) {
    values_.insert_or_assign(std::move(name), std::move(value));
  }

  /// Whether the option is present.
  bool contains(std::string_view name) const { return values_.find(name) != values_.end(); }

  /// All values, sorted by name.
  const std::map<std::string, OptionValue, std::less<>>& values() const noexcept { return values_; }

  /// The value of a string option.
  const std::string& string(std::string_view name) const { return get<std::string>(name); }
  /// The value of an integer option.
  std::int64_t integer(std::string_view name) const { return get<std::int64_t>(name); }
  /// The value of a number option.
  double number(std::string_view name) const { return get<double>(name); }
  /// The value of a boolean option.
  bool boolean(std::string_view name) const { return get<bool>(name); }
  /// The value of a duration option.
  std::chrono::milliseconds duration(std::string_view name) const {
    return get<std::chrono::milliseconds>(name);
  }
  /// The value of a string_list option.
  const std::vector<std::string>& string_list(std::string_view name) const {
    return get<std::vector<std::string>>(name);
  }

 private:
  template <class T>
  const T& get(std::string_view name) const {
    auto it = values_.find(name);
    if (it == values_.end()) {
      throw std::out_of_range("option '" + std::string(name) + "' is not declared by this component");
    }
    if (const T* value = std::get_if<T>(&it->second)) {
      return *value;
    }
    throw std::out_of_range("option '" + std::string(name) + "' is read with the wrong type");
  }

  std::map<std::string, OptionValue, std::less<>> values_;
};

}  // namespace ember
