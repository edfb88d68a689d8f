#pragma once
// Executors: the client side of a job. They receive tasks from the workflow and answer them, typically by
// handing them to a trainer over a pipe.

#include <stop_token>

#include <ember/component.hpp>
#include <ember/task.hpp>

namespace ember {

/// An executor component.
class EMBER_API Executor : public Component {
 public:
  /// Prepares for tasks (launch a trainer, open the pipe). Bounded by the job's `launch` timeout.
  virtual Result<void> start() = 0;
  /// Runs one task and returns the site's answer, or an error that names why the task failed.
  virtual Result<TaskData> execute(const TaskData& task, std::stop_token stop) = 0;
  /// Ends the job on this site: tells the trainer, waits `shutdown_grace`, frees everything. Idempotent.
  virtual void stop() noexcept = 0;
};

}  // namespace ember
