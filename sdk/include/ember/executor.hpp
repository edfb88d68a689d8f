#pragma once
// Executors: the client side of a job. They receive tasks from the workflow and answer them, typically by
// handing them to a trainer over a pipe.
//
// Threading (the vocabulary of component.hpp): an executor is thread-safe in the narrow sense below. The
// kernel calls start() once, then execute() one task at a time, each from any thread (a task runs on a
// worker thread of the server job, not the thread that called start()); stop() may come from another thread
// at any time, also while start() or execute() runs, and must make them return promptly (within the job's
// close bound, well under a second for the in-tree executor) before it ends the job on the site.

#include <stop_token>

#include <ember/component.hpp>
#include <ember/task.hpp>

namespace ember {

/// An executor component.
class EMBER_API Executor : public Component {
 public:
  /// Prepares for tasks (launch a trainer, open the pipe). Bounded by the job's `launch` timeout; returns
  /// Errc::cancelled soon after `stop` is requested (SIGINT during a trainer's launch). Called once.
  virtual Result<void> start(std::stop_token stop) = 0;
  /// Runs one task and returns the site's answer, or an error that names why the task failed; returns
  /// Errc::cancelled soon after `stop` is requested or stop() is called. One task at a time.
  virtual Result<TaskData> execute(const TaskData& task, std::stop_token stop) = 0;
  /// Ends the job on this site: cuts a running start() or execute() short, tells the trainer, waits
  /// `shutdown_grace`, frees everything. Thread-safe and idempotent; execute() fails after it.
  virtual void stop() noexcept = 0;
};

/// What an executor may also offer: dropping the task it runs while its trainer lives on (an admin's
/// `ember abort JOB --task`). The kernel finds it with dynamic_cast on the executor; an executor without it
/// cannot abort a single task, and the admin is told so.
class EMBER_API TaskAborting {
 public:
  virtual ~TaskAborting() = default;
  /// Makes the running execute() return Errc::cancelled soon, without ending the trainer: the next task goes
  /// to the same trainer, and a result it still sends for the dropped task is turned down. False when no
  /// task runs. Thread-safe: called from any thread while execute() runs on another.
  virtual bool abort_task() = 0;
};

}  // namespace ember
