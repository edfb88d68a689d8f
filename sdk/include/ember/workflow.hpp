#pragma once
// Workflows: the server side of a job, deciding which tasks go to which sites and what to make of answers.

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <ember/component.hpp>
#include <ember/task.hpp>

namespace ember {

/// One site's answer to a task, or why there is none.
struct SiteResult {
  std::string site;
  Result<TaskData> result;
};

/// What the kernel offers a workflow: the sites of the job and a way to send them tasks.
/// Thread-bound: sites(), broadcast() and report() are called from the thread that runs Workflow::run() (one
/// broadcast at a time); only `on_result` runs elsewhere, on the sites' worker threads.
class EMBER_API WorkflowHost {
 public:
  virtual ~WorkflowHost() = default;

  /// The sites taking part, sorted.
  virtual std::vector<std::string> sites() const = 0;
  /// Sends `task` to each of `sites` and calls `on_result` as each answer arrives (from any thread, one at
  /// a time), until all have answered or failed, or `timeout` passes; sites still out then are reported
  /// as Errc::timeout. Returns once every site is accounted for; Errc::cancelled when the job was stopped.
  /// An exception thrown by `on_result` is caught on the worker thread and fails the broadcast.
  virtual Result<void> broadcast(const TaskData& task, const std::vector<std::string>& sites,
                                 std::chrono::milliseconds timeout,
                                 const std::function<void(SiteResult&&)>& on_result) = 0;
  /// Records a metric of the job (written as JSONL and shown in progress).
  virtual void report(const std::string& key, double value, std::uint64_t round) = 0;
};

/// A workflow component. Thread-bound: run() is called once, on the server job's thread; the context's stop
/// token is requested when the job is stopped (broadcast() then returns Errc::cancelled too).
class EMBER_API Workflow : public Component {
 public:
  /// Runs the job's rounds to the end; an error ends the job with it. An exception becomes Errc::internal.
  virtual Result<void> run(WorkflowHost& host) = 0;
};

}  // namespace ember
