#include "simulate.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <iomanip>
#include <ostream>
#include <set>
#include <thread>

#include <ember/workflow.hpp>

#include "client_job.hpp"
#include "config.hpp"
#include "console_progress.hpp"
#include "exit_codes.hpp"
#include "in_process_link.hpp"
#include "job_scope.hpp"
#include "metrics_log.hpp"
#include "server_job.hpp"
#include "signal_stop.hpp"
#include "site_scope.hpp"
#include "workspace.hpp"

namespace ember::kernel {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Starts every site in parallel; each start returns early once `stop` is requested.
void start_all(const std::vector<std::unique_ptr<ClientJob>>& sites, std::stop_token stop) {
  std::vector<std::jthread> starters;
  for (const auto& site : sites) {
    starters.emplace_back([&site, stop] { (void)site->start(stop); });
  }
}

// Ends every site in parallel (each waits its trainer's grace).
void stop_all(const std::vector<std::unique_ptr<ClientJob>>& sites) {
  std::vector<std::jthread> stoppers;
  for (const auto& site : sites) {
    stoppers.emplace_back([&site] { site->stop(); });
  }
}

// Prints why each site that did not start failed. Returns the first error that means the job cannot run
// anywhere (a config or plugin error, not one site's trainer), naming the job file and the site once.
std::optional<Error> report_starts(const std::vector<std::unique_ptr<ClientJob>>& sites,
                                   const fs::path& job_file, std::ostream& out) {
  std::optional<Error> fatal;
  for (const auto& site : sites) {
    auto error = site->error();
    if (!error) {
      continue;
    }
    out << site->site() << ": could not start: " << error->message << "\n";
    if (!is_site_failure(*error) && !fatal) {
      fatal = error;
      // Executors name their site at the front of most messages; say it once.
      const std::string prefix = site->site() + ": ";
      fatal->message = job_file.string() + ": " +
                       (error->message.starts_with(prefix) ? error->message : prefix + error->message);
    }
  }
  return fatal;
}

std::size_t failed_sites(const std::vector<std::unique_ptr<ClientJob>>& sites) {
  return static_cast<std::size_t>(
      std::count_if(sites.begin(), sites.end(), [](const auto& site) { return site->error().has_value(); }));
}

// One row per round: clients that answered, the round's time, then the metrics the workflow averaged.
// Trainers report val_* for the model they received, so row r shows the global model round r started from;
// the "final" row is the model after the last round.
void print_rounds(const RoundMetrics& rounds, std::ostream& out) {
  std::set<std::string> keys;
  for (const auto& [round, metrics] : rounds) {
    for (const auto& [k, v] : metrics) {
      if (k != "clients_ok" && k != "clients_failed" && k != "round_seconds") {
        keys.insert(k);
      }
    }
  }
  if (rounds.empty()) {
    return;
  }
  auto width = [](const std::string& k) { return static_cast<int>(std::max<std::size_t>(k.size() + 2, 12)); };
  auto cell = [](const std::map<std::string, double>& m, const std::string& k) {
    auto it = m.find(k);
    return it != m.end() ? metric_text(it->second) : std::string("-");
  };
  out << std::left << std::setw(8) << "round" << std::setw(10) << "clients" << std::setw(10) << "seconds";
  for (const auto& k : keys) {
    out << std::setw(width(k)) << k;
  }
  out << "\n";
  for (const auto& [round, metrics] : rounds) {
    bool final_row = !metrics.contains("round_seconds") && round + 1 == rounds.size();
    auto ok_it = metrics.find("clients_ok");
    auto failed_it = metrics.find("clients_failed");
    std::string clients =
        ok_it == metrics.end()
            ? "-"
            : metric_text(ok_it->second) + "/" +
                  metric_text(ok_it->second + (failed_it != metrics.end() ? failed_it->second : 0.0));
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

// The end of a run: what it did, the table of rounds, and where its files are.
void print_summary(std::ostream& out, const JobConfig& job, const std::string& job_id, int clients,
                   const JobReport& report, Clock::duration elapsed, const fs::path& ws) {
  out << "\n== " << job.name << " (" << job_id << ") " << (report.outcome ? "finished" : "FAILED") << " in "
      << seconds_text(elapsed) << ", " << clients << " client" << (clients == 1 ? "" : "s") << ", "
      << bytes_text(report.bytes_moved) << " of params moved\n";
  print_rounds(report.rounds, out);
  std::error_code ec;
  auto model = ws / "server" / "model.safetensors";
  if (fs::exists(model, ec)) {
    out << "final model: " << model.string() << "\n";
  }
  out << "logs: " << ws.string() << "/<site>/log.txt   metrics: " << (ws / "metrics.jsonl").string() << "\n";
}

}  // namespace

int simulate(Kernel& kernel, const SimulateOptions& options, std::ostream& out, std::ostream& err) {
  if (options.clients < 1 || options.clients > 256) {
    err << "ember simulate: --clients must be between 1 and 256\n";
    return exit_code::usage;
  }
  if (!options.job_id.empty()) {
    if (auto checked = check_job_id(options.job_id); !checked) {
      err << "ember simulate: " << checked.error().message << "\n";
      return exit_code::usage;
    }
  }
  auto& registry = kernel.registry();
  auto probe = load_job(options.job, registry);
  if (!probe) {
    err << "ember simulate: " << probe.error().message << "\n";
    return probe.error().code == Errc::invalid_config ? exit_code::invalid_config : exit_code::io_error;
  }
  auto workflow_id = only_component(*probe, "workflow", "a simulated job");
  auto executor_id = only_component(*probe, "executor", "a simulated job");
  if (!workflow_id || !executor_id) {
    err << "ember simulate: " << (!workflow_id ? workflow_id.error() : executor_id.error()).message << "\n";
    return exit_code::invalid_config;
  }
  const std::string job_id = options.job_id.empty() ? probe->name + "-" + utc_stamp() : options.job_id;
  // A site's files are its own: folders 0700, files 0600 (logs, metrics, checkpoints, the model) unless the
  // site file's `umask` says otherwise; the trainers inherit the same mask.
  ::umask(static_cast<mode_t>(kernel.settings().umask));
  fs::path ws =
      options.workspace.empty() ? fs::current_path() / "ember-workspace" / job_id : options.workspace;
  if (auto made = make_private_dir(ws, 0777); !made) {
    err << "ember simulate: " << made.error().message << "\n";
    return exit_code::io_error;
  }
  std::error_code ec;
  ws = fs::canonical(ws, ec);
  auto lock = WorkspaceLock::acquire(ws);
  if (!lock) {
    err << "ember simulate: " << lock.error().message << "\n";
    return exit_code::io_error;
  }
  auto& logs = kernel.logs();
  auto log = logs.get("simulate");

  auto make_scope = [&](const std::string& site, const fs::path& dir) {
    return make_site_scope(kernel, options.job, site, job_id, dir);
  };
  auto metrics = MetricsLog::open(ws / "metrics.jsonl");
  if (!metrics) {
    err << "ember simulate: " << metrics.error().message << "\n";
    return exit_code::io_error;
  }

  log->info("job " + job_id + ": " + std::to_string(options.clients) + " clients, workspace " + ws.string());
  out << "ember simulate: job " << probe->name << " (" << job_id << "), " << options.clients << " client"
      << (options.clients == 1 ? "" : "s") << "\nworkspace: " << ws.string() << "\n"
      << std::flush;

  std::stop_source stop;
  SignalStop signals(stop);
  const auto t0 = Clock::now();

  // Sites: each with its own workspace, log file, substitutions and executor.
  std::vector<std::unique_ptr<ClientJob>> sites;
  for (int i = 0; i < options.clients; ++i) {
    std::string name = "site-" + std::to_string(i + 1);
    auto scope = make_scope(name, ws / name);
    if (!scope) {
      err << "ember simulate: " << name << ": " << scope.error().message << "\n";
      return scope.error().code == Errc::io_error ? exit_code::io_error : exit_code::invalid_config;
    }
    auto site = ClientJob::create(name, std::move(*scope), *executor_id);
    if (!site) {
      err << "ember simulate: " << site.error().message << "\n";
      return exit_code_for(site.error());
    }
    sites.push_back(std::move(*site));
  }
  auto server_scope = make_scope("server", ws / "server");
  if (!server_scope) {
    err << "ember simulate: server: " << server_scope.error().message << "\n";
    return server_scope.error().code == Errc::io_error ? exit_code::io_error : exit_code::invalid_config;
  }
  auto workflow = (*server_scope)->create_configured_as<Workflow>(*workflow_id);
  if (!workflow) {
    err << "ember simulate: server: " << workflow.error().message << "\n";
    return exit_code_for(workflow.error());
  }

  // A trainer's metric carries the round of the task it belongs to (the executor tags it) and its step.
  auto metrics_sub =
      kernel.events().subscribe("metrics.trainer", [&metrics](const Event& e) { (*metrics)->record(e); });

  start_all(sites, stop.get_token());
  auto fatal = report_starts(sites, probe->file, out);
  out << (sites.size() - failed_sites(sites)) << "/" << sites.size() << " sites ready in "
      << seconds_text(Clock::now() - t0) << "\n"
      << std::flush;

  JobReport report;
  if (fatal) {
    // The job cannot run anywhere (a missing or wrong component, a pipe or launcher that cannot be made):
    // it ends before its first round, with the error's own exit code.
    stop_all(sites);
    err << "ember simulate: the job cannot run: " << fatal->message << "\n";
    const int code = exit_code_for(*fatal);
    return code == exit_code::internal || code == exit_code::usage ? exit_code::plugin_error : code;
  }
  std::vector<ClientJob*> reachable;
  for (const auto& site : sites) {
    reachable.push_back(site.get());
  }
  InProcessLink link(reachable);
  std::optional<ConsoleProgress> console;
  if (options.progress) {
    console.emplace(out);
  }
  ServerJob server(*workflow, link, console ? &*console : nullptr, metrics->get());
  report = server.run(stop.get_token());

  // The end: every trainer told SHUTDOWN (or ABORT), waited for, stopped. Sites end in parallel.
  stop_all(sites);
  sites.clear();
  workflow->reset();

  print_summary(out, *probe, job_id, options.clients, report, Clock::now() - t0, ws);
  if (signals.signal() != 0) {
    err << "ember simulate: interrupted by signal " << signals.signal() << "\n";
    return exit_code::interrupted;
  }
  if (!report.outcome) {
    err << "ember simulate: the job failed: " << report.outcome.error().message << "\n";
    return exit_code::job_failed;
  }
  return exit_code::ok;
}

}  // namespace ember::kernel
