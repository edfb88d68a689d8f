#include "logging.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace ember::kernel {

namespace {

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::trace:
      return spdlog::level::trace;
    case LogLevel::debug:
      return spdlog::level::debug;
    case LogLevel::info:
      return spdlog::level::info;
    case LogLevel::warn:
      return spdlog::level::warn;
    case LogLevel::error:
      return spdlog::level::err;
    case LogLevel::critical:
      return spdlog::level::critical;
    case LogLevel::off:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

constexpr const char* log_pattern = "[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] [%n] %v";

class SpdLogger final : public Logger {
 public:
  SpdLogger(std::string name, std::shared_ptr<spdlog::logger> impl)
      : name_(std::move(name)), impl_(std::move(impl)) {}

  void log(LogLevel level, std::string_view message) noexcept override {
    try {
      impl_->log(to_spdlog(level), spdlog::string_view_t(message.data(), message.size()));
    } catch (...) {
      // A log line must never take the caller down (a full disk, a closed stderr).
    }
  }
  bool enabled(LogLevel level) const noexcept override { return impl_->should_log(to_spdlog(level)); }
  std::string_view name() const noexcept override { return name_; }

 private:
  std::string name_;
  std::shared_ptr<spdlog::logger> impl_;
};

}  // namespace

Result<LogLevel> parse_level(std::string_view text) {
  static constexpr std::pair<std::string_view, LogLevel> names[] = {
      {"trace", LogLevel::trace},       {"debug", LogLevel::debug},  {"info", LogLevel::info},
      {"warn", LogLevel::warn},         {"warning", LogLevel::warn}, {"error", LogLevel::error},
      {"critical", LogLevel::critical}, {"off", LogLevel::off}};
  for (const auto& [name, level] : names) {
    if (name == text) {
      return level;
    }
  }
  return fail(Errc::invalid_argument, "unknown log level '" + std::string(text) +
                                          "' (use trace, debug, info, warn, error, critical or off)");
}

Result<LogSettings> parse_log_spec(std::string_view spec, LogSettings base) {
  std::size_t start = 0;
  while (start <= spec.size()) {
    auto end = spec.find(',', start);
    if (end == std::string_view::npos) {
      end = spec.size();
    }
    auto item = spec.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') {
      item.remove_prefix(1);
    }
    while (!item.empty() && item.back() == ' ') {
      item.remove_suffix(1);
    }
    if (!item.empty()) {
      auto eq = item.find('=');
      auto level = parse_level(eq == std::string_view::npos ? item : item.substr(eq + 1));
      if (!level) {
        return fail(Errc::invalid_argument, "EMBER_LOG: " + level.error().message);
      }
      if (eq == std::string_view::npos) {
        base.level = *level;
        base.level_set = true;
      } else if (eq == 0) {
        return fail(Errc::invalid_argument, "EMBER_LOG: empty pattern in '" + std::string(item) + "'");
      } else {
        base.rules.push_back({std::string(item.substr(0, eq)), *level});
      }
    }
    start = end + 1;
  }
  return base;
}

bool pattern_matches(std::string_view pattern, std::string_view category) noexcept {
  if (pattern == "*" || pattern == category) {
    return true;
  }
  if (pattern.size() >= 2 && pattern.substr(pattern.size() - 2) == ".*") {
    auto prefix = pattern.substr(0, pattern.size() - 1);  // keeps the dot: "plugin.pipe."
    return category.substr(0, prefix.size()) == prefix || category == pattern.substr(0, pattern.size() - 2);
  }
  return false;
}

LogHub::LogHub(LogSettings settings) : settings_(std::move(settings)) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  sink->set_pattern(log_pattern);
  sinks_.push_back(std::move(sink));
}

LogHub::~LogHub() {
  std::lock_guard lock(mutex_);
  for (auto& logger : raw_) {
    logger->flush();
  }
}

LogLevel LogHub::level_for(std::string_view category) const {
  LogLevel level = settings_.level;
  for (const auto& rule : settings_.rules) {
    if (pattern_matches(rule.pattern, category)) {
      level = rule.level;
    }
  }
  return level;
}

std::shared_ptr<Logger> LogHub::get(const std::string& category) {
  std::lock_guard lock(mutex_);
  if (auto it = loggers_.find(category); it != loggers_.end()) {
    return it->second;
  }
  auto impl = std::make_shared<spdlog::logger>(category, sinks_.begin(), sinks_.end());
  impl->set_level(to_spdlog(level_for(category)));
  impl->flush_on(spdlog::level::warn);
  raw_.push_back(impl);
  auto logger = std::make_shared<SpdLogger>(category, std::move(impl));
  loggers_.emplace(category, logger);
  return logger;
}

std::shared_ptr<Logger> LogHub::get(const std::string& category, const std::string& site) {
  std::string name = site + " " + category;
  std::lock_guard lock(mutex_);
  if (auto it = loggers_.find(name); it != loggers_.end()) {
    return it->second;
  }
  std::vector<std::shared_ptr<spdlog::sinks::sink>> sinks = sinks_;
  if (auto it = site_sinks_.find(site); it != site_sinks_.end()) {
    sinks.push_back(it->second);
  }
  auto impl = std::make_shared<spdlog::logger>(name, sinks.begin(), sinks.end());
  impl->set_level(to_spdlog(level_for(category)));
  impl->flush_on(spdlog::level::warn);
  raw_.push_back(impl);
  auto logger = std::make_shared<SpdLogger>(name, std::move(impl));
  loggers_.emplace(name, logger);
  return logger;
}

void LogHub::set_console_level(LogLevel level) {
  std::lock_guard lock(mutex_);
  if (!sinks_.empty()) {
    sinks_.front()->set_level(to_spdlog(level));
  }
}

Result<void> LogHub::add_site_file(const std::string& site, const std::filesystem::path& file) {
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file.string(), false);
    sink->set_pattern(log_pattern);
    std::lock_guard lock(mutex_);
    site_sinks_.insert_or_assign(site, std::move(sink));
    return ok();
  } catch (const std::exception& e) {
    return fail(Errc::io_error, file.string() + ": cannot open log file: " + e.what());
  }
}

Result<void> LogHub::add_file(const std::filesystem::path& file) {
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file.string(), false);
    sink->set_pattern(log_pattern);
    std::lock_guard lock(mutex_);
    sinks_.push_back(sink);
    for (auto& logger : raw_) {
      logger->sinks().push_back(sink);
    }
    return ok();
  } catch (const std::exception& e) {
    return fail(Errc::io_error, file.string() + ": cannot open log file: " + e.what());
  }
}

}  // namespace ember::kernel
