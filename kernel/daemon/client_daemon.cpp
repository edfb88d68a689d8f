// `ember client KIT`: a site's daemon. It joins the server, listens for its own jobs on the internal
// listener, and runs what the server deploys through the job executor.

#include <sys/stat.h>

#include <ostream>

#include <nlohmann/json.hpp>

#include "codec.hpp"
#include "daemons.hpp"
#include "exit_codes.hpp"
#include "federation.hpp"
#include "job_executor.hpp"
#include "workspace.hpp"

namespace ember::kernel::fed {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

}  // namespace

fs::path kit_file(const fs::path& kit) {
  std::error_code ec;
  return fs::is_directory(kit, ec) ? kit / "kit.toml" : kit;
}

// Loads a daemon's kit and checks its role; the workspace it runs in, made private and locked.
struct DaemonSetup {
  SiteConfig site;
  fs::path workspace;
  std::optional<WorkspaceLock> lock;
};

Result<DaemonSetup> setup_daemon(Kernel& kernel, const DaemonOptions& o, std::string_view role,
                                 std::string_view command) {
  std::error_code ec;
  fs::path file = kit_file(o.kit);
  if (auto absolute = fs::canonical(file, ec); !ec) {
    file = absolute;  // the job processes run in their own folders
  }
  auto site = load_site(file);
  if (!site) {
    return fail(std::move(site.error()));
  }
  if (site->role != role) {
    return fail(Errc::invalid_config, file.string() + ": site.role is '" + site->role + "': `ember " +
                                          std::string(command) + "` needs a kit with role = \"" +
                                          std::string(role) + "\" (ember provision writes one)");
  }
  if (!site->cell) {
    return fail(Errc::invalid_config, file.string() + ": no [cell] table (ember provision writes one)");
  }
  ::umask(static_cast<mode_t>(kernel.settings().umask));
  DaemonSetup setup;
  setup.workspace = !o.workspace.empty()       ? o.workspace
                    : !site->workspace.empty() ? site->workspace
                                               : fs::current_path() / (site->name + "-workspace");
  if (auto made = make_private_dir(setup.workspace); !made) {
    return fail(std::move(made.error()));
  }
  setup.workspace = fs::canonical(setup.workspace, ec);
  auto lock = WorkspaceLock::acquire(setup.workspace);
  if (!lock) {
    return fail(std::move(lock.error()));
  }
  setup.lock.emplace(std::move(*lock));
  if (auto added = kernel.logs().add_file(setup.workspace / "daemon.log"); !added) {
    return fail(std::move(added.error()));
  }
  setup.site = std::move(*site);
  return setup;
}

int setup_exit_code(const Error& error) {
  return error.code == Errc::not_found ? exit_code::io_error : exit_code_for(error);
}

int run_client(Kernel& kernel, const DaemonOptions& o, std::ostream& out, std::ostream& err) {
  auto setup = setup_daemon(kernel, o, "client", "client");
  if (!setup) {
    err << "ember client: " << setup.error().message << "\n";
    return setup_exit_code(setup.error());
  }
  const SiteConfig& site = setup->site;
  auto log = kernel.logs().get("client");
  std::stop_source stop;
  SignalStop signals(stop);
  if (site.cell->server.empty()) {
    err << "ember client: " << site.file.string() << ": cell.server: where the server is, is missing\n";
    return exit_code::invalid_config;
  }
  auto config = cell_config(site, site.name, site.cell->server,
                            site.cell->internal_listen.empty() ? "127.0.0.1:0" : site.cell->internal_listen);
  if (!config) {
    err << "ember client: " << config.error().message << "\n";
    return exit_code::invalid_config;
  }
  config->handler_threads = 16;  // aborts wait for a job's grace; queries must not queue behind them
  auto cell = cell::Cell::start(std::move(*config), kernel.logs().get("cell"), link_logger(log));
  if (!cell) {
    err << "ember client: " << cell.error().message << "\n";
    return exit_code_for(cell.error());
  }
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  JobExecutor executor(kernel, **cell, site, exe, setup->workspace, log);
  std::vector<std::string> reaped = executor.reap_leftovers();
  for (const auto& r : reaped) {
    log->warn("job " + r + " was left by an earlier daemon on this workspace; reaped");
    err << "ember client: job " << r << " was left by an earlier daemon; reaped\n";
  }

  auto& c = **cell;
  c.handle(topic::deploy, [&](cell::Message& m) {
    if (m.from != "server") {
      return cell::Reply::error(cell::Rc::handler_error, site.name + ": only the server deploys jobs");
    }
    auto deployed = executor.deploy(header_or_empty(m, "job_id"), header_or_empty(m, "token"), m.payload);
    return deployed ? cell::Reply{} : error_reply(deployed.error());
  });
  c.handle(topic::site_abort, [&](cell::Message& m) {
    if (m.from != "server") {
      return cell::Reply::error(cell::Rc::handler_error, site.name + ": only the server aborts jobs");
    }
    executor.abort(header_or_empty(m, "job_id"), header_or_empty(m, "mode") == "end");
    return text_reply(executor.run_info(header_or_empty(m, "job_id")).dump());
  });
  c.handle(topic::site_abort_task, [&](cell::Message& m) {
    if (m.from != "server") {
      return cell::Reply::error(cell::Rc::handler_error, site.name + ": only the server aborts tasks");
    }
    return text_reply(json{{"aborted", executor.abort_task(header_or_empty(m, "job_id"))}}.dump());
  });
  c.handle(topic::site_status, [&](cell::Message& m) {
    const std::string& job = header_or_empty(m, "job_id");
    if (job.empty()) {
      return text_reply(json{{"site", site.name}, {"jobs", executor.list()}}.dump());
    }
    json info = executor.run_info(job);
    if (header_or_empty(m, "errors") == "1") {
      info["errors"] = executor.errors(job);
    }
    if (header_or_empty(m, "reset_errors") == "1") {
      executor.reset_errors(job);
    }
    return text_reply(info.dump());
  });
  c.handle(topic::site_logs, [&](cell::Message& m) {
    auto text = executor.log_text(header_or_empty(m, "job_id"), 16u << 20);
    return text ? text_reply(*text) : error_reply(text.error());
  });
  c.handle(topic::job_up, [&](cell::Message& m) {
    const std::string& job = header_or_empty(m, "job_id");
    if (m.from != site.name + "." + job) {
      return cell::Reply{};  // only the job itself says it is up
    }
    executor.job_up(job, header_or_empty(m, "state") == "started", get_error(m.headers));
    return cell::Reply{};
  });

  out << "ember client: " << site.name << " joining the server at " << site.cell->server
      << "; its jobs join on " << c.listen_address() << "; workspace " << setup->workspace.string() << "\n"
      << std::flush;
  log->info(site.name + ": started, workspace " + setup->workspace.string());
  // Jobs an earlier daemon left are told to the server as failed, once it is reachable: their outcome would
  // otherwise be lost.
  while (sleep_for(reaped.empty() ? 1s : 200ms, stop.get_token())) {
    if (!reaped.empty() && c.wait_parent(0ms)) {
      for (const auto& r : reaped) {
        const std::string job = r.substr(0, r.find(' '));
        const std::string text = json{
            {"job_id", job},
            {"site", site.name},
            {"state", "failed"},
            {"aborted", false},
            {"exit", nullptr},
            {"error", "the site's daemon stopped while the job ran; restarted, it reaped the job: " +
                          r}}.dump();
        (void)c.request("server", topic::job_state, {{"job_id", job}},
                        std::as_bytes(std::span(text.data(), text.size())), query_timeout);
      }
      reaped.clear();
    }
  }
  log->info(site.name + ": stopping (signal " + std::to_string(signals.signal()) + "): ending its jobs");
  executor.stop_all();
  c.stop();
  return exit_code::ok;
}

}  // namespace ember::kernel::fed
