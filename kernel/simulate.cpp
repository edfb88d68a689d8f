#include "simulate.hpp"

#include <signal.h>

#include <condition_variable>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <ostream>
#include <set>
#include <sstream>
#include <thread>

#include <ember/executor.hpp>
#include <ember/workflow.hpp>
#include <nlohmann/json.hpp>

#include "config.hpp"
#include "duration.hpp"
#include "exit_codes.hpp"
#include "job_scope.hpp"

namespace ember::kernel {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string utc_stamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%d-%H%M%S", &tm);
  return text;
}

std::string seconds(Clock::duration d) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << std::chrono::duration<double>(d).count() << " s";
  return s.str();
}

std::string bytes_text(std::uint64_t n) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1);
  if (n >= (1u << 30)) {
    s << static_cast<double>(n) / (1u << 30) << " GiB";
  } else if (n >= (1u << 20)) {
    s << static_cast<double>(n) / (1u << 20) << " MiB";
  } else {
    s << static_cast<double>(n) / 1024 << " KiB";
  }
  return s.str();
}

std::string number(double v) {
  std::ostringstream s;
  s << std::setprecision(4) << v;
  return s.str();
}

std::uint64_t params_bytes(const TaskData& task) {
  std::uint64_t n = 0;
  for (const auto& t : task.params) {
    n += t.bytes.size();
  }
  return n;
}

// Blocks SIGINT and SIGTERM in this thread and every thread it starts, and turns them into a stop request.
class SignalStop {
 public:
  explicit SignalStop(std::stop_source& stop) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    ::pthread_sigmask(SIG_BLOCK, &set_, &previous_);
    waiter_ = std::jthread([this, &stop](std::stop_token token) {
      timespec tick{0, 100'000'000};
      while (!token.stop_requested()) {
        int sig = ::sigtimedwait(&set_, nullptr, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
          signal_ = sig;
          stop.request_stop();
        }
      }
    });
  }
  ~SignalStop() {
    waiter_.request_stop();
    waiter_.join();
    ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  int signal() const { return signal_; }

 private:
  sigset_t set_{};
  sigset_t previous_{};
  std::atomic<int> signal_{0};
  std::jthread waiter_;
};

struct Site {
  std::string name;
  fs::path workspace;
  std::unique_ptr<JobScope> scope;
  std::shared_ptr<Executor> executor;
  std::optional<Error> start_error;
};

class SimHost final : public WorkflowHost {
 public:
  SimHost(std::vector<Site>& sites, std::stop_token stop, std::ostream& out, bool progress,
          fs::path metrics_file)
      : sites_(sites),
        stop_(std::move(stop)),
        out_(out),
        progress_(progress),
        metrics_(metrics_file, std::ios::app) {}

  std::vector<std::string> sites() const override {
    std::vector<std::string> names;
    for (const auto& s : sites_) {
      names.push_back(s.name);
    }
    return names;
  }

  Result<void> broadcast(const TaskData& task, const std::vector<std::string>& targets,
                         std::chrono::milliseconds timeout,
                         const std::function<void(SiteResult&&)>& on_result) override {
    flush_round();
    last_task_total_ = task.total_rounds;
    struct Shared {
      std::mutex mutex;
      std::condition_variable done;
      std::set<std::string> pending;
      bool open = true;
    };
    auto shared = std::make_shared<Shared>();
    const auto started = Clock::now();
    // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict for `"/" + std::to_string(...)` here.
    std::string label = task.name;
    if (task.total_rounds != 0 && task.round >= task.total_rounds) {
      label.append(" (after round ").append(std::to_string(task.total_rounds)).append(")");
    } else {
      label.append(" round ").append(std::to_string(task.round + 1));
      if (task.total_rounds != 0) {
        label.append("/").append(std::to_string(task.total_rounds));
      }
    }
    if (progress_) {
      std::lock_guard lock(out_mutex_);
      out_ << label << ": sending " << bytes_text(params_bytes(task)) << " to " << targets.size() << " site"
           << (targets.size() == 1 ? "" : "s") << "\n"
           << std::flush;
    }
    std::size_t total = targets.size();
    std::size_t answered = 0;
    auto report_one = [&, total](SiteResult&& r) {
      ++answered;
      if (r.result) {
        bytes_moved_ += params_bytes(task) + params_bytes(*r.result);
      }
      if (progress_) {
        std::lock_guard lock(out_mutex_);
        out_ << "  " << label << "  " << r.site << "  ";
        if (r.result) {
          out_ << "ok  " << seconds(Clock::now() - started);
          for (const auto& [k, v] : r.result->metrics) {
            out_ << "  " << k << "=" << number(v);
          }
        } else {
          out_ << "FAILED  " << r.result.error().message;
        }
        out_ << "  [" << answered << "/" << total << " done]\n" << std::flush;
      }
      on_result(std::move(r));
    };
    std::vector<std::jthread> workers;
    for (const auto& name : targets) {
      Site* site = find(name);
      if (site == nullptr) {
        std::lock_guard lock(shared->mutex);
        report_one(SiteResult{name, fail(Errc::not_found, "no site '" + name + "' in this job")});
        continue;
      }
      if (site->start_error) {
        std::lock_guard lock(shared->mutex);
        report_one(SiteResult{name, fail(*site->start_error)});
        continue;
      }
      {
        std::lock_guard lock(shared->mutex);
        shared->pending.insert(name);
      }
      workers.emplace_back([site, shared, &task, &report_one](std::stop_token stop) {
        auto result = site->executor->execute(task, stop);
        std::lock_guard lock(shared->mutex);
        if (shared->open && shared->pending.erase(site->name) == 1) {
          report_one(SiteResult{site->name, std::move(result)});
        }
        shared->done.notify_all();
      });
    }
    auto deadline = Clock::now() + timeout;
    {
      std::unique_lock lock(shared->mutex);
      while (!shared->pending.empty() && !stop_.stop_requested() && Clock::now() < deadline) {
        shared->done.wait_for(lock, 100ms);
      }
      for (const auto& name : shared->pending) {
        report_one(SiteResult{
            name, stop_.stop_requested()
                      ? fail(Errc::cancelled, name + ": the job was interrupted")
                      : fail(Errc::timeout, name + ": no answer within " + format_duration(timeout))});
      }
      shared->pending.clear();
      shared->open = false;
    }
    for (auto& w : workers) {
      w.request_stop();
    }
    workers.clear();  // joins: executors end a cancelled task within their close bound
    if (stop_.stop_requested()) {
      return fail(Errc::cancelled, "interrupted");
    }
    return ok();
  }

  void report(const std::string& key, double value, std::uint64_t round) override {
    last_total_ = last_task_total_;
    write_metric("server", key, value, round, std::nullopt);
    std::lock_guard lock(out_mutex_);
    rounds_[round][key] = value;
    last_round_ = round;
    have_round_ = true;
  }

  void write_metric(const std::string& source, const std::string& key, double value, std::uint64_t round,
                    std::optional<std::string> step) {
    nlohmann::json line{{"time", std::time(nullptr)}, {"source", source}, {"round", round}, {"key", key}};
    line["value"] = value;
    if (step) {
      line["step"] = *step;
    }
    std::lock_guard lock(metrics_mutex_);
    metrics_ << line.dump() << "\n" << std::flush;
  }

  // Prints the metrics the workflow reported for the round that just ended.
  void flush_round() {
    std::lock_guard lock(out_mutex_);
    if (!have_round_ || printed_through_ == static_cast<std::int64_t>(last_round_)) {
      return;
    }
    printed_through_ = static_cast<std::int64_t>(last_round_);
    if (!progress_) {
      return;
    }
    if (last_total_ != 0 && last_round_ >= last_total_) {
      out_ << "final model evaluated:";
    } else {
      out_ << "round " << last_round_ + 1 << " aggregated:";
    }
    for (const auto& [k, v] : rounds_[last_round_]) {
      out_ << "  " << k << "=" << number(v);
    }
    out_ << "\n" << std::flush;
  }

  const std::map<std::uint64_t, std::map<std::string, double>>& rounds() const { return rounds_; }
  std::uint64_t bytes_moved() const { return bytes_moved_; }

 private:
  Site* find(const std::string& name) {
    for (auto& s : sites_) {
      if (s.name == name) {
        return &s;
      }
    }
    return nullptr;
  }

  std::vector<Site>& sites_;
  std::stop_token stop_;
  std::ostream& out_;
  bool progress_;
  std::mutex out_mutex_;
  std::mutex metrics_mutex_;
  std::ofstream metrics_;
  std::map<std::uint64_t, std::map<std::string, double>> rounds_;
  std::uint64_t last_round_ = 0;
  std::uint64_t last_total_ = 0;       // total_rounds of the task the reported round belongs to
  std::uint64_t last_task_total_ = 0;  // total_rounds of the last task broadcast
  bool have_round_ = false;
  std::int64_t printed_through_ = -1;
  std::uint64_t bytes_moved_ = 0;
};

// Finds the one component of `kind` in the job; an error names what is missing or ambiguous.
Result<std::string> only_component(const JobConfig& job, std::string_view kind) {
  std::vector<std::string> ids;
  for (const auto& c : job.components) {
    if (c.type.starts_with(std::string(kind) + ".")) {
      ids.push_back(c.id);
    }
  }
  if (ids.size() != 1) {
    return fail(Errc::invalid_config, job.file.string() + ": a simulated job needs exactly one " +
                                          std::string(kind) + " component, it has " +
                                          std::to_string(ids.size()));
  }
  return ids.front();
}

}  // namespace

int simulate(Kernel& kernel, const SimulateOptions& options, std::ostream& out, std::ostream& err) {
  if (options.clients < 1 || options.clients > 256) {
    err << "ember simulate: --clients must be between 1 and 256\n";
    return exit_code::usage;
  }
  auto& registry = kernel.registry();
  auto probe = load_job(options.job, registry);
  if (!probe) {
    err << "ember simulate: " << probe.error().message << "\n";
    return probe.error().code == Errc::not_found ? exit_code::io_error : exit_code::invalid_config;
  }
  auto workflow_id = only_component(*probe, "workflow");
  auto executor_id = only_component(*probe, "executor");
  if (!workflow_id || !executor_id) {
    err << "ember simulate: " << (!workflow_id ? workflow_id.error() : executor_id.error()).message << "\n";
    return exit_code::invalid_config;
  }
  const std::string job_id = options.job_id.empty() ? probe->name + "-" + utc_stamp() : options.job_id;
  fs::path ws =
      options.workspace.empty() ? fs::current_path() / "ember-workspace" / job_id : options.workspace;
  std::error_code ec;
  fs::create_directories(ws, ec);
  if (ec) {
    err << "ember simulate: " << ws.string() << ": cannot create the workspace: " << ec.message() << "\n";
    return exit_code::io_error;
  }
  ws = fs::canonical(ws, ec);
  auto& logs = kernel.logs();
  auto log = logs.get("simulate");

  auto make_scope = [&](const std::string& site, const fs::path& dir) -> Result<std::unique_ptr<JobScope>> {
    std::error_code mk;
    fs::create_directories(dir, mk);
    if (mk) {
      return fail(Errc::io_error, dir.string() + ": cannot create: " + mk.message());
    }
    if (auto added = logs.add_site_file(site, dir / "log.txt"); !added) {
      return fail(std::move(added.error()));
    }
    Substitutions subs{site, job_id, dir.string()};
    auto config = load_job(options.job, registry, subs);
    if (!config) {
      return fail(std::move(config.error()));
    }
    auto info = job_info(*config, job_id, site, kernel.search_paths());
    info.program_paths.push_back(default_program_dir());
    return std::make_unique<JobScope>(registry, std::move(*config), std::move(info), dir, subs, site);
  };

  log->info("job " + job_id + ": " + std::to_string(options.clients) + " clients, workspace " + ws.string());
  out << "ember simulate: job " << probe->name << " (" << job_id << "), " << options.clients << " client"
      << (options.clients == 1 ? "" : "s") << "\nworkspace: " << ws.string() << "\n"
      << std::flush;

  std::stop_source stop;
  SignalStop signals(stop);
  const auto t0 = Clock::now();

  // Sites: each with its own workspace, log file, substitutions and executor; started in parallel.
  std::vector<Site> sites(static_cast<std::size_t>(options.clients));
  for (int i = 0; i < options.clients; ++i) {
    auto& site = sites[static_cast<std::size_t>(i)];
    site.name = "site-" + std::to_string(i + 1);
    site.workspace = ws / site.name;
    auto scope = make_scope(site.name, site.workspace);
    if (!scope) {
      err << "ember simulate: " << site.name << ": " << scope.error().message << "\n";
      return scope.error().code == Errc::io_error ? exit_code::io_error : exit_code::invalid_config;
    }
    site.scope = std::move(*scope);
    auto executor = site.scope->create_configured_as<Executor>(*executor_id);
    if (!executor) {
      err << "ember simulate: " << site.name << ": " << executor.error().message << "\n";
      return exit_code::plugin_error;
    }
    site.executor = *executor;
  }
  auto server_scope = make_scope("server", ws / "server");
  if (!server_scope) {
    err << "ember simulate: server: " << server_scope.error().message << "\n";
    return exit_code::invalid_config;
  }
  auto workflow = (*server_scope)->create_configured_as<Workflow>(*workflow_id);
  if (!workflow) {
    err << "ember simulate: server: " << workflow.error().message << "\n";
    return exit_code::plugin_error;
  }

  SimHost host(sites, stop.get_token(), out, options.progress, ws / "metrics.jsonl");
  auto metrics_sub = kernel.events().subscribe("metrics.trainer", [&host](const Event& e) {
    auto get = [&](const char* key) -> std::string {
      auto it = e.fields.find(key);
      return it != e.fields.end() ? it->second : std::string();
    };
    char* end = nullptr;
    auto value_text = get("value");
    double value = std::strtod(value_text.c_str(), &end);
    auto step = get("step");
    host.write_metric(get("site"), get("key"), value, std::strtoull(get("round").c_str(), nullptr, 10),
                      step.empty() ? std::nullopt : std::optional<std::string>(step));
  });
  {
    std::vector<std::jthread> starters;
    for (auto& site : sites) {
      starters.emplace_back([&site] {
        auto started = site.executor->start();
        if (!started) {
          site.start_error = started.error();
        }
      });
    }
  }
  std::size_t started_sites = 0;
  for (const auto& site : sites) {
    if (site.start_error) {
      out << site.name << ": could not start: " << site.start_error->message << "\n";
    } else {
      ++started_sites;
    }
  }
  out << started_sites << "/" << sites.size() << " sites ready in " << seconds(Clock::now() - t0) << "\n"
      << std::flush;

  Result<void> outcome = ok();
  if (stop.stop_requested()) {
    outcome = fail(Errc::cancelled, "interrupted");
  } else {
    try {
      outcome = (*workflow)->run(host);
    } catch (const std::exception& e) {
      outcome = fail(Errc::internal, std::string("the workflow threw: ") + e.what());
    }
  }
  host.flush_round();

  // The end: every trainer told SHUTDOWN (or ABORT), waited for, stopped. Sites end in parallel.
  {
    std::vector<std::jthread> stoppers;
    for (auto& site : sites) {
      stoppers.emplace_back([&site] { site.executor->stop(); });
    }
  }
  for (auto& site : sites) {
    site.executor.reset();
  }
  workflow->reset();
  const auto elapsed = Clock::now() - t0;

  // Summary.
  out << "\n== " << probe->name << " (" << job_id << ") " << (outcome ? "finished" : "FAILED") << " in "
      << seconds(elapsed) << ", " << options.clients << " client" << (options.clients == 1 ? "" : "s") << ", "
      << bytes_text(host.bytes_moved()) << " of params moved\n";
  // One row per round: clients that answered, the round's time, then the metrics the workflow averaged.
  // Trainers report val_* for the model they received, so row r shows the global model round r started from;
  // the "final" row is the model after the last round.
  std::set<std::string> keys;
  for (const auto& [round, metrics] : host.rounds()) {
    for (const auto& [k, v] : metrics) {
      if (k != "clients_ok" && k != "clients_failed" && k != "round_seconds") {
        keys.insert(k);
      }
    }
  }
  if (!host.rounds().empty()) {
    auto width = [](const std::string& k) {
      return static_cast<int>(std::max<std::size_t>(k.size() + 2, 12));
    };
    auto cell = [](const std::map<std::string, double>& m, const std::string& k) {
      auto it = m.find(k);
      return it != m.end() ? number(it->second) : std::string("-");
    };
    out << std::left << std::setw(8) << "round" << std::setw(10) << "clients" << std::setw(10) << "seconds";
    for (const auto& k : keys) {
      out << std::setw(width(k)) << k;
    }
    out << "\n";
    for (const auto& [round, metrics] : host.rounds()) {
      bool final_row = !metrics.contains("round_seconds") && round + 1 == host.rounds().size();
      auto ok_it = metrics.find("clients_ok");
      auto failed_it = metrics.find("clients_failed");
      std::string clients =
          ok_it == metrics.end()
              ? "-"
              : number(ok_it->second) + "/" +
                    number(ok_it->second + (failed_it != metrics.end() ? failed_it->second : 0.0));
      out << std::left << std::setw(8) << (final_row ? std::string("final") : std::to_string(round + 1))
          << std::setw(10) << clients << std::setw(10) << cell(metrics, "round_seconds");
      for (const auto& k : keys) {
        out << std::setw(width(k)) << cell(metrics, k);
      }
      out << "\n";
    }
    out << "(val_* of round r: the global model round r started from; final: the model after the last "
           "round)\n";
  }
  auto model = ws / "server" / "model.safetensors";
  if (fs::exists(model, ec)) {
    out << "final model: " << model.string() << "\n";
  }
  out << "logs: " << ws.string() << "/<site>/log.txt   metrics: " << (ws / "metrics.jsonl").string() << "\n";
  if (signals.signal() != 0) {
    err << "ember simulate: interrupted by signal " << signals.signal() << "\n";
    return exit_code::interrupted;
  }
  if (!outcome) {
    err << "ember simulate: the job failed: " << outcome.error().message << "\n";
    return exit_code::job_failed;
  }
  return exit_code::ok;
}

}  // namespace ember::kernel
