// executor.external-trainer: the client job's side of a task. Launches the training program through the
// job's launcher, hands it a 0600 bootstrap file, runs the session over the job's pipe, passes tasks and
// results, forwards the trainer's LOG metrics, and turns every failure into a task error that says why.
//
// Threading (executor.hpp): start() and execute() run one at a time, each on whichever thread calls it; no
// lock is held while they wait on the trainer. stop() may come from any thread at any time: it requests
// halt_, which cuts the launch wait (the watcher closes the session) and a running task (a stop_callback
// closes the session, so a blocked send or receive returns at once), waits for the running call to return
// (bounded), then ends the trainer.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>

#include <ember/converter.hpp>
#include <ember/executor.hpp>
#include <ember/launcher.hpp>
#include <ember/pipe.hpp>
#include <ember/plugin.hpp>

#include <base/strings.hpp>

#include "session/bootstrap.hpp"
#include "session/bundle.hpp"
#include "session/session.hpp"

namespace ember::external_trainer {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using wire::Op;

std::string describe_exit(const ExitStatus& status) {
  return status.how == ExitStatus::How::exited ? "exited with code " + std::to_string(status.value)
                                               : "was killed by signal " + std::to_string(status.value);
}

std::string header_or(const session::Message& m, std::string_view key, std::string fallback = {}) {
  const auto* v = m.header(key);
  return v != nullptr ? *v : std::move(fallback);
}

class ExternalTrainer final : public Executor, public TaskAborting {
 public:
  explicit ExternalTrainer(const ComponentContext& context)
      : log_(context.logger_ptr()),
        events_(context.events()),
        registry_(context.registry()),
        workspace_(context.workspace()),
        stop_(context.stop_token()),
        launcher_id_(context.options().string("launcher")),
        pipe_id_(context.options().string("pipe")),
        command_(context.options().string_list("command")),
        per_task_(context.options().string("launch") == "task"),
        converter_ids_(context.options().string_list("converters")),
        env_(context.options().string_list("env")),
        gpus_(context.options().string_list("gpus")),
        check_layout_(context.options().boolean("check_layout")),
        spill_over_(context.options().integer("spill_over")),
        task_names_{context.options().string("train_task"), context.options().string("evaluate_task"),
                    context.options().string("submit_model_task")} {
    if (const JobInfo* job = registry_.job()) {
      job_ = *job;
    }
    settings_ = session::settings_from(job_.timeouts, job_.max_resends);
  }

  ~ExternalTrainer() override { stop(); }

  /// Checks what the option schema cannot say (the kernel has checked choices, ranges and references),
  /// then constructs.
  static Result<std::unique_ptr<ExternalTrainer>> create(const ComponentContext& context) {
    const auto& command = context.options().string_list("command");
    if (command.empty() || command.front().empty()) {
      return fail(Errc::invalid_option,
                  "executor.external-trainer: option 'command' is empty: name the training program to run");
    }
    return std::make_unique<ExternalTrainer>(context);
  }

  Result<void> start(std::stop_token stop) override {
    auto busy = enter("start()");
    if (!busy) {
      return fail(std::move(busy.error()));
    }
    Result<void> started = start_busy(stop);
    leave();
    return started;
  }

  Result<TaskData> execute(const TaskData& task, std::stop_token stop) override {
    auto busy = enter("execute()");
    if (!busy) {
      return fail(std::move(busy.error()));
    }
    Result<TaskData> result = execute_busy(task, stop);
    leave();
    return result;
  }

  bool abort_task() override {
    if (!in_task_) {
      return false;
    }
    abort_task_requested_ = true;
    return true;
  }

  void stop() noexcept override {
    halt_.request_stop();
    {
      std::unique_lock lock(mutex_);
      // A running start() or execute() sees halt_ within its poll bound (its session is closed at once) and
      // ends the trainer itself on its way out; the bound is a guard against a launcher that never returns.
      if (!idle_.wait_for(lock, job_.timeouts.shutdown_grace + 5s, [this] { return !busy_; })) {
        log_->log(
            LogLevel::error,
            site() + ": start() or execute() did not return after stop(); it ends the trainer when it does");
        return;
      }
      busy_ = true;  // this thread alone touches the trainer now, without holding the lock while it waits
    }
    end_trainer("job finished", false);
    std::lock_guard lock(mutex_);
    busy_ = false;
    idle_.notify_all();
  }

 private:
  // Marks the executor busy: one start() or execute() at a time, none after stop().
  Result<void> enter(std::string_view call) {
    std::lock_guard lock(mutex_);
    if (halt_.stop_requested()) {
      return fail(Errc::cancelled, site() + ": " + std::string(call) + " after stop()");
    }
    if (busy_) {
      return fail(Errc::invalid_argument, site() + ": " + std::string(call) +
                                              " while another start() or execute() runs (one at a time)");
    }
    busy_ = true;
    return ok();
  }

  void leave() {
    if (halt_.stop_requested()) {
      end_trainer("job stopped", true);  // stop() came while this call ran; still busy, so no lock needed
    }
    std::lock_guard lock(mutex_);
    busy_ = false;
    idle_.notify_all();
  }

  bool halted(const std::stop_token& stop) const {
    return stop.stop_requested() || halt_.stop_requested() || stop_.stop_requested();
  }

  // Checks that [components.<id>] exists and is of `kind`: a wrong reference is a config error of this
  // executor's option, found before anything is created.
  Result<ConfiguredComponent> referenced(const char* option, const std::string& id, std::string_view kind) {
    auto config = registry_.configured(id);
    if (!config) {
      return fail(Errc::invalid_config,
                  std::string("option '") + option + "' = \"" + id + "\": " + config.error().message);
    }
    if (!config->type.starts_with(std::string(kind) + ".")) {
      return fail(Errc::invalid_config, std::string("option '") + option + "' = \"" + id +
                                            "\": component \"" + id + "\" is a " + config->type + ", not a " +
                                            std::string(kind));
    }
    return config;
  }

  Result<void> start_busy(const std::stop_token& stop) {
    if (registry_.job() == nullptr) {
      return fail(Errc::invalid_argument,
                  "executor.external-trainer runs inside a job (ember simulate or a "
                  "client job); it was created without one");
    }
    if (launcher_) {
      return fail(Errc::invalid_argument, site() + ": start() was called twice");
    }
    auto launcher_config = referenced("launcher", launcher_id_, "launcher");
    if (!launcher_config) {
      return fail(std::move(launcher_config.error()));
    }
    auto pipe_config = referenced("pipe", pipe_id_, "pipe");
    if (!pipe_config) {
      return fail(std::move(pipe_config.error()));
    }
    auto launcher = registry_.create_configured_as<Launcher>(launcher_id_);
    if (!launcher) {
      return fail(launcher.error().code,
                  "option 'launcher' = \"" + launcher_id_ + "\": " + launcher.error().message);
    }
    auto pipe = registry_.create_configured_as<Pipe>(pipe_id_);
    if (!pipe) {
      return fail(pipe.error().code, "option 'pipe' = \"" + pipe_id_ + "\": " + pipe.error().message);
    }
    launcher_ = *launcher;
    pipe_type_ = pipe_config->type;
    pipe_options_ = pipe_config->options;
    pipe_ = *pipe;
    for (const auto& id : converter_ids_) {
      auto converter = registry_.configured(id);
      if (!converter) {
        return fail(Errc::invalid_config,
                    "option 'converters': \"" + id + "\": " + converter.error().message);
      }
      if (!converter->type.starts_with("converter.")) {
        return fail(Errc::invalid_config, "option 'converters': component \"" + id + "\" is a " +
                                              converter->type + ", not a converter");
      }
      converters_.push_back(std::move(*converter));
    }
    if (!per_task_) {
      return launch_trainer(stop);
    }
    return ok();
  }

  Result<TaskData> execute_busy(const TaskData& task, const std::stop_token& stop) {
    if (!launcher_) {
      return fail(Errc::invalid_argument, site() + ": execute() before start()");
    }
    if (!trainer_) {
      if (per_task_ || launches_ == 0) {
        if (auto launched = launch_trainer(stop); !launched) {
          return fail(std::move(launched.error()));
        }
      } else {
        return fail(Errc::peer_gone, site() + ": the trainer is gone (" + gone_reason_ + ")");
      }
    }
    declined_ = declined_final_ = false;
    auto result = run_task(task, stop);
    const bool lives_on = !result && ((declined_ && !declined_final_) || task_aborted_) &&
                          trainer_->session->state() == session::State::ready;
    if ((!result && !lives_on) || per_task_) {
      // A failed task leaves the trainer in an unknown state: end it, so the next task starts clean (per
      // task) or fails at once saying why (per job).
      end_trainer(result ? "task done" : result.error().message, !result);
    }
    return result;
  }

  std::string site() const { return job_.site.empty() ? std::string("site") : job_.site; }

  struct Refusals {
    std::mutex mutex;
    std::string last;  // why the pipe last refused a candidate peer
  };

  struct Trainer {
    std::unique_ptr<LaunchHandle> handle;
    std::unique_ptr<session::Session> session;
    std::shared_ptr<session::BundleInbox> inbox;
  };

  // A Python trainer: "python3" (or "python") means the interpreter ember's package was built for, not
  // whichever is first on PATH; a command that starts with a .py file runs it with that interpreter. The
  // script is looked up in the job folder, like a program.
  bool is_python(const std::string& program) const {
    return !job_.python.empty() && (program == "python3" || program == "python");
  }

  std::vector<std::string> python_command() const {
    std::vector<std::string> argv = command_;
    if (argv[0].ends_with(".py")) {
      argv.insert(argv.begin(), job_.python.string());
    } else {
      argv[0] = job_.python.string();
    }
    std::error_code ec;
    for (std::size_t i = 1; i < argv.size(); ++i) {
      if (argv[i].starts_with("-")) {
        if (argv[i] == "-m" || argv[i] == "-c") {
          break;  // a module or inline code: nothing to resolve
        }
        continue;
      }
      std::filesystem::path script(argv[i]);
      if (script.is_relative() && std::filesystem::is_regular_file(job_.job_dir / script, ec)) {
        argv[i] = (job_.job_dir / script).lexically_normal().string();
      }
      break;
    }
    return argv;
  }

  // The package `ember` comes first on the trainer's PYTHONPATH (then the job's env option, else ours).
  void add_python_path(LaunchSpec& spec) const {
    if (job_.python_paths.empty()) {
      return;
    }
    std::vector<std::string> parts;
    for (const auto& p : job_.python_paths) {
      parts.push_back(p.string());
    }
    if (auto given = spec.env.find("PYTHONPATH"); given != spec.env.end()) {
      parts.push_back(given->second);
    } else if (const char* inherited = std::getenv("PYTHONPATH"); inherited != nullptr && *inherited != 0) {
      parts.emplace_back(inherited);
    }
    spec.env["PYTHONPATH"] = base::join(parts, ":");
    spec.env.try_emplace("PYTHONUNBUFFERED", "1");  // a Python trainer's prints reach the log as they happen
  }

  std::vector<std::string> resolve_command() const {
    if (is_python(command_[0]) || (!job_.python.empty() && command_[0].ends_with(".py"))) {
      return python_command();
    }
    std::vector<std::string> argv = command_;
    std::filesystem::path program(argv[0]);
    std::error_code ec;
    if (program.is_relative() && argv[0].find('/') != std::string::npos) {
      argv[0] = (job_.job_dir / program).lexically_normal().string();
    } else if (program.is_relative()) {
      std::vector<std::filesystem::path> dirs{job_.job_dir};
      dirs.insert(dirs.end(), job_.program_paths.begin(), job_.program_paths.end());
      for (const auto& dir : dirs) {
        auto candidate = dir / program;
        if (!dir.empty() && std::filesystem::is_regular_file(candidate, ec) &&
            ::access(candidate.c_str(), X_OK) == 0) {
          argv[0] = candidate.string();
          break;
        }
      }
    }
    return argv;
  }

  Result<void> launch_trainer(const std::stop_token& stop) {
    ++launches_;
    if (launches_ > 1) {
      // A fresh pipe component for each trainer: the previous one may still hold what its job end left
      // behind (the file pipe keeps unread frames until its component goes), and is dropped first.
      pipe_.reset();
      auto pipe = registry_.create_configured_as<Pipe>(pipe_id_);
      if (!pipe) {
        return fail(pipe.error().code, site() + ": pipe '" + pipe_id_ + "': " + pipe.error().message);
      }
      pipe_ = *pipe;
    }
    auto token = session::make_token();
    if (!token) {
      return fail(std::move(token.error()));
    }
    // What the pipe refused (a socket turns away a candidate whose HELLO fails the token check), so a
    // trainer that then exits is reported for what happened to it, not only for its exit code.
    auto refusals = std::make_shared<Refusals>();
    auto endpoint = pipe_->open(PipeSide::job, job_.timeouts.launch,
                                session::admit_hello(*token, [refusals](const std::string& why) {
                                  std::lock_guard refusal_lock(refusals->mutex);
                                  refusals->last = why;
                                }));
    if (!endpoint) {
      return fail(endpoint.error().code, site() + ": cannot open the pipe '" + pipe_id_ + "' (" + pipe_type_ +
                                             "): " + endpoint.error().message);
    }
    session::Bootstrap b;
    b.job_id = job_.job_id;
    b.job_name = job_.job_name;
    b.site = job_.site;
    b.token = *token;
    b.workspace = workspace_;
    b.pipe = session::ComponentRef{pipe_type_, plugin_file(pipe_type_), pipe_options_};
    b.pipe.options.set("address", pipe_->address());
    for (const auto& c : converters_) {
      b.converters.push_back(session::ComponentRef{c.type, plugin_file(c.type), c.options});
    }
    b.timeouts = job_.timeouts;
    b.max_resends = job_.max_resends;
    b.plugin_paths = job_.plugin_paths;
    b.config_json = job_.trainer_config_json;
    b.task_names = task_names_;
    auto bootstrap_file = workspace_ / "ember-bootstrap.json";
    std::error_code ec;
    std::filesystem::create_directories(workspace_, ec);
    if (auto written = session::write_bootstrap(bootstrap_file, b); !written) {
      return fail(std::move(written.error()));
    }

    LaunchSpec spec;
    spec.name = site() + ".trainer";
    spec.argv = resolve_command();
    for (const auto& entry : env_) {
      auto eq = entry.find('=');
      spec.env[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
    add_python_path(spec);
    spec.env["EMBER_BOOTSTRAP"] = bootstrap_file.string();
    spec.env["EMBER_SITE"] = job_.site;
    spec.env["EMBER_JOB_ID"] = job_.job_id;
    spec.cwd = workspace_;
    spec.gpus = gpus_;
    auto t0 = Clock::now();
    auto handle = launcher_->launch(spec);
    if (!handle) {
      return fail(handle.error().code,
                  site() + ": cannot launch the trainer '" + spec.argv[0] + "': " + handle.error().message);
    }
    Trainer trainer;
    trainer.handle = std::move(*handle);
    trainer.inbox = std::make_shared<session::BundleInbox>(wire::SafetensorsLimits{}, workspace_,
                                                           static_cast<std::uint64_t>(spill_over_));
    trainer.session = std::make_unique<session::Session>(session::Role::job, std::move(*endpoint), settings_,
                                                         log_, &events_);
    trainer.session->set_sink_factory(trainer.inbox->sink_factory());

    // The trainer may die before it says HELLO: watch it, so that shows at once instead of after `launch`.
    // A stop (the caller's token, stop(), the kernel's) ends the wait too, within one poll.
    std::optional<ExitStatus> early_exit;
    bool stopped = false;
    std::mutex early_mutex;
    {
      std::jthread watcher([&](std::stop_token watch_stop) {
        while (!watch_stop.stop_requested() && !halted(stop)) {
          auto status = trainer.handle->wait(25ms);
          if (status && *status) {
            std::lock_guard early_lock(early_mutex);
            early_exit = **status;
            trainer.session->close(Op::abort, "trainer exited");
            return;
          }
        }
        if (halted(stop)) {
          std::lock_guard early_lock(early_mutex);
          stopped = true;
          trainer.session->close(Op::abort, "job stopped");
        }
      });
      std::vector<std::pair<std::string, std::string>> accept_headers{{"site", job_.site},
                                                                      {"job_id", job_.job_id}};
      auto hello = trainer.session->accept(*token, accept_headers,
                                           [this](const session::PeerHello& h) { return converter_gap(h); });
      watcher.request_stop();
      watcher.join();
      if (!hello) {
        std::string why;
        if (hello.error().code == Errc::rejected) {
          // HELLO_REJECTED went out with the reason; the trainer ends on its own once it reads it.
          why = "the trainer was refused at session start: " + hello.error().message;
        } else {
          std::lock_guard early_lock(early_mutex);
          if (early_exit) {
            std::lock_guard refusal_lock(refusals->mutex);
            why = refusals->last.empty() ? "the trainer " + describe_exit(*early_exit) +
                                               " before HELLO (its output is in the site log)"
                                         : "the pipe refused the trainer's HELLO: " + refusals->last;
          } else if (stopped) {
            why = "the job was stopped before the trainer said HELLO";
          }
        }
        if (why.empty()) {
          why = hello.error().code == Errc::timeout ? "the trainer did not say HELLO within launch = " +
                                                          std::to_string(job_.timeouts.launch.count()) + " ms"
                                                    : hello.error().message;
        }
        auto status = hello.error().code == Errc::rejected ? await_exit(*trainer.handle, stop) : std::nullopt;
        trainer.session->close(Op::abort, why);
        if (!status) {
          if (auto ended = trainer.handle->stop(job_.timeouts.shutdown_grace)) {
            status = *ended;
          }
        }
        bool refused = hello.error().code == Errc::rejected;
        {
          std::lock_guard refusal_lock(refusals->mutex);
          refused = refused || !refusals->last.empty();
        }
        Errc code = stopped ? Errc::cancelled : refused ? Errc::rejected : Errc::peer_gone;
        return fail(code, site() + ": " + why + (status ? " [trainer " + describe_exit(*status) + "]" : ""));
      }
    }
    auto ready_ms = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
    log_->log(LogLevel::info, "trainer " + trainer.handle->id() + " ready in " +
                                  std::to_string(ready_ms / 1000) + "." +
                                  std::to_string(ready_ms % 1000 / 100) + " ms over " + pipe_type_ + " (" +
                                  trainer.session->peer() + ")");
    events_.publish(Event{"trainer.ready",
                          "executor.external-trainer",
                          {{"site", job_.site}, {"micros", std::to_string(ready_ms)}}});
    trainer_ = std::move(trainer);
    return ok();
  }

  // Converters declared in HELLO: a trainer that cannot convert what the job expects is refused at session
  // start (HELLO_REJECTED with this reason), not in the middle of a round.
  std::optional<std::string> converter_gap(const session::PeerHello& hello) const {
    std::vector<std::string> declared;
    for (const auto& [key, value] : hello.headers) {
      if (key == "converters") {
        declared = base::split(value, ',');
      }
    }
    for (const auto& c : converters_) {
      if (std::find(declared.begin(), declared.end(), c.type) == declared.end()) {
        return "the trainer does not speak " + c.type +
               " (HELLO declared: " + (declared.empty() ? std::string("none") : base::join(declared, ", ")) +
               ")";
      }
    }
    return std::nullopt;
  }

  // A refused trainer has HELLO_REJECTED and ends by itself: give it shutdown_grace to do so (its own
  // account of the refusal reaches its log) before the launcher stops it. A job that is stopping cuts the
  // wait short.
  std::optional<ExitStatus> await_exit(LaunchHandle& handle, const std::stop_token& stop) const {
    const auto deadline = Clock::now() + job_.timeouts.shutdown_grace;
    while (!halted(stop)) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      auto status = handle.wait(std::clamp<std::chrono::milliseconds>(left, 0ms, 100ms));
      if (status && *status) {
        return **status;
      }
      if (!status || left <= 0ms) {
        break;
      }
    }
    return std::nullopt;
  }

  std::filesystem::path plugin_file(const std::string& type) const {
    auto it = job_.plugin_files.find(type);
    return it != job_.plugin_files.end() ? it->second : std::filesystem::path{};
  }

  Error task_error(const Error& cause, const TaskData& task) {
    // What the trainer process did says more than the session's view of it.
    if (trainer_) {
      auto status = trainer_->handle->wait(200ms);
      if (status && *status) {
        return Error{Errc::peer_gone, site() + ": task '" + task.name + "' round " +
                                          std::to_string(task.round) + " failed: the trainer " +
                                          describe_exit(**status)};
      }
    }
    return Error{cause.code, site() + ": task '" + task.name + "' round " + std::to_string(task.round) +
                                 " failed: " + cause.message};
  }

  void forward_log(const session::Message& m, const TaskData& task) {
    auto kind = header_or(m, "kind", "text");
    if (kind == "metric") {
      auto key = header_or(m, "key");
      auto value = header_or(m, "value");
      // The round the trainer tagged the metric with (the task it was working on when it logged it): a LOG
      // sent late in a round may arrive during the next task. Untagged (older peers): the current task's.
      events_.publish(Event{"metrics.trainer",
                            "executor.external-trainer",
                            {{"site", job_.site},
                             {"key", key},
                             {"value", value},
                             {"step", header_or(m, "step")},
                             {"round", header_or(m, "round", std::to_string(task.round))}}});
      log_->log(LogLevel::debug, "metric " + key + " = " + value);
    } else {
      std::string text(reinterpret_cast<const char*>(m.payload.data()), m.payload.size());
      log_->log(LogLevel::info, "trainer: " + text);
    }
  }

  Result<TaskData> run_task(const TaskData& task, const std::stop_token& stop) {
    auto& s = *trainer_->session;
    // A stop closes the session at once: a send blocked on the trainer returns, and the loop below sees it.
    // Session::close() may come from several threads at once (it joins the session's threads once).
    // A stop closes the session at once: a send blocked on the trainer returns, and the loop below sees it.
    // Session::close() may come from several threads at once (it joins the session's threads once).
    auto cut = [&s] { s.close(Op::abort, "the job stopped"); };
    std::stop_callback on_task_stop(stop, cut);
    std::stop_callback on_halt(halt_.get_token(), cut);
    task_aborted_ = false;
    abort_task_requested_ = false;
    in_task_ = true;
    struct InTask {
      std::atomic<bool>& flag;
      ~InTask() { flag = false; }
    } in_task{in_task_};
    // This task alone was aborted: the trainer lives on. A result it still sends for it is turned down.
    auto abandon = [&]() -> Result<TaskData> {
      task_aborted_ = true;
      log_->log(LogLevel::info, "task '" + task.name + "' round " + std::to_string(task.round) +
                                    " aborted; the trainer lives on");
      return fail(Errc::cancelled, site() + ": task '" + task.name + "' round " + std::to_string(task.round) +
                                       " aborted (the trainer lives on)");
    };
    auto payload = session::task_payload(task);
    if (!payload) {
      return fail(payload.error().code,
                  site() + ": cannot encode task '" + task.name + "': " + payload.error().message);
    }
    wire::Headers headers{{"round", std::to_string(task.round)},
                          {"total_rounds", std::to_string(task.total_rounds)}};
    auto sent = s.send(Op::task_ready, task.name, headers, *payload);
    if (!sent && halted(stop)) {
      return fail(Errc::cancelled, site() + ": task '" + task.name + "' cancelled");
    }
    if (!sent) {
      return fail(task_error(sent.error(), task));
    }
    const std::uint64_t task_msg = *sent;
    bool accepted = false;
    auto deadline = Clock::now() + job_.timeouts.task_wait;
    while (true) {
      if (halted(stop)) {
        cut();
        return fail(Errc::cancelled, site() + ": task '" + task.name + "' cancelled");
      }
      if (abort_task_requested_.exchange(false)) {
        return abandon();
      }
      auto now = Clock::now();
      if (now >= deadline) {
        return fail(
            Errc::timeout,
            site() + ": task '" + task.name + "' round " + std::to_string(task.round) +
                (accepted ? ": no result within result_wait = " : ": not accepted within task_wait = ") +
                std::to_string((accepted ? job_.timeouts.result_wait : job_.timeouts.task_wait).count()) +
                " ms");
      }
      // Short waits, so the stop token and the trainer process are checked in between.
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      auto received = s.receive(std::clamp<std::chrono::milliseconds>(left, 1ms, 100ms));
      if (!received && halted(stop)) {
        return fail(Errc::cancelled, site() + ": task '" + task.name + "' cancelled");
      }
      if (!received) {
        return fail(task_error(received.error(), task));
      }
      if (!*received) {
        // Nothing yet: has the trainer process ended meanwhile?
        auto status = trainer_->handle->wait(0ms);
        if (status && *status) {
          return fail(task_error(Error{Errc::peer_gone, "trainer ended"}, task));
        }
        continue;
      }
      auto& m = **received;
      switch (m.op) {
        case Op::log:
          forward_log(m, task);
          break;
        case Op::task_accepted:
          if (m.req_id == task_msg) {
            accepted = true;
            deadline = Clock::now() + job_.timeouts.result_wait;
          }
          break;
        case Op::task_failed:
          if (m.req_id == task_msg) {
            declined_ = true;
            declined_final_ = header_or(m, "final") == "true";
            return fail(Errc::rejected, site() + ": the trainer " +
                                            (declined_final_ ? "failed" : "declined") + " task '" +
                                            task.name + "' round " + std::to_string(task.round) + ": " +
                                            header_or(m, "reason", "no reason given"));
          }
          break;
        case Op::result_ready: {
          if (m.req_id != task_msg) {
            // The result of an aborted task, late: turned down, so the trainer's send() returns and it
            // takes the task waiting for it.
            (void)trainer_->inbox->take(m);
            (void)s.send(Op::result_rejected, m.topic, {{"reason", "its task was aborted"}}, nullptr,
                         m.msg_id);
            break;
          }
          auto result = trainer_->inbox->take(m);
          std::string why;
          if (!result) {
            why = result.error().message;
          } else if (auto mismatch = check_layout_ ? session::layout_mismatch(task, *result) : std::nullopt) {
            why = *mismatch;
          }
          if (!why.empty()) {
            auto replied = s.send(Op::result_rejected, m.topic, {{"reason", why}}, nullptr, m.msg_id);
            (void)replied;  // the task fails either way; the reason is in the error below
            return fail(Errc::rejected, site() + ": result of task '" + task.name + "' round " +
                                            std::to_string(task.round) + " rejected: " + why);
          }
          if (auto replied = s.send(Op::result_accepted, m.topic, {}, nullptr, m.msg_id); !replied) {
            return fail(task_error(replied.error(), task));
          }
          result->name = task.name;
          result->round = task.round;
          result->total_rounds = task.total_rounds;
          return std::move(*result);
        }
        case Op::shutdown:
        case Op::abort:
          return fail(task_error(Error{Errc::closed, "the trainer ended the session: " +
                                                         header_or(m, "reason", "no reason given")},
                                 task));
        default:
          log_->log(LogLevel::debug, "ignoring " + std::string(wire::to_string(m.op)) + " during a task");
          break;
      }
    }
  }

  void end_trainer(const std::string& reason, bool failed) noexcept {
    if (!trainer_) {
      return;
    }
    gone_reason_ = reason;
    trainer_->session->close(failed ? Op::abort : Op::shutdown, reason);
    auto status = trainer_->handle->wait(job_.timeouts.shutdown_grace);
    std::optional<ExitStatus> final_status;
    if (status && *status) {
      final_status = **status;
    } else {
      auto stopped = trainer_->handle->stop(job_.timeouts.shutdown_grace);
      if (stopped) {
        final_status = *stopped;
      }
    }
    if (final_status) {
      log_->log(final_status->success() || failed ? LogLevel::info : LogLevel::warn,
                "trainer " + trainer_->handle->id() + " " + describe_exit(*final_status));
    }
    trainer_.reset();
  }

  bool task_aborted_ = false;  // the last task was aborted on its own (abort_task()), the trainer lives on
  std::atomic<bool> in_task_{false};
  std::atomic<bool> abort_task_requested_{false};
  std::shared_ptr<Logger> log_;
  EventBus& events_;
  Registry& registry_;
  std::filesystem::path workspace_;
  std::stop_token stop_;
  std::string launcher_id_;
  std::string pipe_id_;
  std::vector<std::string> command_;
  bool per_task_;
  std::vector<std::string> converter_ids_;
  std::vector<std::string> env_;
  std::vector<std::string> gpus_;
  bool check_layout_;
  std::int64_t spill_over_;
  session::TaskNames task_names_;

  JobInfo job_;
  session::Settings settings_;
  std::stop_source halt_;  // requested by stop(): ends any wait, and no call starts after it
  std::mutex mutex_;       // guards busy_ only; never held while waiting on the trainer
  std::condition_variable idle_;
  bool busy_ = false;  // a start() or execute() runs; it alone touches the members below meanwhile
  std::shared_ptr<Launcher> launcher_;
  std::shared_ptr<Pipe> pipe_;
  std::string pipe_type_;
  Options pipe_options_;
  std::vector<ConfiguredComponent> converters_;
  std::optional<Trainer> trainer_;
  std::string gone_reason_;
  // The last task failed because the trainer declined it (TASK_FAILED): it lives on, unless it said the
  // refusal was final (it is ending) or its session is gone.
  bool declined_ = false;
  bool declined_final_ = false;
  int launches_ = 0;
};

constexpr OptionSpec options[] = {
    {"command", OptionType::string_list, nullptr,
     "the training program and its arguments; a bare name is looked up in the job folder, then ember's "
     "example programs, then PATH; \"python3\" (or a first .py file) runs ember's Python with its package "
     "on PYTHONPATH and the script looked up in the job folder"},
    {.name = "launcher",
     .type = OptionType::string,
     .default_value = "launcher",
     .doc = "the id of the job's launcher component that starts the trainer",
     .refers_to = Kind::launcher},
    {.name = "pipe",
     .type = OptionType::string,
     .default_value = "pipe",
     .doc = "the id of the job's pipe component the session runs over",
     .refers_to = Kind::pipe},
    {.name = "launch",
     .type = OptionType::string,
     .default_value = "job",
     .doc = "\"job\": one trainer for the whole job; \"task\": one per task",
     .choices = "job|task"},
    {.name = "converters",
     .type = OptionType::string_list,
     .default_value = "[]",
     .doc = "ids of the job's converter components the trainer must load and declare in HELLO",
     .refers_to = Kind::converter},
    {.name = "env",
     .type = OptionType::string_list,
     .default_value = "[]",
     .doc = "NAME=VALUE entries added to the trainer's environment",
     .choices = "<name>=<any>"},
    {"gpus", OptionType::string_list, "[]", "GPU ids for the trainer (CUDA_VISIBLE_DEVICES)"},
    {"train_task", OptionType::string, "train", "the task name the trainer's is_train() answers true for"},
    {"evaluate_task", OptionType::string, "evaluate",
     "the task name the trainer's is_evaluate() answers true for"},
    {"submit_model_task", OptionType::string, "submit_model",
     "the task name the trainer's is_submit_model() answers true for"},
    {"check_layout", OptionType::boolean, "true",
     "reject a result whose tensor names, dtypes or shapes differ from the task's"},
    {.name = "spill_over",
     .type = OptionType::integer,
     .default_value = "268435456",
     .doc =
         "results of this many bytes or more stream into an unlinked file in the workspace and are mapped, "
         "not held in memory, so the client job's own memory stays bounded whatever the model's size (0: "
         "never)",
     .minimum = "0"},
};

constexpr ComponentDescriptor components[] = {
    component<ExternalTrainer>(
        "external-trainer",
        "Runs tasks in a training program launched by the job, over a pipe and the session "
        "protocol",
        options),
};

}  // namespace
}  // namespace ember::external_trainer

EMBER_PLUGIN(external_trainer, "external-trainer", "0.1.0",
             "Executor that hands tasks to an external trainer", "Apache-2.0",
             ember::external_trainer::components)
