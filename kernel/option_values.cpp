#include "option_values.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <tuple>

#include <toml++/toml.h>

#include "duration.hpp"

namespace ember::kernel {

Result<std::string> substitute(std::string_view text, const Substitutions& subs) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '}') {
      if (i + 1 < text.size() && text[i + 1] == '}') {
        out += '}';
        ++i;
        continue;
      }
      return fail(Errc::invalid_config,
                  "unbalanced '}' at offset " + std::to_string(i) + " (write '}}' for a brace)");
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    auto close = text.find('}', i);
    if (close == std::string_view::npos) {
      return fail(Errc::invalid_config,
                  "unclosed '{' at offset " + std::to_string(i) + " (write '{{' for a brace)");
    }
    std::string_view name = text.substr(i + 1, close - i - 1);
    const std::optional<std::string>* value = nullptr;
    if (name == "site") {
      value = &subs.site;
    } else if (name == "job_id") {
      value = &subs.job_id;
    } else if (name == "workspace") {
      value = &subs.workspace;
    } else {
      return fail(Errc::invalid_config, "unknown substitution '{" + std::string(name) +
                                            "}' (known: {site}, {job_id}, {workspace})");
    }
    if (!value->has_value()) {
      return fail(Errc::invalid_config, "substitution '{" + std::string(name) + "}' is not available here");
    }
    out += **value;
    i = close;
  }
  return out;
}

namespace {

std::string_view toml_type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

tl::unexpected<Error> wrong_type(const toml::node& node, OptionType type) {
  return fail(Errc::invalid_option,
              "expected " + std::string(to_string(type)) + ", found " + std::string(toml_type_name(node)));
}

}  // namespace

Result<OptionValue> option_from_toml(const toml::node& node, OptionType type, const Substitutions& subs) {
  switch (type) {
    case OptionType::string: {
      auto s = node.value<std::string>();
      if (!node.is_string() || !s) {
        return wrong_type(node, type);
      }
      auto text = substitute(*s, subs);
      if (!text) {
        return fail(Errc::invalid_option, text.error().message);
      }
      return OptionValue(std::move(*text));
    }
    case OptionType::integer:
      if (!node.is_integer()) {
        return wrong_type(node, type);
      }
      return OptionValue(node.as_integer()->get());
    case OptionType::number: {
      double v = 0;
      if (node.is_floating_point()) {
        v = node.as_floating_point()->get();
      } else if (node.is_integer()) {
        v = static_cast<double>(node.as_integer()->get());
      } else {
        return wrong_type(node, type);
      }
      if (!std::isfinite(v)) {
        return fail(Errc::invalid_option, "expected a finite number");
      }
      return OptionValue(v);
    }
    case OptionType::boolean:
      if (!node.is_boolean()) {
        return wrong_type(node, type);
      }
      return OptionValue(node.as_boolean()->get());
    case OptionType::duration: {
      if (!node.is_string()) {
        if (node.is_integer() || node.is_floating_point()) {
          return fail(Errc::invalid_option, "expected a duration with a unit, such as \"30s\" or \"250ms\"");
        }
        return wrong_type(node, type);
      }
      auto d = parse_duration(node.as_string()->get());
      if (!d) {
        return fail(Errc::invalid_option, d.error().message);
      }
      return OptionValue(*d);
    }
    case OptionType::string_list: {
      const auto* array = node.as_array();
      if (array == nullptr) {
        return wrong_type(node, type);
      }
      std::vector<std::string> items;
      items.reserve(array->size());
      for (std::size_t i = 0; i < array->size(); ++i) {
        const auto* item = array->get(i);
        if (!item->is_string()) {
          return fail(Errc::invalid_option, "element " + std::to_string(i) + ": expected a string, found " +
                                                std::string(toml_type_name(*item)));
        }
        auto text = substitute(item->as_string()->get(), subs);
        if (!text) {
          return fail(Errc::invalid_option, "element " + std::to_string(i) + ": " + text.error().message);
        }
        items.push_back(std::move(*text));
      }
      return OptionValue(std::move(items));
    }
  }
  return fail(Errc::invalid_option, "unknown option type " + std::to_string(static_cast<unsigned>(type)));
}

Result<OptionValue> option_from_text(std::string_view text, OptionType type, const Substitutions& subs) {
  std::string doc = "v = ";
  bool bare_word = (type == OptionType::string || type == OptionType::duration) && !text.empty() &&
                   text.front() != '"' && text.front() != '\'';
  if (bare_word) {
    // Bare defaults such as 30s or info: quote them, escaping what TOML's basic strings need.
    doc += '"';
    for (char c : text) {
      if (c == '"' || c == '\\') {
        doc += '\\';
      }
      doc += c;
    }
    doc += '"';
  } else {
    doc += text;
  }
  try {
    auto table = toml::parse(std::string_view(doc), std::string_view("<default>"));
    const auto* node = table.get("v");
    if (node == nullptr || table.size() != 1) {
      return fail(Errc::invalid_option, "default '" + std::string(text) + "' is not a single value");
    }
    return option_from_toml(*node, type, subs);
  } catch (const toml::parse_error& e) {
    return fail(Errc::invalid_option,
                "default '" + std::string(text) + "' is not a valid value: " + std::string(e.description()));
  }
}

bool holds_type(const OptionValue& value, OptionType type) noexcept {
  switch (type) {
    case OptionType::string:
      return std::holds_alternative<std::string>(value);
    case OptionType::integer:
      return std::holds_alternative<std::int64_t>(value);
    case OptionType::number:
      return std::holds_alternative<double>(value);
    case OptionType::boolean:
      return std::holds_alternative<bool>(value);
    case OptionType::duration:
      return std::holds_alternative<std::chrono::milliseconds>(value);
    case OptionType::string_list:
      return std::holds_alternative<std::vector<std::string>>(value);
  }
  return false;
}

namespace {

// A TOML basic string: quotes, backslashes and control characters escaped.
std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7F) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04X", u);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

std::string option_to_text(const OptionValue& value) {
  struct Visitor {
    std::string operator()(const std::string& s) const { return quote(s); }
    std::string operator()(std::int64_t v) const { return std::to_string(v); }
    std::string operator()(double v) const {
      std::ostringstream out;
      out.precision(std::numeric_limits<double>::max_digits10);
      out << v;
      return out.str();
    }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(std::chrono::milliseconds v) const { return quote(format_duration(v)); }
    std::string operator()(const std::vector<std::string>& v) const {
      std::string out = "[";
      for (std::size_t i = 0; i < v.size(); ++i) {
        out += (i == 0 ? "" : ", ") + quote(v[i]);
      }
      return out + "]";
    }
  };
  return std::visit(Visitor{}, value);
}

namespace {

// One piece of a choice: literal text, or a placeholder: `<lo-hi>` (a decimal integer in the range),
// `<name>` (an identifier, [A-Za-z_][A-Za-z0-9_]*) or `<any>` (any text, even none).
struct Piece {
  enum class What { literal, integer, name, any } what = What::literal;
  std::string_view text;
  std::int64_t low = 0;
  std::int64_t high = 0;
};

std::optional<std::int64_t> parse_decimal(std::string_view text) {
  if (text.empty() || text.size() > 18 || (text.size() > 1 && text.front() == '0')) {
    return std::nullopt;
  }
  std::int64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    value = value * 10 + (c - '0');
  }
  return value;
}

Result<std::vector<Piece>> parse_choice(std::string_view choice) {
  std::vector<Piece> pieces;
  auto bad = [&](const std::string& why) {
    return fail(Errc::invalid_argument, "choice '" + std::string(choice) + "': " + why);
  };
  std::size_t at = 0;
  while (at < choice.size()) {
    auto open = choice.find('<', at);
    auto close = choice.find('>', at);
    if (close < open) {
      return bad("'>' without '<'");
    }
    if (open != at) {
      pieces.push_back({Piece::What::literal, choice.substr(at, std::min(open, choice.size()) - at)});
      at = std::min(open, choice.size());
      continue;
    }
    if (close == std::string_view::npos) {
      return bad("'<' without '>'");
    }
    auto inside = choice.substr(open + 1, close - open - 1);
    at = close + 1;
    if (inside == "name") {
      pieces.push_back({Piece::What::name, inside});
      continue;
    }
    if (inside == "any") {
      pieces.push_back({Piece::What::any, inside});
      continue;
    }
    auto dash = inside.find('-');
    auto low = dash == std::string_view::npos ? std::nullopt : parse_decimal(inside.substr(0, dash));
    auto high = dash == std::string_view::npos ? std::nullopt : parse_decimal(inside.substr(dash + 1));
    if (!low || !high || *low > *high) {
      return bad("want <lo-hi> with decimal lo <= hi (such as <0-15>), <name> or <any>");
    }
    pieces.push_back({Piece::What::integer, inside, *low, *high});
  }
  return pieces;
}

bool is_name_char(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!first && c >= '0' && c <= '9');
}

// Integers and names take the longest run they can; `<any>` tries every length, shortest first.
bool matches_from(const std::vector<Piece>& pieces, std::size_t piece, std::string_view rest) {
  if (piece == pieces.size()) {
    return rest.empty();
  }
  const Piece& p = pieces[piece];
  switch (p.what) {
    case Piece::What::literal:
      return rest.substr(0, p.text.size()) == p.text &&
             matches_from(pieces, piece + 1, rest.substr(p.text.size()));
    case Piece::What::integer: {
      std::size_t n = 0;
      while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') {
        ++n;
      }
      auto number = parse_decimal(rest.substr(0, n));
      return number && *number >= p.low && *number <= p.high &&
             matches_from(pieces, piece + 1, rest.substr(n));
    }
    case Piece::What::name: {
      std::size_t n = 0;
      while (n < rest.size() && is_name_char(rest[n], n == 0)) {
        ++n;
      }
      return n > 0 && matches_from(pieces, piece + 1, rest.substr(n));
    }
    case Piece::What::any:
      for (std::size_t n = 0; n <= rest.size(); ++n) {
        if (matches_from(pieces, piece + 1, rest.substr(n))) {
          return true;
        }
      }
      return false;
  }
  return false;
}

bool matches(std::string_view value, std::string_view choice) {
  auto pieces = parse_choice(choice);
  return pieces ? matches_from(*pieces, 0, value) : value == choice;
}

bool has_order(OptionType type) {
  return type == OptionType::integer || type == OptionType::number || type == OptionType::duration;
}

// -1, 0, 1 for two values of the same ordered type.
int compare(const OptionValue& a, const OptionValue& b) {
  if (const auto* ia = std::get_if<std::int64_t>(&a)) {
    auto ib = std::get<std::int64_t>(b);
    return *ia < ib ? -1 : (*ia > ib ? 1 : 0);
  }
  if (const auto* da = std::get_if<double>(&a)) {
    auto db = std::get<double>(b);
    return *da < db ? -1 : (*da > db ? 1 : 0);
  }
  auto ma = std::get<std::chrono::milliseconds>(a);
  auto mb = std::get<std::chrono::milliseconds>(b);
  return ma < mb ? -1 : (ma > mb ? 1 : 0);
}

std::string bare(const OptionValue& value) {
  if (const auto* d = std::get_if<std::chrono::milliseconds>(&value)) {
    return format_duration(*d);
  }
  return option_to_text(value);
}

std::string choice_list(const std::vector<std::string>& choices) {
  std::string out;
  for (std::size_t i = 0; i < choices.size(); ++i) {
    out += (i == 0 ? "" : ", ") + (choices[i].empty() ? std::string("\"\"") : choices[i]);
  }
  return out;
}

}  // namespace

Result<OptionConstraints> parse_constraints(OptionType type, const char* choices, const char* minimum,
                                            const char* maximum) {
  OptionConstraints out;
  if (choices != nullptr) {
    if (type != OptionType::string && type != OptionType::string_list) {
      return fail(Errc::invalid_argument, "choices are only for string and string_list options");
    }
    std::string_view text(choices);
    std::size_t start = 0;
    while (start <= text.size()) {
      auto end = std::min(text.find('|', start), text.size());
      auto choice = text.substr(start, end - start);
      if (auto pieces = parse_choice(choice); !pieces) {
        return fail(std::move(pieces.error()));
      }
      out.choices.emplace_back(choice);
      start = end + 1;
    }
  }
  for (auto [text, slot, word] :
       {std::tuple{minimum, &out.minimum, "minimum"}, std::tuple{maximum, &out.maximum, "maximum"}}) {
    if (text == nullptr) {
      continue;
    }
    if (!has_order(type)) {
      return fail(Errc::invalid_argument,
                  std::string(word) + " is only for integer, number and duration options");
    }
    auto value = option_from_text(text, type, Substitutions{});
    if (!value) {
      return fail(Errc::invalid_argument, std::string(word) + ": " + value.error().message);
    }
    *slot = std::move(*value);
  }
  if (out.minimum && out.maximum && compare(*out.minimum, *out.maximum) > 0) {
    return fail(Errc::invalid_argument,
                "minimum " + bare(*out.minimum) + " is above maximum " + bare(*out.maximum));
  }
  return out;
}

Result<void> check_constraints(const OptionValue& value, const OptionConstraints& constraints) {
  if (!constraints.choices.empty()) {
    auto allowed = [&](const std::string& s) {
      return std::any_of(constraints.choices.begin(), constraints.choices.end(),
                         [&](const std::string& c) { return matches(s, c); });
    };
    if (const auto* s = std::get_if<std::string>(&value); s != nullptr && !allowed(*s)) {
      return fail(Errc::invalid_option,
                  option_to_text(value) + " is not one of: " + choice_list(constraints.choices));
    }
    if (const auto* list = std::get_if<std::vector<std::string>>(&value)) {
      for (std::size_t i = 0; i < list->size(); ++i) {
        if (!allowed((*list)[i])) {
          return fail(Errc::invalid_option, "element " + std::to_string(i) + ": " +
                                                option_to_text((*list)[i]) +
                                                " is not one of: " + choice_list(constraints.choices));
        }
      }
    }
  }
  if (constraints.minimum && compare(value, *constraints.minimum) < 0) {
    return fail(Errc::invalid_option, bare(value) + " is below the minimum " + bare(*constraints.minimum));
  }
  if (constraints.maximum && compare(value, *constraints.maximum) > 0) {
    return fail(Errc::invalid_option, bare(value) + " is above the maximum " + bare(*constraints.maximum));
  }
  return ok();
}

std::string describe_constraints(const OptionConstraints& constraints) {
  if (!constraints.choices.empty()) {
    return "one of: " + choice_list(constraints.choices);
  }
  if (constraints.minimum && constraints.maximum) {
    return bare(*constraints.minimum) + ".." + bare(*constraints.maximum);
  }
  if (constraints.minimum) {
    return ">= " + bare(*constraints.minimum);
  }
  if (constraints.maximum) {
    return "<= " + bare(*constraints.maximum);
  }
  return "";
}

}  // namespace ember::kernel
