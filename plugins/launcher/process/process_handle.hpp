#pragma once
// The handle on one process group started by launcher.process: it logs the group's output, reaps its
// members, keeps the main child's exit status and stops the group.

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <ember/launcher.hpp>
#include <ember/logger.hpp>

#include <base/launch_options.hpp>
#include <base/line_splitter.hpp>
#include <base/unique_fd.hpp>
#include "spawner.hpp"

namespace ember::process_launcher {

using base::LineSplitter;
using base::UniqueFd;

using base::OutputPolicy;

/// RunState: started while the main child runs; stopped once it exited with code 0, or, after stop(), was
/// ended by the SIGTERM or SIGKILL that stop() sent; failed for any other end (a non-zero code, another
/// signal, or an exit status that could not be collected).
class ProcessHandle final : public LaunchHandle {
 public:
  ProcessHandle(std::shared_ptr<Spawner> spawner, Child child, std::string name, OutputPolicy output);
  ~ProcessHandle() override;
  ProcessHandle(const ProcessHandle&) = delete;
  ProcessHandle& operator=(const ProcessHandle&) = delete;

  std::string id() const override { return std::to_string(pid_); }
  RunState state() override;
  Result<std::optional<ExitStatus>> wait(std::chrono::milliseconds timeout) override;
  Result<ExitStatus> stop(std::chrono::milliseconds grace) override;

 private:
  using Clock = std::chrono::steady_clock;
  using Lock = std::unique_lock<std::mutex>;

  enum class Pumped { drained, more, closed };

  void monitor();
  Pumped pump(int fd, LogLevel level, LineSplitter& lines, std::vector<char>& buffer);
  void log_line(LogLevel level, std::string_view line);
  // The functions below are called with mutex_ held.
  void reap();
  bool group_gone();
  bool settle(Lock& lock, Clock::time_point deadline);
  void signal_group(int signal);
  void log_end();
  Error lost_status() const;

  // Declared first, so destroyed last: the thread that forked the child must outlive it (PR_SET_PDEATHSIG).
  std::shared_ptr<Spawner> spawner_;
  const pid_t pid_;  // also the process group id: the child is a session leader
  const std::string name_;
  const std::string prefix_;
  const OutputPolicy output_;
  UniqueFd out_;
  UniqueFd err_;
  UniqueFd pidfd_;
  UniqueFd wake_;                  // an eventfd that tells the monitor to drain what is left and return
  std::atomic<bool> quit_{false};  // the same, for when the eventfd could not be made

  std::mutex stop_mutex_;  // one stop() at a time; later ones return the first one's result
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<ExitStatus> status_;
  bool status_lost_ = false;
  bool group_gone_ = false;
  bool stop_requested_ = false;
  std::thread monitor_;  // last: started once everything above exists
};

}  // namespace ember::process_launcher
