#pragma once
// The client job (DESIGN §6): one site's part of a job, its scope and its executor, with a status that can
// be queried from any thread.

#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>

#include <ember/executor.hpp>
#include <ember/launcher.hpp>

#include "job_scope.hpp"

namespace ember::kernel {

/// One site's job. start(), execute() and stop() follow the Executor's contract
/// (sdk/include/ember/executor.hpp); every exception the executor throws becomes an Errc::internal error
/// naming the site, never a terminate.
///
/// Thread-safe: status() and error() from any thread; start() once, then execute() one task at a time from
/// any thread; stop() from any thread, also while start() or execute() runs (it cuts them short).
class ClientJob {
 public:
  /// A site whose executor is the job's component [components.<executor_id>], created in `scope`.
  static Result<std::unique_ptr<ClientJob>> create(std::string site, std::unique_ptr<JobScope> scope,
                                                   std::string_view executor_id);
  /// A site around an executor made elsewhere (tests, embedders); `scope` may be null.
  ClientJob(std::string site, std::shared_ptr<Executor> executor, std::unique_ptr<JobScope> scope = nullptr);
  ~ClientJob();
  ClientJob(const ClientJob&) = delete;
  ClientJob& operator=(const ClientJob&) = delete;

  /// The site's name ("site-1").
  const std::string& site() const noexcept { return site_; }
  /// Starts the executor (launches the trainer), bounded by the job's `launch` timeout; returns early with
  /// Errc::cancelled once `stop` is requested. The status becomes started or failed (with the error).
  Result<void> start(std::stop_token stop);
  /// Runs one task; the start error when the site did not start.
  Result<TaskData> execute(const TaskData& task, std::stop_token stop);
  /// Ends the job on this site (tells the trainer, waits its grace, frees everything). Idempotent.
  void stop() noexcept;
  /// Drops the running task while the trainer lives on, when the executor can (TaskAborting). False when it
  /// cannot, or no task runs.
  bool abort_task();

  /// not_started, starting, started, stopped or failed.
  RunState status() const;
  /// Why the site failed, once it has.
  std::optional<Error> error() const;

 private:
  void set(RunState state, std::optional<Error> error = std::nullopt);

  std::string site_;
  std::unique_ptr<JobScope> scope_;  // declared before the executor: the executor dies first
  std::shared_ptr<Executor> executor_;
  mutable std::mutex mutex_;
  RunState state_ = RunState::not_started;
  std::optional<Error> error_;
};

/// Whether a start error is the site's own trouble (its trainer did not come up, said the wrong thing, or the
/// job was stopped), rather than a job that cannot run at all (a missing or wrong component, a pipe or
/// launcher that cannot be created): the first fails that site, the second the job before it runs.
bool is_site_failure(const Error& error) noexcept;

}  // namespace ember::kernel
