#pragma once
// What every launcher reads the same way from its options: environment entries (NAME=VALUE) and where a
// launched program's output lines go (stdout_level, stderr_level, max_line_bytes). Header-only; shared by
// launcher.process and launcher.docker.

#include <signal.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ember/launcher.hpp>
#include <ember/logger.hpp>
#include <ember/options.hpp>
#include <ember/result.hpp>

namespace ember::base {

/// The largest max_line_bytes a launcher accepts (64 MiB).
inline constexpr std::int64_t max_line_limit = 64 * 1024 * 1024;

/// Where a launched program's output lines go.
struct OutputPolicy {
  std::shared_ptr<Logger> logger;
  LogLevel stdout_level = LogLevel::info;
  LogLevel stderr_level = LogLevel::warn;
  std::size_t max_line_bytes = 65536;
};

/// The options every launcher declares the same way, for its OptionSpec array.
inline constexpr OptionSpec env_option{.name = "env",
                                       .type = OptionType::string_list,
                                       .default_value = "[]",
                                       .doc =
                                           "NAME=VALUE variables set on top of that (a launch's own "
                                           "variables are set after them)",
                                       .choices = "<name>=<any>"};
inline constexpr OptionSpec stdout_level_option{.name = "stdout_level",
                                                .type = OptionType::string,
                                                .default_value = "info",
                                                .doc = "log level of the program's stdout lines",
                                                .choices = "trace|debug|info|warn|error|critical|off"};
inline constexpr OptionSpec stderr_level_option{.name = "stderr_level",
                                                .type = OptionType::string,
                                                .default_value = "warn",
                                                .doc = "log level of the program's stderr lines",
                                                .choices = "trace|debug|info|warn|error|critical|off"};
inline constexpr OptionSpec max_line_bytes_option{
    .name = "max_line_bytes",
    .type = OptionType::integer,
    .default_value = "65536",
    .doc = "output lines longer than this are logged in pieces of this size",
    .minimum = "1",
    .maximum = "67108864"};  // max_line_limit

/// A launch handle's RunState from how its program ended (nullopt: still running) and whether stop() was
/// asked for: stopped after exit code 0, or after the SIGTERM or SIGKILL that stop() sent; failed otherwise.
inline RunState run_state(const std::optional<ExitStatus>& status, bool stop_requested) {
  if (!status) {
    return RunState::started;
  }
  if (status->success()) {
    return RunState::stopped;
  }
  const bool ended_by_stop = stop_requested && status->how == ExitStatus::How::signaled &&
                             (status->value == SIGTERM || status->value == SIGKILL);
  return ended_by_stop ? RunState::stopped : RunState::failed;
}

/// A POSIX environment variable name: letters, digits and _, not starting with a digit.
inline bool valid_env_name(std::string_view name) {
  if (name.empty() || (name.front() >= '0' && name.front() <= '9')) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

inline bool has_nul(std::string_view text) {
  return text.find('\0') != std::string_view::npos;
}

/// A log level's name ("info") as the level; Errc::invalid_option naming `option` otherwise.
inline Result<LogLevel> parse_level(std::string_view option, const std::string& text) {
  static constexpr std::pair<std::string_view, LogLevel> levels[] = {
      {"trace", LogLevel::trace}, {"debug", LogLevel::debug}, {"info", LogLevel::info},
      {"warn", LogLevel::warn},   {"error", LogLevel::error}, {"critical", LogLevel::critical},
      {"off", LogLevel::off},
  };
  for (const auto& [name, level] : levels) {
    if (text == name) {
      return level;
    }
  }
  return fail(Errc::invalid_option, "option '" + std::string(option) + "': unknown level '" + text +
                                        "' (levels: trace, debug, info, warn, error, critical, off)");
}

/// The `env` option's NAME=VALUE entries; Errc::invalid_option naming the first bad one.
inline Result<std::vector<std::pair<std::string, std::string>>> env_entries(const Options& options) {
  std::vector<std::pair<std::string, std::string>> env;
  for (const auto& entry : options.string_list("env")) {
    auto eq = entry.find('=');
    if (eq == std::string::npos || !valid_env_name(std::string_view(entry).substr(0, eq)) || has_nul(entry)) {
      return fail(Errc::invalid_option, "option 'env': entry '" + entry +
                                            "' is not NAME=VALUE with NAME made of letters, digits and _");
    }
    env.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return env;
}

/// The output options (stdout_level, stderr_level, max_line_bytes) as a policy logging to `logger`.
inline Result<OutputPolicy> output_policy(const Options& options, std::shared_ptr<Logger> logger) {
  auto stdout_level = parse_level("stdout_level", options.string("stdout_level"));
  if (!stdout_level) {
    return fail(std::move(stdout_level.error()));
  }
  auto stderr_level = parse_level("stderr_level", options.string("stderr_level"));
  if (!stderr_level) {
    return fail(std::move(stderr_level.error()));
  }
  auto max_line = options.integer("max_line_bytes");
  if (max_line < 1 || max_line > max_line_limit) {
    return fail(Errc::invalid_option, "option 'max_line_bytes' must be between 1 and " +
                                          std::to_string(max_line_limit) + ", not " +
                                          std::to_string(max_line));
  }
  return OutputPolicy{std::move(logger), *stdout_level, *stderr_level, static_cast<std::size_t>(max_line)};
}

}  // namespace ember::base
