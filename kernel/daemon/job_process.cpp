#include "job_process.hpp"

#include <sys/stat.h>

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <ostream>

#include <nlohmann/json.hpp>

#include <ember/workflow.hpp>

#include "cell/cell.hpp"
#include "cell_link.hpp"
#include "client_job.hpp"
#include "codec.hpp"
#include "console_progress.hpp"
#include "exit_codes.hpp"
#include "federation.hpp"
#include "metrics_log.hpp"
#include "server_job.hpp"
#include "site_scope.hpp"

namespace ember::kernel::fed {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::span<const std::byte> bytes_of(const std::string& text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

// What both job processes do first: the kit, the token, the umask and the cell joined to the daemon.
struct Joined {
  SiteConfig site;
  std::unique_ptr<cell::Cell> cell;
};

Result<Joined> join(Kernel& kernel, const JobProcessOptions& o, const std::string& fqcn,
                    std::chrono::milliseconds bound, std::stop_token stop) {
  auto site = load_site(o.kit);
  if (!site) {
    return fail(std::move(site.error()));
  }
  auto token = read_token_file(o.token_file);
  if (!token) {
    return fail(std::move(token.error()));
  }
  auto config = cell_config(*site, fqcn, o.parent, "");
  if (!config) {
    return fail(std::move(config.error()));
  }
  config->parent_name = site->name;  // the daemon's listener presents the daemon's own certificate
  config->token = *token;
  auto cell = cell::Cell::start(std::move(*config), kernel.logs().get("cell", site->name));
  if (!cell) {
    return fail(std::move(cell.error()));
  }
  if (!(*cell)->wait_parent(bound, stop)) {
    const std::string why = (*cell)->parent_error();
    return fail(stop.stop_requested() ? Errc::cancelled : Errc::peer_gone,
                fqcn + ": cannot join " + o.parent + (why.empty() ? "" : ": " + why));
  }
  return Joined{std::move(*site), std::move(*cell)};
}

int code_for_start(const Error& error) {
  if (is_site_failure(error)) {
    return error.code == Errc::cancelled ? exit_code::interrupted : exit_code::job_failed;
  }
  const int code = exit_code_for(error);
  return code == exit_code::internal || code == exit_code::usage ? exit_code::plugin_error : code;
}

// The client job's state that its handlers share.
class ClientState {
 public:
  void task_started(const std::string& name) {
    std::lock_guard lock(mutex_);
    current_ = name;
  }
  void task_ended(const Result<TaskData>& result) {
    std::lock_guard lock(mutex_);
    if (!result) {
      errors_.push_back(json{{"task", current_},
                             {"code", std::string(to_string(result.error().code))},
                             {"message", result.error().message}});
    } else {
      ++done_;
    }
    current_.clear();
  }
  json run_info(const ClientJob& job) {
    std::lock_guard lock(mutex_);
    return json{{"site", job.site()},
                {"status", std::string(to_string(job.status()))},
                {"current_task", current_},
                {"tasks_done", done_},
                {"errors", errors_.size()}};
  }
  json errors() {
    std::lock_guard lock(mutex_);
    return errors_;
  }
  void reset_errors() {
    std::lock_guard lock(mutex_);
    errors_ = json::array();
  }

 private:
  std::mutex mutex_;
  std::string current_;
  std::uint64_t done_ = 0;
  json errors_ = json::array();
};

// Tells the server job's daemon what happens, as server.progress notifies (JSON, one event each).
class ProgressNotifier final : public ProgressObserver {
 public:
  ProgressNotifier(cell::Cell& cell, std::string job_id, std::shared_ptr<Logger> log)
      : cell_(cell), job_id_(std::move(job_id)), log_(std::move(log)) {}

  void round_started(const TaskData& task, std::size_t sites) override {
    send(json{{"event", "round_started"},
              {"task", task.name},
              {"round", task.round},
              {"total_rounds", task.total_rounds},
              {"sites", sites}});
  }
  void site_result(const TaskData& task, const SiteResult& result,
                   std::chrono::steady_clock::duration elapsed, std::size_t answered,
                   std::size_t total) override {
    json e{{"event", "site_result"},
           {"task", task.name},
           {"round", task.round},
           {"site", result.site},
           {"ok", result.result.has_value()},
           {"seconds", std::chrono::duration<double>(elapsed).count()},
           {"answered", answered},
           {"total", total}};
    if (!result.result) {
      e["error"] = result.result.error().message;
    }
    send(e);
  }
  void round_aggregated(std::uint64_t round, bool final,
                        const std::map<std::string, double>& metrics) override {
    json m = json::object();
    for (const auto& [k, v] : metrics) {
      m[k] = std::isfinite(v) ? json(v) : json(metric_text(v));
    }
    send(json{{"event", "round"}, {"round", round}, {"final", final}, {"metrics", m}});
  }
  void finished(const JobReport& report) override {
    json e{{"event", "finished"},
           {"ok", report.outcome.has_value()},
           {"bytes_moved", report.bytes_moved},
           {"seconds", std::chrono::duration<double>(report.elapsed).count()}};
    if (!report.outcome) {
      e["error"] = report.outcome.error().message;
    }
    send(e);
  }

 private:
  void send(json event) {
    event["job_id"] = job_id_;
    const std::string text = event.dump();
    log_->info(text);
    // A request, not a notify: the server has each event before the next one is sent, and the last one
    // before this process exits.
    auto sent = cell_.request("server", topic::progress, {{"job_id", job_id_}}, bytes_of(text), 5s);
    if (!sent.ok()) {
      log_->warn("progress not delivered to the server: " + sent.reason);
    }
  }

  cell::Cell& cell_;
  std::string job_id_;
  std::shared_ptr<Logger> log_;
};

}  // namespace

int run_client_job(Kernel& kernel, const JobProcessOptions& o, std::ostream& err) {
  ::umask(static_cast<mode_t>(kernel.settings().umask));
  std::stop_source stop;
  SignalStop signals(stop);
  auto probe = load_site(o.kit);
  if (!probe) {
    err << "ember run-job: " << probe.error().message << "\n";
    return exit_code_for(probe.error());
  }
  const std::string site_name = probe->name;
  const std::string fqcn = site_name + "." + o.job_id;
  auto scope = make_site_scope(kernel, o.job_dir, site_name, o.job_id, o.workspace);
  if (!scope) {
    err << "ember run-job: " << fqcn << ": " << scope.error().message << "\n";
    return scope.error().code == Errc::io_error ? exit_code::io_error : exit_code::invalid_config;
  }
  auto log = kernel.logs().get("job", site_name);
  const JobTimeouts timeouts = (*scope)->config().timeouts;
  auto executor_id = only_component((*scope)->config(), "executor", "a client job");
  if (!executor_id) {
    err << "ember run-job: " << executor_id.error().message << "\n";
    return exit_code::invalid_config;
  }
  auto made = ClientJob::create(site_name, std::move(*scope), *executor_id);
  if (!made) {
    err << "ember run-job: " << made.error().message << "\n";
    return code_for_start(made.error());
  }
  std::unique_ptr<ClientJob> job = std::move(*made);
  auto joined = join(kernel, o, fqcn, timeouts.launch, stop.get_token());
  if (!joined) {
    err << "ember run-job: " << joined.error().message << "\n";
    return joined.error().code == Errc::cancelled ? exit_code::interrupted : exit_code::unreachable;
  }
  cell::Cell& cell = *joined->cell;
  ClientState state;
  std::atomic<bool> ended{false};  // the server ended the job (rather than an abort)
  cell.handle(topic::run_info, [&](cell::Message&) { return json_reply(state.run_info(*job)); });
  cell.handle(topic::errors, [&](cell::Message&) { return json_reply(state.errors()); });
  cell.handle(topic::reset_errors, [&](cell::Message&) {
    state.reset_errors();
    return cell::Reply{};
  });
  cell.handle(topic::job_abort, [&](cell::Message& m) {
    const std::string* mode = m.header("mode");
    ended = mode != nullptr && *mode == "end";
    log->info(std::string(ended ? "the job was ended by " : "abort requested by ") + m.from);
    stop.request_stop();
    return cell::Reply{};
  });
  cell.handle(topic::job_abort_task, [&](cell::Message& m) {
    const bool aborted = job->abort_task();
    log->info("abort of the current task requested by " + m.from + (aborted ? "" : " (no task running)"));
    return json_reply(json{{"aborted", aborted}});
  });

  // Up: the trainer launched and in session. The site's executor reports `starting` until it hears this.
  auto started = job->start(stop.get_token());
  wire::Headers up{{"job_id", o.job_id}, {"state", started ? "started" : "failed"}};
  if (!started) {
    put_error(up, started.error());
  }
  if (auto told = cell.request(site_name, topic::job_up, up, {}, 5s); !told.ok()) {
    log->warn("could not tell " + site_name + " that the job is " + (started ? "up" : "not up") + ": " +
              told.reason);
  }
  if (!started) {
    err << "ember run-job: " << fqcn << ": could not start: " << started.error().message << "\n";
    job->stop();
    (void)cell.drain(1s);
    return code_for_start(started.error());
  }
  cell.handle(topic::task, [&](cell::Message& m) {
    auto task = decode_task(m.payload, fqcn + ": task from " + m.from);
    cell::Reply reply;
    if (!task) {
      put_error(reply.message.headers, task.error());
      return reply;
    }
    state.task_started(task->name);
    auto result = job->execute(*task, stop.get_token());
    state.task_ended(result);
    if (!result) {
      put_error(reply.message.headers, result.error());
      return reply;
    }
    auto bytes = encode_task(*result);
    if (!bytes) {
      put_error(reply.message.headers, bytes.error());
      return reply;
    }
    reply.message.payload = std::move(*bytes);
    return reply;
  });
  log->info(fqcn + ": started; waiting for tasks");
  while (sleep_for(1s, stop.get_token())) {
  }
  job->stop();
  (void)cell.drain(1s);
  cell.stop();
  if (ended) {
    return exit_code::ok;
  }
  return exit_code::interrupted;
}

int run_server_job(Kernel& kernel, const JobProcessOptions& o, std::ostream& err) {
  ::umask(static_cast<mode_t>(kernel.settings().umask));
  std::stop_source stop;
  SignalStop signals(stop);
  const std::string fqcn = "server." + o.job_id;
  auto probe = load_site(o.kit);
  if (!probe) {
    err << "ember run-job: " << probe.error().message << "\n";
    return exit_code_for(probe.error());
  }
  auto scope = make_site_scope(kernel, o.job_dir, probe->name, o.job_id, o.workspace);
  if (!scope) {
    err << "ember run-job: " << fqcn << ": " << scope.error().message << "\n";
    return scope.error().code == Errc::io_error ? exit_code::io_error : exit_code::invalid_config;
  }
  auto log = kernel.logs().get("job", probe->name);
  const JobTimeouts timeouts = (*scope)->config().timeouts;
  auto workflow_id = only_component((*scope)->config(), "workflow", "a server job");
  if (!workflow_id) {
    err << "ember run-job: " << workflow_id.error().message << "\n";
    return exit_code::invalid_config;
  }
  auto workflow = (*scope)->create_configured_as<Workflow>(*workflow_id);
  if (!workflow) {
    err << "ember run-job: " << fqcn << ": " << workflow.error().message << "\n";
    return code_for_start(workflow.error());
  }
  auto metrics = MetricsLog::open(o.workspace / "metrics.jsonl");
  if (!metrics) {
    err << "ember run-job: " << metrics.error().message << "\n";
    return exit_code::io_error;
  }
  auto joined = join(kernel, o, fqcn, timeouts.launch, stop.get_token());
  if (!joined) {
    err << "ember run-job: " << joined.error().message << "\n";
    return joined.error().code == Errc::cancelled ? exit_code::interrupted : exit_code::unreachable;
  }
  cell::Cell& cell = *joined->cell;
  cell.handle(topic::job_abort, [&](cell::Message& m) {
    log->info("abort requested by " + m.from);
    stop.request_stop();
    return cell::Reply{};
  });
  CellLink link(cell, o.job_id, o.sites, timeouts);
  ProgressNotifier notifier(cell, o.job_id, log);
  ServerJob server(*workflow, link, &notifier, metrics->get());
  JobReport report = server.run(stop.get_token());
  workflow->reset();
  (void)cell.drain(2s);
  cell.stop();
  if (signals.signal() != 0 || (!report.outcome && report.outcome.error().code == Errc::cancelled)) {
    return exit_code::interrupted;
  }
  if (!report.outcome) {
    err << "ember run-job: " << fqcn << ": the job failed: " << report.outcome.error().message << "\n";
    return exit_code::job_failed;
  }
  return exit_code::ok;
}

}  // namespace ember::kernel::fed
