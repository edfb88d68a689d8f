#pragma once
// The console's view of a running job: a line per round sent, per site result and per round aggregated.

#include <mutex>
#include <ostream>
#include <string>

#include "progress.hpp"

namespace ember::kernel {

/// Prints progress lines to a stream, flushed at once (a long round shows its results as they come).
///
/// Thread-safe.
class ConsoleProgress final : public ProgressObserver {
 public:
  explicit ConsoleProgress(std::ostream& out) : out_(out) {}

  void round_started(const TaskData& task, std::size_t sites) override;
  void site_result(const TaskData& task, const SiteResult& result,
                   std::chrono::steady_clock::duration elapsed, std::size_t answered,
                   std::size_t total) override;
  void round_aggregated(std::uint64_t round, bool final,
                        const std::map<std::string, double>& metrics) override;

 private:
  std::mutex mutex_;
  std::ostream& out_;
};

/// "train round 2/5", or "evaluate (after round 5)" for a task after the last round.
std::string task_label(const TaskData& task);
/// "12.3 MiB".
std::string bytes_text(std::uint64_t n);
/// "1.5 s".
std::string seconds_text(std::chrono::steady_clock::duration d);
/// A metric as the console shows it (four significant digits).
std::string metric_text(double v);

}  // namespace ember::kernel
