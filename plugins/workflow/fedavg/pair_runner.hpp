#pragma once
// Runs two pieces of work at once: one on the calling thread, one on a second thread. The aggregator cuts
// each pass over a model in two, so that folding a result uses both cores of a small server.

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace ember::fedavg {

/// Where the second piece runs.
enum class Threading {
  single,  ///< on the calling thread too, after the first
  spawn,   ///< on a std::jthread started for the call
  pool,    ///< on one thread kept for the runner's lifetime
};

class PairRunner {
 public:
  explicit PairRunner(Threading threading);
  ~PairRunner();
  PairRunner(const PairRunner&) = delete;
  PairRunner& operator=(const PairRunner&) = delete;

  Threading threading() const noexcept { return threading_; }

  /// Runs `here` on the calling thread and `there` beside it; returns when both are done. An exception from
  /// either is rethrown here (the first one, if both throw).
  void run(const std::function<void()>& here, const std::function<void()>& there);

 private:
  void serve(const std::stop_token& stop);

  Threading threading_;
  std::mutex mutex_;
  std::condition_variable_any wake_;
  std::condition_variable done_;
  const std::function<void()>* job_ = nullptr;  // set by run(), cleared by the worker when done
  std::exception_ptr job_error_;
  std::jthread worker_;  // last: started after, and stopped before, the members it uses
};

}  // namespace ember::fedavg
