#pragma once
// The kernel's logging: spdlog behind the SDK's Logger, one logger per category, levels from TOML and
// EMBER_LOG ("debug", or "plugin.pipe.*=debug,kernel=warn").

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ember/logger.hpp>
#include <ember/result.hpp>

namespace spdlog {
class logger;
namespace sinks {
class sink;
}
}  // namespace spdlog

namespace ember::kernel {

/// A level for the categories a pattern matches: "*", an exact category, or a prefix ending in ".*".
struct LogRule {
  std::string pattern;
  LogLevel level = LogLevel::info;
};

/// Where logs go and how verbose they are.
struct LogSettings {
  LogLevel level = LogLevel::info;  ///< for categories no rule matches
  bool level_set = false;      ///< whether a config or EMBER_LOG chose `level` (else callers pick theirs)
  std::vector<LogRule> rules;  ///< later rules win over earlier ones
};

/// Parses "trace", "debug", "info", "warn", "error", "critical" or "off".
Result<LogLevel> parse_level(std::string_view text);

/// Parses EMBER_LOG: a bare level sets the default; "pattern=level" pairs, comma-separated, add rules.
Result<LogSettings> parse_log_spec(std::string_view spec, LogSettings base);

/// Whether `pattern` covers `category`.
bool pattern_matches(std::string_view pattern, std::string_view category) noexcept;

/// Owns the sinks and hands out one logger per category. Thread-safe.
class LogHub {
 public:
  /// Logs to stderr; `settings` decides levels.
  explicit LogHub(LogSettings settings);
  ~LogHub();
  LogHub(const LogHub&) = delete;
  LogHub& operator=(const LogHub&) = delete;

  /// The logger of `category`, created on first use.
  std::shared_ptr<Logger> get(const std::string& category);
  /// The logger of `category` for a simulated site: named "<site> <category>", with the category's level,
  /// writing to the common sinks and to the site's file (add_site_file), if any.
  std::shared_ptr<Logger> get(const std::string& category, const std::string& site);
  /// Also writes every line to `file` (appending); used for a job's log.
  Result<void> add_file(const std::filesystem::path& file);
  /// Writes the lines of `site`'s loggers (created after this call) to `file` as well.
  Result<void> add_site_file(const std::string& site, const std::filesystem::path& file);
  /// Shows only lines at `level` or above on stderr (files keep the categories' levels).
  void set_console_level(LogLevel level);
  /// The level a category gets under the current settings.
  LogLevel level_for(std::string_view category) const;

 private:
  LogSettings settings_;
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<spdlog::sinks::sink>> sinks_;
  std::map<std::string, std::shared_ptr<spdlog::sinks::sink>, std::less<>> site_sinks_;
  std::map<std::string, std::shared_ptr<Logger>, std::less<>> loggers_;
  std::vector<std::shared_ptr<spdlog::logger>> raw_;
};

}  // namespace ember::kernel
