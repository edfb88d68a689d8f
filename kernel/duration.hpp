#pragma once
// Durations as written in TOML: "250ms", "30s", "5m", "1h", or sums such as "1m30s".

#include <chrono>
#include <string>
#include <string_view>

#include <ember/result.hpp>

namespace ember::kernel {

/// The longest duration accepted anywhere (a bound that keeps arithmetic on deadlines from overflowing).
inline constexpr std::chrono::milliseconds max_duration = std::chrono::hours(24 * 365);

/// Parses a duration; the error says what was wrong with the text (the caller adds where it was).
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

/// Formats a duration the way parse_duration reads it, in the largest exact unit ("90s", "250ms", "2h").
std::string format_duration(std::chrono::milliseconds value);

}  // namespace ember::kernel
