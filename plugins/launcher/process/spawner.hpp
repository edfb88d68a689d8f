#pragma once
// The thread that forks every child of launcher.process.
//
// PR_SET_PDEATHSIG fires when the *thread* that forked a child exits, not when its process does. Callers
// launch from short-lived threads, so no caller forks: each request goes to one long-lived thread, shared by
// every launcher and handle of the process, which lives until the last of them is gone.

#include <sys/types.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ember/result.hpp>

#include <base/unique_fd.hpp>

namespace ember::process_launcher {

using base::UniqueFd;

/// What to start, fully resolved by the caller: the child runs only async-signal-safe code between fork and
/// exec, so every string is built before the fork.
struct ChildPlan {
  std::vector<std::string> argv;        ///< argv[0] as the program sees it, then the arguments
  std::vector<std::string> env;         ///< the whole environment, "NAME=VALUE"
  std::vector<std::string> candidates;  ///< the paths execve tries in turn (the PATH search, done here)
  std::string cwd;                      ///< the child's working directory
};

/// A started child: it runs in its own session, so its pid is also its process group id.
struct Child {
  pid_t pid = -1;
  UniqueFd out;    ///< read end of the child's stdout (non-blocking)
  UniqueFd err;    ///< read end of the child's stderr (non-blocking)
  UniqueFd pidfd;  ///< readable once the child has exited; invalid when the kernel lacks pidfd_open
};

class Spawner {
 public:
  /// The process's spawner, started on first use and shared until the last holder lets go. Also makes the
  /// process a child subreaper, so descendants orphaned inside a job's group are re-parented to it and can
  /// be reaped; the flag stays set for the life of the process.
  static std::shared_ptr<Spawner> shared();

  ~Spawner();
  Spawner(const Spawner&) = delete;
  Spawner& operator=(const Spawner&) = delete;

  /// Forks and execs `plan` on the spawner thread; returns once the program runs or could not be started
  /// (the error names `label`, the program and the cause).
  Result<Child> spawn(const ChildPlan& plan, const std::string& label);

 private:
  struct Request;

  Spawner();
  void run();

  std::mutex mutex_;
  std::condition_variable wake_;  // a request was queued, or quit_ was set
  std::condition_variable done_;  // a request was answered
  std::deque<Request*> queue_;
  bool quit_ = false;
  std::thread thread_;
};

}  // namespace ember::process_launcher
