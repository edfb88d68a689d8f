#pragma once
// What a running server job tells whoever shows its progress (the console of `ember simulate`, a daemon's
// log): round mechanics live in ServerJob, formatting in an observer.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include <ember/task.hpp>
#include <ember/workflow.hpp>

namespace ember::kernel {

/// Metrics the workflow reported, by round (from 0), then by key.
using RoundMetrics = std::map<std::uint64_t, std::map<std::string, double>>;

/// The bytes of a task's tensors.
inline std::uint64_t params_bytes(const TaskData& task) noexcept {
  std::uint64_t n = 0;
  for (const auto& t : task.params) {
    n += t.bytes.size();
  }
  return n;
}

/// How a server job ended.
struct JobReport {
  Result<void> outcome = ok();    ///< the workflow's result (Errc::cancelled when stopped)
  RoundMetrics rounds;            ///< every metric the workflow reported
  std::uint64_t bytes_moved = 0;  ///< tensor bytes sent to sites plus those of their accepted results
  std::chrono::steady_clock::duration elapsed{};
};

/// Receives a server job's progress. Every call has a default that ignores it.
///
/// Thread-safe: calls come from the server job's thread and its per-site worker threads, one at a time
/// (the server job serialises them), so an observer needs no lock of its own; they must be quick.
class ProgressObserver {
 public:
  virtual ~ProgressObserver() = default;

  /// `task` is being sent to `sites` sites.
  virtual void round_started(const TaskData& /*task*/, std::size_t /*sites*/) {}
  /// One site answered `task` (or failed it), `elapsed` after the round started; `answered` of `total`.
  virtual void site_result(const TaskData& /*task*/, const SiteResult& /*result*/,
                           std::chrono::steady_clock::duration /*elapsed*/, std::size_t /*answered*/,
                           std::size_t /*total*/) {}
  /// The workflow reported `metrics` for `round`; `final` when it is the evaluation after the last round.
  virtual void round_aggregated(std::uint64_t /*round*/, bool /*final*/,
                                const std::map<std::string, double>& /*metrics*/) {}
  /// The job ended.
  virtual void finished(const JobReport& /*report*/) {}
};

}  // namespace ember::kernel
