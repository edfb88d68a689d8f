#include "job_executor.hpp"

#include <signal.h>
#include <sys/stat.h>

#include <condition_variable>
#include <fstream>
#include <sstream>

#include <ember/event_bus.hpp>

#include "codec.hpp"
#include "event_bus.hpp"
#include "exit_codes.hpp"
#include "federation.hpp"
#include "workspace.hpp"

namespace ember::kernel::fed {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

std::string exit_name(int code) {
  switch (code) {
    case exit_code::ok:
      return "ok";
    case exit_code::internal:
      return "internal: a bug in ember";
    case exit_code::usage:
      return "usage: a bad command line";
    case exit_code::invalid_config:
      return "invalid_config: a config file breaks its schema or an option";
    case exit_code::plugin_error:
      return "plugin_error: a plugin was refused or a component failed";
    case exit_code::job_failed:
      return "job_failed: the job ran and failed";
    case exit_code::interrupted:
      return "interrupted: stopped by a signal or an abort";
    case exit_code::io_error:
      return "io_error: a file could not be read or written";
    case exit_code::unreachable:
      return "unreachable: its daemon could not be reached";
    default:
      return "not an ember exit code";
  }
}

json exit_json(const std::optional<ExitStatus>& exit) {
  if (!exit) {
    return nullptr;
  }
  if (exit->how == ExitStatus::How::signaled) {
    return json{{"signal", exit->value}, {"text", describe_exit(*exit)}};
  }
  return json{{"code", exit->value}, {"text", describe_exit(*exit)}};
}

}  // namespace

Result<LauncherChoice> choose_launcher(const JobConfig& job, const std::vector<LauncherChoice>& available) {
  const std::string wanted = job.launcher.empty() ? "process" : job.launcher;
  std::vector<LauncherChoice> accepting;
  std::string names;
  for (const auto& l : available) {
    names += (names.empty() ? "" : ", ") + l.name;
    if (l.name == wanted) {
      accepting.push_back(l);
    }
  }
  if (accepting.size() != 1) {
    return fail(Errc::invalid_config,
                job.file.string() + ": job.launcher: " +
                    (accepting.empty() ? "no launcher of this site accepts the job (it asks for '" + wanted +
                                             "'; this site has: " + (names.empty() ? "none" : names) + ")"
                                       : std::to_string(accepting.size()) + " launchers accept the job ('" +
                                             wanted + "'); a site must have exactly one"));
  }
  return accepting.front();
}

std::string describe_exit(const ExitStatus& status) {
  if (status.how == ExitStatus::How::signaled) {
    return "killed by signal " + std::to_string(status.value) + " (" + ::strsignal(status.value) + ")";
  }
  return "exit code " + std::to_string(status.value) + " (" + exit_name(status.value) + ")";
}

struct JobExecutor::Run {
  std::string job_id;
  fs::path dir;  // <workspace>/<job_id>
  JobTimeouts timeouts;
  std::string launcher;
  std::shared_ptr<Launcher> component;  // outlives the handle
  std::unique_ptr<LaunchHandle> handle;
  mutable std::mutex mutex;
  RunState state = RunState::starting;
  std::optional<Error> error;
  std::optional<ExitStatus> exit;
  bool ending = false;  // the server ended it, or an abort: its exit is expected
  bool aborted = false;
  bool reported = false;  // the watcher is done: the end is recorded and told to the server
  std::condition_variable done;
  std::chrono::system_clock::time_point started = std::chrono::system_clock::now();
  std::jthread watcher;
};

JobExecutor::JobExecutor(Kernel& kernel, cell::Cell& cell, SiteConfig site, fs::path exe, fs::path workspace,
                         std::shared_ptr<Logger> log)
    : kernel_(kernel),
      cell_(cell),
      site_(std::move(site)),
      exe_(std::move(exe)),
      workspace_(std::move(workspace)),
      log_(std::move(log)) {}

JobExecutor::~JobExecutor() {
  stop_all();
}

std::shared_ptr<JobExecutor::Run> JobExecutor::find(const std::string& job_id) const {
  std::lock_guard lock(mutex_);
  auto it = runs_.find(job_id);
  return it == runs_.end() ? nullptr : it->second;
}

Result<void> JobExecutor::deploy(const std::string& job_id, const std::string& token,
                                 std::span<const std::byte> folder) {
  if (auto checked = check_job_id(job_id); !checked) {
    return fail(Errc::invalid_argument, site_.name + ": " + checked.error().message);
  }
  auto run = std::make_shared<Run>();
  run->job_id = job_id;
  run->dir = workspace_ / job_id;
  {
    std::lock_guard lock(mutex_);
    std::error_code ec;
    if (runs_.contains(job_id) || fs::exists(run->dir, ec)) {
      return fail(Errc::invalid_argument, site_.name + ": job " + job_id + " was deployed here before");
    }
    runs_[job_id] = run;
  }
  // Anything that fails from here is recorded as the job's failure, with the exit code it stands for.
  auto failed = [&](Error error, int code) -> Result<void> {
    {
      std::lock_guard lock(run->mutex);
      run->state = RunState::failed;
      run->error = error;
      run->exit = ExitStatus{ExitStatus::How::exited, code};
    }
    log_->error("job " + job_id + ": " + error.message);
    report(*run);
    return fail(std::move(error));
  };
  if (auto made = make_private_dir(run->dir); !made) {
    return failed(made.error(), exit_code::io_error);
  }
  auto files = unpack_folder(folder, run->dir / "job", "job " + job_id + " from the server");
  if (!files) {
    return failed(files.error(), exit_code::invalid_config);
  }
  Substitutions subs{site_.name, job_id, (run->dir / site_.name).string()};
  auto job = load_job(run->dir / "job", kernel_.registry(), subs);
  if (!job) {
    return failed(job.error(), exit_code_for(job.error()));
  }
  run->timeouts = job->timeouts;
  std::vector<LauncherChoice> available;
  for (LauncherChoice l :
       {LauncherChoice{"process", "launcher.process"}, LauncherChoice{"docker", "launcher.docker"}}) {
    if (kernel_.registry().contains(l.type)) {
      available.push_back(l);
    }
  }
  auto choice = choose_launcher(*job, available);
  if (!choice) {
    return failed(choice.error(), exit_code::invalid_config);
  }
  run->launcher = choice->name;
  auto component = kernel_.registry().create_as<Launcher>(choice->type, Options{});
  if (!component) {
    return failed(component.error(), exit_code::plugin_error);
  }
  run->component = *component;
  const fs::path token_file = run->dir / "token";
  if (auto written = write_token_file(token_file, token); !written) {
    return failed(written.error(), exit_code::io_error);
  }
  cell_.admit_job(job_id, token);
  kernel_.events().publish(Event{"job.before_launch",
                                 "kernel.executor",
                                 {{"job_id", job_id}, {"site", site_.name}, {"launcher", choice->name}}});

  LaunchSpec spec;
  spec.name = site_.name + "." + job_id;
  spec.argv = job_process_argv(exe_, site_.file, kernel_.search_paths(), "client",
                               {"--job-dir", (run->dir / "job").string(), "--job-id", job_id, "--workspace",
                                (run->dir / site_.name).string(), "--parent", cell_.listen_address(),
                                "--token-file", token_file.string()});
  spec.cwd = run->dir;
  auto handle = run->component->launch(spec);
  if (!handle) {
    cell_.revoke_job(job_id);
    return failed(handle.error(), exit_code::plugin_error);
  }
  run->handle = std::move(*handle);
  // The process group to reap if this daemon dies before the job ends.
  record_process(run->dir / "run.json", std::strtol(run->handle->id().c_str(), nullptr, 10));
  kernel_.events().publish(Event{"job.after_launch",
                                 "kernel.executor",
                                 {{"job_id", job_id}, {"site", site_.name}, {"id", run->handle->id()}}});
  log_->info("job " + job_id + ": client job launched (" + choice->name + ", " + run->handle->id() + ")");
  run->watcher = std::jthread([this, run](std::stop_token stop) { watch(run, stop); });
  return ok();
}

void JobExecutor::watch(const std::shared_ptr<Run>& run, std::stop_token stop) {
  std::optional<ExitStatus> exit = wait_launched(*run->handle, run->timeouts.shutdown_grace, stop);
  {
    std::lock_guard lock(run->mutex);
    run->exit = exit;
    // Ended or aborted on request and exited as told: stopped. Anything else is a failure.
    const bool as_told = run->ending && exit->how == ExitStatus::How::exited &&
                         (exit->value == exit_code::ok || exit->value == exit_code::interrupted);
    run->state = exit->success() || as_told ? RunState::stopped : RunState::failed;
    if (run->state == RunState::failed && !run->error) {
      run->error = Error{Errc::internal, "the client job ended with " + describe_exit(*exit)};
    }
  }
  cell_.revoke_job(run->job_id);
  std::error_code ec;
  fs::remove(run->dir / "run.json", ec);
  log_->info("job " + run->job_id + ": client job ended with " + describe_exit(*exit));
  report(*run);
  {
    std::lock_guard lock(run->mutex);
    run->reported = true;
  }
  run->done.notify_all();
  kernel_.events().publish(
      Event{"job.completed",
            "kernel.executor",
            {{"job_id", run->job_id}, {"site", site_.name}, {"exit", describe_exit(*exit)}}});
}

void JobExecutor::report(const Run& run) {
  json state;
  {
    std::lock_guard lock(run.mutex);
    state = json{{"job_id", run.job_id},
                 {"site", site_.name},
                 {"state", std::string(to_string(run.state))},
                 {"aborted", run.aborted},
                 {"exit", exit_json(run.exit)}};
    if (run.error) {
      state["error"] = run.error->message;
    }
  }
  const std::string text = state.dump();
  // The server learns how the job ended; a lost notify would lose the exit code, so this is a request,
  // retried while the server is away (bounded).
  for (int attempt = 0; attempt < 30; ++attempt) {
    auto reply = cell_.request("server", topic::job_state, {{"job_id", run.job_id}},
                               std::as_bytes(std::span(text.data(), text.size())), query_timeout);
    if (reply.ok() || reply.rc == cell::Rc::shutting_down) {
      return;
    }
    log_->warn("job " + run.job_id + ": reporting its end to the server: " + reply.reason + "; retrying");
    std::this_thread::sleep_for(1s);
  }
}

void JobExecutor::job_up(const std::string& job_id, bool started, std::optional<Error> error) {
  auto run = find(job_id);
  if (!run) {
    return;
  }
  {
    std::lock_guard lock(run->mutex);
    if (run->state != RunState::starting) {
      return;
    }
    run->state = started ? RunState::started : RunState::failed;
    run->error = std::move(error);
  }
  report(*run);  // the server's status shows the stage
}

RunState JobExecutor::status(const std::string& job_id) const {
  auto run = find(job_id);
  if (!run) {
    return RunState::not_started;
  }
  std::lock_guard lock(run->mutex);
  return run->state;
}

json JobExecutor::run_info(const std::string& job_id) {
  auto run = find(job_id);
  json info{{"site", site_.name}, {"job_id", job_id}};
  if (!run) {
    info["status"] = std::string(to_string(RunState::not_started));
    return info;
  }
  RunState state;
  {
    std::lock_guard lock(run->mutex);
    state = run->state;
    info["status"] = std::string(to_string(state));
    info["launcher"] = run->launcher;
    info["aborted"] = run->aborted;
    info["exit"] = exit_json(run->exit);
    if (run->error) {
      info["error"] = run->error->message;
    }
  }
  if (state == RunState::started) {
    auto reply = cell_.request(site_.name + "." + job_id, topic::run_info, {}, {}, query_timeout);
    if (reply.ok()) {
      auto parsed = json::parse(reply.message.payload.begin(), reply.message.payload.end(), nullptr, false);
      if (!parsed.is_discarded()) {
        info["job"] = parsed;
      }
    } else {
      info["job_error"] = reply.reason;
    }
  }
  return info;
}

json JobExecutor::errors(const std::string& job_id) {
  auto reply = cell_.request(site_.name + "." + job_id, topic::errors, {}, {}, query_timeout);
  if (!reply.ok()) {
    return nullptr;
  }
  auto parsed = json::parse(reply.message.payload.begin(), reply.message.payload.end(), nullptr, false);
  return parsed.is_discarded() ? json(nullptr) : parsed;
}

void JobExecutor::reset_errors(const std::string& job_id) {
  (void)cell_.notify(site_.name + "." + job_id, topic::reset_errors, {}, {}, query_timeout);
}

void JobExecutor::abort(const std::string& job_id, bool end) {
  auto run = find(job_id);
  if (!run || !run->handle) {
    return;
  }
  {
    std::lock_guard lock(run->mutex);
    if (run->exit) {
      return;
    }
    run->ending = true;
    run->aborted = run->aborted || !end;
  }
  log_->info("job " + job_id + (end ? ": ending (the server finished it)" : ": aborting"));
  auto told = cell_.request(site_.name + "." + job_id, topic::job_abort, {{"mode", end ? "end" : "abort"}},
                            {}, query_timeout);
  if (!told.ok()) {
    log_->warn("job " + job_id + ": " + told.reason + "; terminating it");
  } else {
    // The job tells its trainer and waits its grace; then it exits by itself.
    if (wait_reported(*run, run->timeouts.shutdown_grace + 1s)) {
      return;
    }
  }
  (void)run->handle->stop(std::min<std::chrono::milliseconds>(run->timeouts.shutdown_grace, 5s));
  (void)wait_reported(*run, 10s);
}

bool JobExecutor::wait_reported(Run& run, std::chrono::milliseconds bound) {
  std::unique_lock lock(run.mutex);
  return run.done.wait_for(lock, bound, [&] { return run.reported; });
}

bool JobExecutor::abort_task(const std::string& job_id) {
  auto reply = cell_.request(site_.name + "." + job_id, topic::job_abort_task, {}, {}, query_timeout);
  if (!reply.ok()) {
    return false;
  }
  auto parsed = json::parse(reply.message.payload.begin(), reply.message.payload.end(), nullptr, false);
  return !parsed.is_discarded() && parsed.value("aborted", false);
}

json JobExecutor::list() const {
  json jobs = json::array();
  std::lock_guard lock(mutex_);
  for (const auto& [id, run] : runs_) {
    std::lock_guard run_lock(run->mutex);
    jobs.push_back(
        json{{"job_id", id}, {"status", std::string(to_string(run->state))}, {"exit", exit_json(run->exit)}});
  }
  return jobs;
}

Result<std::string> JobExecutor::log_text(const std::string& job_id, std::size_t max_bytes) const {
  if (auto checked = check_job_id(job_id); !checked) {
    return fail(std::move(checked.error()));
  }
  const fs::path file = workspace_ / job_id / site_.name / "log.txt";
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return fail(Errc::not_found, site_.name + ": no log for job " + job_id);
  }
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::size_t>(in.tellg());
  const std::size_t from = size > max_bytes ? size - max_bytes : 0;
  in.seekg(static_cast<std::streamoff>(from));
  std::string text(size - from, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  return text;
}

void JobExecutor::stop_all() {
  std::vector<std::shared_ptr<Run>> running;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [id, run] : runs_) {
      std::lock_guard run_lock(run->mutex);
      if (run->handle && !run->exit) {
        running.push_back(run);
      }
    }
  }
  // Jobs end in parallel, each waiting its own grace.
  std::vector<std::jthread> stoppers;
  for (const auto& run : running) {
    stoppers.emplace_back([this, id = run->job_id] { abort(id, false); });
  }
}

std::vector<std::string> JobExecutor::reap_leftovers() {
  std::vector<std::string> reaped;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(workspace_, ec)) {
    if (auto what = reap_recorded(entry.path() / "run.json")) {
      reaped.push_back(entry.path().filename().string() + " (" + *what + ")");
    }
  }
  return reaped;
}

}  // namespace ember::kernel::fed
