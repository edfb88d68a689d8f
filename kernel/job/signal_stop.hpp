#pragma once
// SIGINT and SIGTERM as a stop request, for the commands that run until told to stop (`ember simulate`,
// the daemons and the job processes they start).

#include <signal.h>

#include <atomic>
#include <stop_token>
#include <thread>

namespace ember::kernel {

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts afterwards, and turns them into a
/// stop request on `stop`; restores the signal mask when destroyed. The stop is requested within 0.1 s.
///
/// Thread-bound: made and destroyed on one thread; signal() from any.
class SignalStop {
 public:
  explicit SignalStop(std::stop_source& stop);
  ~SignalStop();
  SignalStop(const SignalStop&) = delete;
  SignalStop& operator=(const SignalStop&) = delete;
  /// The signal that asked to stop, or 0.
  int signal() const { return signal_; }

 private:
  sigset_t set_{};
  sigset_t previous_{};
  std::atomic<int> signal_{0};
  std::jthread waiter_;
};

}  // namespace ember::kernel
