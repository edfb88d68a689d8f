#include "option_values.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <tuple>

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

// A schema default is one TOML value, but only of the few forms a default takes: a bare word (string and
// duration options), a basic "..." or literal '...' string, an integer, a number, true or false, or an
// array of strings. Reading them here, rather than with the TOML parser, keeps that parser out of the
// loader, which the trainer's Client API links.
class Literal {
 public:
  explicit Literal(std::string_view text) : text_(text) {}

  void skip_blanks() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\t')) {
      ++at_;
    }
  }
  bool at_end() const { return at_ == text_.size(); }
  char peek() const { return at_ < text_.size() ? text_[at_] : '\0'; }
  bool take(char c) {
    if (peek() != c) {
      return false;
    }
    ++at_;
    return true;
  }
  std::string_view rest() const { return text_.substr(at_); }

  // A '...' (literal) or "..." (basic, with TOML's escapes) string; the reader stands on its quote.
  Result<std::string> quoted() {
    const char quote = text_[at_++];
    std::string out;
    while (at_ < text_.size() && text_[at_] != quote) {
      auto c = static_cast<unsigned char>(text_[at_++]);
      if ((c < 0x20 && c != '\t') || c == 0x7F) {
        return fail(Errc::invalid_option, "a control character inside a string");
      }
      if (quote == '\'' || c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (at_ >= text_.size()) {
        break;
      }
      char e = text_[at_++];
      switch (e) {
        case '"':
        case '\\':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 't':
          out += '\t';
          break;
        case 'n':
          out += '\n';
          break;
        case 'f':
          out += '\f';
          break;
        case 'r':
          out += '\r';
          break;
        case 'u':
        case 'U': {
          auto code = hex(e == 'u' ? 4 : 8);
          if (!code) {
            return fail(std::move(code.error()));
          }
          append_utf8(out, *code);
          break;
        }
        default:
          return fail(Errc::invalid_option, std::string("unknown escape '\\") + e + "' in a string");
      }
    }
    if (!take(quote)) {
      return fail(Errc::invalid_option, "a string without its closing quote");
    }
    return out;
  }

 private:
  Result<std::uint32_t> hex(int digits) {
    std::uint32_t code = 0;
    for (int i = 0; i < digits; ++i, ++at_) {
      char c = peek();
      int v = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (v < 0) {
        return fail(Errc::invalid_option, "a \\u escape needs " + std::to_string(digits) + " hex digits");
      }
      code = code * 16 + static_cast<std::uint32_t>(v);
    }
    if (code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return fail(Errc::invalid_option, "a \\u escape that is not a Unicode scalar value");
    }
    return code;
  }

  static void append_utf8(std::string& out, std::uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string_view text_;
  std::size_t at_ = 0;
};

// TOML's digits: underscores only between two digits.
std::optional<std::string> without_underscores(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '_') {
      out += text[i];
      continue;
    }
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (i == 0 || i + 1 == text.size() || !digit(text[i - 1]) || !digit(text[i + 1])) {
      return std::nullopt;
    }
  }
  return out;
}

Result<OptionValue> scalar_from_text(std::string_view text, OptionType type) {
  auto digits = without_underscores(text);
  if (!digits || digits->empty()) {
    return fail(Errc::invalid_option, "expected " + std::string(to_string(type)));
  }
  const char* first = digits->data();
  const char* last = first + digits->size();
  if (*first == '+') {
    ++first;
  }
  if (type == OptionType::integer) {
    std::int64_t v = 0;
    auto [end, ec] = std::from_chars(first, last, v);
    if (ec != std::errc{} || end != last) {
      return fail(Errc::invalid_option, "expected integer");
    }
    return OptionValue(v);
  }
  double v = 0;
  auto [end, ec] = std::from_chars(first, last, v);
  if (ec != std::errc{} || end != last) {
    return fail(Errc::invalid_option, "expected number");
  }
  if (!std::isfinite(v)) {
    return fail(Errc::invalid_option, "expected a finite number");
  }
  return OptionValue(v);
}

// A value of the wrong type, or a duration or substitution that does not parse, is reported as the TOML path
// reports it ("expected integer, found a string"); text that is no value at all says which default it was.
Result<OptionValue> value_from_text(std::string_view text, OptionType type, const Substitutions& subs) {
  auto syntax = [&](const Error& why) {
    return fail(Errc::invalid_option,
                "default '" + std::string(text) + "' is not a valid value: " + why.message);
  };
  Literal in(text);
  in.skip_blanks();
  auto finish = [&](OptionValue value) -> Result<OptionValue> {
    in.skip_blanks();
    if (!in.at_end()) {
      return syntax(Error{Errc::invalid_option, "text after the value: '" + std::string(in.rest()) + "'"});
    }
    return value;
  };
  auto substituted = [&](std::string raw) -> Result<std::string> {
    auto done = substitute(raw, subs);
    if (!done) {
      return fail(Errc::invalid_option, done.error().message);
    }
    return done;
  };
  const bool quoted = in.peek() == '"' || in.peek() == '\'';
  switch (type) {
    case OptionType::string:
    case OptionType::duration: {
      std::string raw;
      if (quoted) {
        auto read = in.quoted();
        if (!read) {
          return syntax(read.error());
        }
        raw = std::move(*read);
        in.skip_blanks();
        if (!in.at_end()) {
          return syntax(
              Error{Errc::invalid_option, "text after the value: '" + std::string(in.rest()) + "'"});
        }
      } else {
        raw = std::string(text);  // a bare word, taken whole
      }
      if (type == OptionType::duration) {
        auto d = parse_duration(raw);
        if (!d) {
          return fail(Errc::invalid_option, d.error().message);
        }
        return OptionValue(*d);
      }
      auto done = substituted(std::move(raw));
      if (!done) {
        return fail(std::move(done.error()));
      }
      return OptionValue(std::move(*done));
    }
    case OptionType::integer:
    case OptionType::number:
    case OptionType::boolean: {
      if (quoted) {
        return fail(Errc::invalid_option, "expected " + std::string(to_string(type)) + ", found a string");
      }
      std::string_view word = in.rest();
      while (!word.empty() && (word.back() == ' ' || word.back() == '\t')) {
        word.remove_suffix(1);
      }
      if (type == OptionType::boolean) {
        if (word != "true" && word != "false") {
          return syntax(Error{Errc::invalid_option, "expected boolean (true or false)"});
        }
        return OptionValue(word == "true");
      }
      auto scalar = scalar_from_text(word, type);
      if (!scalar) {
        return syntax(scalar.error());
      }
      return scalar;
    }
    case OptionType::string_list: {
      if (!in.take('[')) {
        return syntax(Error{Errc::invalid_option, "expected an array of strings"});
      }
      std::vector<std::string> items;
      in.skip_blanks();
      while (!in.take(']')) {
        if (in.peek() != '"' && in.peek() != '\'') {
          return fail(Errc::invalid_option,
                      "element " + std::to_string(items.size()) + ": expected a string in the array");
        }
        auto item = in.quoted();
        if (!item) {
          return syntax(item.error());
        }
        auto done = substituted(std::move(*item));
        if (!done) {
          return fail(Errc::invalid_option,
                      "element " + std::to_string(items.size()) + ": " + done.error().message);
        }
        items.push_back(std::move(*done));
        in.skip_blanks();
        if (in.take(',')) {
          in.skip_blanks();
        } else if (in.peek() != ']') {
          return syntax(Error{Errc::invalid_option, "expected ',' or ']' in the array"});
        }
      }
      return finish(OptionValue(std::move(items)));
    }
  }
  return fail(Errc::invalid_option, "unknown option type " + std::to_string(static_cast<unsigned>(type)));
}

}  // namespace

Result<OptionValue> option_from_text(std::string_view text, OptionType type, const Substitutions& subs) {
  return value_from_text(text, type, subs);
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
