#pragma once
// metrics.jsonl: one JSON object per line for every metric of a job, the workflow's and the trainers'.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <ember/event_bus.hpp>
#include <ember/result.hpp>

namespace ember::kernel {

/// Appends metrics to a JSONL file: {"time", "source", "round", "key", "value"[, "step"]}, with round and
/// step as JSON numbers.
///
/// Thread-safe.
class MetricsLog {
 public:
  /// Opens (appends to) `file`, created with mode 0666 less the process umask (`ember simulate` sets the
  /// site's, 0077 by default: 0600).
  static Result<std::unique_ptr<MetricsLog>> open(const std::filesystem::path& file);

  /// Writes one line. `source` is "server" or a site's name.
  void write(const std::string& source, const std::string& key, double value, std::uint64_t round,
             std::optional<std::uint64_t> step = std::nullopt);
  /// Writes a trainer's metric from its `metrics.trainer` event (fields site, key, value, round, step, as
  /// executor.external-trainer publishes them). A step that is not a decimal integer (a peer's mistake) is
  /// left out rather than written as text.
  void record(const Event& event);
  const std::filesystem::path& file() const noexcept { return file_; }

 private:
  MetricsLog(std::filesystem::path file, std::ofstream out) : file_(std::move(file)), out_(std::move(out)) {}

  std::filesystem::path file_;
  std::mutex mutex_;
  std::ofstream out_;
};

}  // namespace ember::kernel
