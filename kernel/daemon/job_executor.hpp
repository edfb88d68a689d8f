#pragma once
// The client daemon's job executor (DESIGN §6): deploys a job the server sends, starts its client job as a
// process through exactly one launcher, tracks its status, answers run-info and error queries, aborts it
// (or only its current task), and reports how it ended to the server without losing the exit code.

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include <ember/launcher.hpp>

#include "cell/cell.hpp"
#include "config.hpp"
#include "kernel.hpp"

namespace ember::kernel::fed {

/// The launchers a site knows, by the name a job's `[job] launcher` asks for ("process" when it names none),
/// and the component type each one is. Only those whose plugin is loaded can accept a job.
struct LauncherChoice {
  std::string name;  ///< "process"
  std::string type;  ///< "launcher.process"
};
/// The one launcher of `available` (those present) that accepts `job`, or Errc::invalid_config naming the
/// job file, what it asked for and what the site has, when none or several do.
Result<LauncherChoice> choose_launcher(const JobConfig& job, const std::vector<LauncherChoice>& available);

/// "exit code 3 (invalid_config: a config file breaks its schema)", "killed by signal 9".
std::string describe_exit(const ExitStatus& status);

/// Runs the site's jobs. Thread-safe: every call may come from any cell handler thread.
class JobExecutor {
 public:
  /// `cell` is the site daemon's cell (its listener is where client jobs join); `exe` the ember program to
  /// run a client job with; `workspace` the daemon's folder (<workspace>/<job_id>/ per job).
  JobExecutor(Kernel& kernel, cell::Cell& cell, SiteConfig site, std::filesystem::path exe,
              std::filesystem::path workspace, std::shared_ptr<Logger> log);
  ~JobExecutor();
  JobExecutor(const JobExecutor&) = delete;
  JobExecutor& operator=(const JobExecutor&) = delete;

  /// Writes the job folder (a folder bundle), checks the job, chooses its launcher and starts the client
  /// job. The status is `starting` until the job says it is up. Errors name the job and the cause.
  Result<void> deploy(const std::string& job_id, const std::string& token, std::span<const std::byte> folder);
  /// The client job reported up (or that its start failed).
  void job_up(const std::string& job_id, bool started, std::optional<Error> error);
  /// not_started (unknown job), starting, started, stopped or failed.
  RunState status(const std::string& job_id) const;
  /// The job's own answer to run-info (bounded by query_timeout), with the executor's status and exit.
  nlohmann::json run_info(const std::string& job_id);
  /// The errors the client job recorded (bounded wait); null when it does not answer.
  nlohmann::json errors(const std::string& job_id);
  void reset_errors(const std::string& job_id);
  /// Ends the job: `end` tells it the server finished (exit 0 expected), otherwise it is an abort. ABORT to
  /// the job, then its shutdown_grace plus a second for it to exit, then terminate, grace, kill. Returns
  /// when it is gone. Unknown or ended jobs: nothing to do.
  void abort(const std::string& job_id, bool end);
  /// Asks the job to drop its current task; the trainer lives on. False when no task was running.
  bool abort_task(const std::string& job_id);
  /// Every job this executor knows, with status and exit.
  nlohmann::json list() const;
  /// The job's log (the last `max_bytes` of <workspace>/<job_id>/<site>/log.txt).
  Result<std::string> log_text(const std::string& job_id, std::size_t max_bytes) const;
  /// Ends every running job (daemon shutdown).
  void stop_all();
  /// Kills what an earlier daemon on this workspace left running (process groups recorded in each job's
  /// run.json, checked against PID reuse by their start time). Returns what it reaped, for the log.
  std::vector<std::string> reap_leftovers();

 private:
  struct Run;
  void watch(const std::shared_ptr<Run>& run, std::stop_token stop);
  std::shared_ptr<Run> find(const std::string& job_id) const;
  void report(const Run& run);
  /// Waits until the watcher recorded the end of `run` (at most `bound`).
  bool wait_reported(Run& run, std::chrono::milliseconds bound);

  Kernel& kernel_;
  cell::Cell& cell_;
  SiteConfig site_;
  std::filesystem::path exe_;
  std::filesystem::path workspace_;
  std::shared_ptr<Logger> log_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Run>> runs_;
};

}  // namespace ember::kernel::fed
