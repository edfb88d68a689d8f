#pragma once
// The logger the kernel hands each component; plugins never write to stdout or stderr themselves.

#include <cstdint>
#include <string_view>

#include <ember/abi.hpp>

namespace ember {

/// Severity of a log line, lowest first.
enum class LogLevel : std::uint32_t {
  trace = 0,
  debug = 1,
  info = 2,
  warn = 3,
  error = 4,
  critical = 5,
  off = 6
};

/// A named logger (category `plugin.<kind>.<name>` for a component). Thread-safe.
class EMBER_API Logger {
 public:
  virtual ~Logger() = default;

  /// Writes one line at `level`, if that level is enabled.
  virtual void log(LogLevel level, std::string_view message) noexcept = 0;
  /// Whether lines at `level` are written; test it before building an expensive message.
  virtual bool enabled(LogLevel level) const noexcept = 0;
  /// The category, e.g. "plugin.pipe.memory".
  virtual std::string_view name() const noexcept = 0;

  /// Shorthands for log(level, message).
  void trace(std::string_view message) noexcept { log(LogLevel::trace, message); }
  void debug(std::string_view message) noexcept { log(LogLevel::debug, message); }
  void info(std::string_view message) noexcept { log(LogLevel::info, message); }
  void warn(std::string_view message) noexcept { log(LogLevel::warn, message); }
  void error(std::string_view message) noexcept { log(LogLevel::error, message); }
};

}  // namespace ember
