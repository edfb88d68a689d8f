#include "duration.hpp"

#include <cstdint>

namespace ember::kernel {

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

}  // namespace

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  if (text.empty()) {
    return fail(Errc::invalid_argument, "empty duration (write e.g. \"30s\")");
  }
  std::int64_t total_ms = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    if (!is_digit(text[i])) {
      return fail(Errc::invalid_argument, "invalid duration \"" + std::string(text) +
                                              "\": expected a number at offset " + std::to_string(i) +
                                              " (write e.g. \"250ms\", \"30s\", \"5m\", \"1h30m\")");
    }
    std::int64_t number = 0;
    while (i < text.size() && is_digit(text[i])) {
      number = number * 10 + (text[i] - '0');
      if (number > max_duration.count()) {
        return fail(Errc::invalid_argument, "duration \"" + std::string(text) + "\" is longer than 365 days");
      }
      ++i;
    }
    std::size_t unit_begin = i;
    while (i < text.size() && !is_digit(text[i])) {
      ++i;
    }
    std::string_view unit = text.substr(unit_begin, i - unit_begin);
    std::int64_t scale = 0;
    if (unit == "ms") {
      scale = 1;
    } else if (unit == "s") {
      scale = 1000;
    } else if (unit == "m") {
      scale = 60'000;
    } else if (unit == "h") {
      scale = 3'600'000;
    } else {
      return fail(Errc::invalid_argument, "invalid duration \"" + std::string(text) + "\": unit \"" +
                                              std::string(unit) + "\" is not one of ms, s, m, h");
    }
    total_ms += number * scale;  // number <= max and scale <= 3.6e6: no overflow in 64 bits
    if (total_ms > max_duration.count()) {
      return fail(Errc::invalid_argument, "duration \"" + std::string(text) + "\" is longer than 365 days");
    }
  }
  return std::chrono::milliseconds(total_ms);
}

std::string format_duration(std::chrono::milliseconds value) {
  auto ms = value.count();
  if (ms != 0 && ms % 3'600'000 == 0) {
    return std::to_string(ms / 3'600'000) + "h";
  }
  if (ms != 0 && ms % 60'000 == 0) {
    return std::to_string(ms / 60'000) + "m";
  }
  if (ms % 1000 == 0) {
    return std::to_string(ms / 1000) + "s";
  }
  return std::to_string(ms) + "ms";
}

}  // namespace ember::kernel
