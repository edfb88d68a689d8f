#include "cli.hpp"

#include <iomanip>
#include <ostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "config.hpp"
#include "exit_codes.hpp"
#include "kernel.hpp"
#include "provision_cmd.hpp"
#include "simulate.hpp"
#ifdef EMBER_WITH_FEDERATION
#include "daemons.hpp"
#include "job_process.hpp"
#endif

namespace ember::kernel {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct GlobalOptions {
  std::vector<std::string> plugin_paths;
  std::string site_file;
  bool no_default_plugins = false;
  bool no_env_path = false;
  std::string log_level;
  LogLevel default_level = LogLevel::warn;  ///< when neither the site nor --log-level sets one
};

// A config file that cannot be read is an I/O problem, not a missing plugin.
Error as_read_error(Error error) {
  if (error.code == Errc::not_found) {
    error.code = Errc::io_error;
  }
  return error;
}

std::string plural(std::size_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// Builds the kernel the way every command needs it: site file, then command-line paths, then the defaults.
Result<std::unique_ptr<Kernel>> make_kernel(const GlobalOptions& global) {
  KernelSettings settings;
  if (!global.site_file.empty()) {
    auto site = load_site(global.site_file);
    if (!site) {
      return fail(as_read_error(std::move(site.error())));
    }
    settings.plugin_paths = site->plugin_paths;
    settings.log = site->log;
    settings.umask = site->umask.value_or(settings.umask);
    settings.subs.site = site->name;
    if (!site->workspace.empty()) {
      settings.workspace = site->workspace;
      settings.subs.workspace = site->workspace.string();
    }
  }
  for (const auto& p : global.plugin_paths) {
    settings.plugin_paths.emplace_back(p);
  }
  settings.use_default_paths = !global.no_default_plugins;
  settings.use_env_path = !global.no_env_path;
  if (!settings.log.level_set && global.log_level.empty()) {
    settings.log.level = global.default_level;  // the CLI prints results; logs only say what went wrong
  }
  if (!global.log_level.empty()) {
    auto level = parse_level(global.log_level);
    if (!level) {
      return fail(Errc::invalid_argument, "--log-level: " + level.error().message);
    }
    settings.log.level = *level;
  }
  auto kernel = std::make_unique<Kernel>(std::move(settings));
  kernel->load_plugins();
  return kernel;
}

json option_json(const OptionInfo& option) {
  json j = {{"name", option.name},
            {"type", std::string(to_string(option.type))},
            {"required", !option.default_text.has_value()},
            {"doc", option.doc}};
  if (option.default_text) {
    j["default"] = *option.default_text;
  }
  if (!option.constraints.choices.empty()) {
    j["choices"] = option.constraints.choices;
  }
  if (option.minimum_text) {
    j["minimum"] = *option.minimum_text;
  }
  if (option.maximum_text) {
    j["maximum"] = *option.maximum_text;
  }
  if (option.refers_to != Kind{}) {
    j["refers_to"] = std::string(to_string(option.refers_to));
  }
  return j;
}

// What values an option takes, in words, for `plugins describe`.
std::string constraint_text(const OptionInfo& option) {
  std::string text = describe_constraints(option.constraints);
  if (option.refers_to != Kind{}) {
    text += (text.empty() ? "" : "; ") + std::string("the id of a ") +
            std::string(to_string(option.refers_to)) + " component of the job";
  }
  return text.empty() ? text : " [" + text + "]";
}

// The first word of the command line that is not an option or an option's value: the command asked for.
std::string command_word(int argc, const char* const* argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--plugin-path" || arg == "--site" || arg == "--log-level") {
      ++i;
    } else if (!arg.starts_with('-')) {
      return std::string(arg);
    }
  }
  return {};
}

json component_json(const ComponentInfo& component) {
  json options = json::array();
  for (const auto& o : component.options) {
    options.push_back(option_json(o));
  }
  return {{"type", component.type},
          {"kind", std::string(to_string(component.kind))},
          {"name", component.name},
          {"description", component.description},
          {"options", options}};
}

json plugins_json(const Kernel& kernel, ComponentRegistry& registry) {
  json paths = json::array();
  for (const auto& p : kernel.search_paths()) {
    paths.push_back(p.string());
  }
  json plugins = json::array();
  for (const auto& plugin : registry.plugins()) {
    json components = json::array();
    for (const auto& c : plugin.components) {
      components.push_back(component_json(c));
    }
    plugins.push_back({{"path", plugin.path.string()},
                       {"name", plugin.name},
                       {"version", plugin.version},
                       {"description", plugin.description},
                       {"license", plugin.license},
                       {"components", components}});
  }
  json refused = json::array();
  for (const auto& r : kernel.refusals()) {
    refused.push_back({{"path", r.path.string()},
                       {"code", std::string(to_string(r.error.code))},
                       {"message", r.error.message}});
  }
  return {{"abi_version", abi_version},
          {"build_id", EMBER_BUILD_ID},
          {"search_paths", paths},
          {"plugins", plugins},
          {"refused", refused}};
}

int list_plugins(Kernel& kernel, bool as_json, std::ostream& out) {
  auto& registry = kernel.registry();
  if (as_json) {
    out << plugins_json(kernel, registry).dump(2) << "\n";
  } else {
    out << "Search path (in order):\n";
    for (const auto& p : kernel.search_paths()) {
      out << "  " << p.string() << "\n";
    }
    out << "\nPlugins (" << registry.plugins().size() << "):\n";
    for (const auto& plugin : registry.plugins()) {
      out << "  " << plugin.name << " " << plugin.version << "  " << plugin.path.string() << "\n";
      for (const auto& c : plugin.components) {
        out << "    " << std::left << std::setw(28) << c.type << " " << c.description << "\n";
      }
    }
    if (!kernel.refusals().empty()) {
      out << "\nRefused (" << kernel.refusals().size() << "):\n";
      for (const auto& r : kernel.refusals()) {
        out << "  [" << to_string(r.error.code) << "] " << r.error.message << "\n";
      }
    }
  }
  return kernel.refusals().empty() ? exit_code::ok : exit_code::plugin_error;
}

int describe(Kernel& kernel, const std::string& type, bool as_json, std::ostream& out, std::ostream& err) {
  auto& registry = kernel.registry();
  const auto* component = registry.find(type);
  if (component == nullptr) {
    std::string known;
    for (const auto& t : registry.types()) {
      known += (known.empty() ? "" : ", ") + t;
    }
    err << "ember: no component of type '" << type << "' (known: " << (known.empty() ? "none" : known)
        << ")\n";
    return exit_code::plugin_error;
  }
  const auto* plugin = registry.provider(type);
  if (as_json) {
    json j = component_json(*component);
    j["plugin"] = {{"name", plugin->name}, {"version", plugin->version}, {"path", plugin->path.string()}};
    out << j.dump(2) << "\n";
    return exit_code::ok;
  }
  out << component->type << " - " << component->description << "\n";
  out << "  plugin: " << plugin->name << " " << plugin->version << " (" << plugin->path.string() << ")\n";
  if (component->options.empty()) {
    out << "  options: none\n";
    return exit_code::ok;
  }
  out << "  options:\n";
  for (const auto& o : component->options) {
    out << "    " << std::left << std::setw(22) << o.name << " " << std::setw(12) << to_string(o.type) << " "
        << std::setw(22) << (o.default_text ? "default " + *o.default_text : std::string("required")) << " "
        << o.doc << constraint_text(o) << "\n";
  }
  return exit_code::ok;
}

int validate(Kernel& kernel, const std::vector<std::string>& paths, std::ostream& out, std::ostream& err) {
  int code = exit_code::ok;
  for (const auto& path : paths) {
    std::error_code ec;
    fs::path file = fs::is_directory(path, ec) ? fs::path(path) / "job.toml" : fs::path(path);
    auto text = read_text_file(file);
    if (!text) {
      err << "ember: " << text.error().message << "\n";
      code = std::max(code, exit_code_for(as_read_error(text.error())));
      continue;
    }
    if (looks_like_site(*text)) {
      auto site = parse_site(*text, file.string(), file.parent_path());
      if (!site) {
        err << site.error().message << "\n";
        code = std::max(code, exit_code::invalid_config);
        continue;
      }
      out << "ok: " << file.string() << " (site '" << site->name << "', "
          << plural(site->plugin_paths.size(), "plugin path") << ")\n";
      continue;
    }
    auto job = parse_job(*text, file.string(), kernel.registry());
    if (!job) {
      err << job.error().message << "\n";
      code = std::max(code, exit_code::invalid_config);
      continue;
    }
    out << "ok: " << file.string() << " (job '" << job->name << "', "
        << plural(job->components.size(), "component") << ")\n";
  }
  return code;
}

}  // namespace

int run_cli(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  CLI::App app{"ember: a runtime for federated-learning jobs, built from plugins", "ember"};
  app.require_subcommand(1);
  GlobalOptions global;
  app.add_option("--plugin-path", global.plugin_paths, "Also search this folder for plugins (repeatable)");
  app.add_option("--site", global.site_file, "Site config (plugin paths, workspace, logging)");
  app.add_flag("--no-default-plugins", global.no_default_plugins,
               "Do not search the build tree or the install prefix");
  app.add_flag("--no-env-plugin-path", global.no_env_path, "Ignore EMBER_PLUGIN_PATH");
  app.add_option("--log-level", global.log_level,
                 "Default log level (trace, debug, info, warn, error, critical, off)");

  auto* plugins_cmd = app.add_subcommand("plugins", "List the plugins found, their components, and refusals");
  bool plugins_json_flag = false;
  plugins_cmd->add_flag("--json", plugins_json_flag, "Print JSON");
  auto* describe_cmd = plugins_cmd->add_subcommand("describe", "Print a component's options");
  std::string describe_type;
  bool describe_json = false;
  describe_cmd->add_option("type", describe_type, "Component type, e.g. pipe.socket")->required();
  describe_cmd->add_flag("--json", describe_json, "Print JSON");

  auto* validate_cmd =
      app.add_subcommand("validate", "Check job or site configs against the plugins present");
  std::vector<std::string> validate_paths;
  validate_cmd->add_option("paths", validate_paths, "Job folders, job.toml or site.toml files")->required();

  auto* version_cmd = app.add_subcommand("version", "Print the version, ABI version and build id");

  auto* simulate_cmd = app.add_subcommand(
      "simulate", "Run a job's server side and N client sites in one process, trainers as real processes");
  SimulateOptions sim;
  std::string sim_job;
  std::string sim_workspace;
  bool sim_quiet = false;
  bool sim_verbose = false;
  simulate_cmd->add_option("job", sim_job, "Job folder or job.toml")->required();
  simulate_cmd->add_option("--clients,-n", sim.clients, "Number of client sites (site-1 .. site-N)")
      ->capture_default_str();
  simulate_cmd->add_option("--workspace,-w", sim_workspace,
                           "Workspace folder (default ./ember-workspace/<job id>)");
  simulate_cmd->add_option("--job-id", sim.job_id, "Job id (default <job name>-<UTC time>)");
  simulate_cmd->add_flag("--quiet,-q", sim_quiet, "Print only the summary");
  simulate_cmd->add_flag("--verbose,-v", sim_verbose, "Also show info-level logs on the console");

  auto* provision_cmd = app.add_subcommand(
      "provision",
      "Write a project's root CA and a startup kit (certificate, key, kit.toml) per participant");
  std::string provision_project;
  std::string provision_out;
  bool provision_force = false;
  provision_cmd->add_option("project", provision_project, "Project file (project.toml)")->required();
  provision_cmd->add_option("--out,-o", provision_out, "Output folder (default ./<project name>-kits)");
  provision_cmd->add_flag("--force", provision_force, "Replace an earlier output folder");

#ifdef EMBER_WITH_FEDERATION
  // The federation: the two daemons, the job processes they start, and the admin commands.
  fed::DaemonOptions daemon;
  std::string daemon_kit;
  std::string daemon_workspace;
  auto* server_cmd = app.add_subcommand("server", "Run the federation's server from its startup kit");
  auto* client_cmd = app.add_subcommand("client", "Run a site's daemon from its startup kit");
  for (auto* cmd : {server_cmd, client_cmd}) {
    cmd->add_option("kit", daemon_kit, "Startup kit folder or its kit.toml (ember provision)")->required();
    cmd->add_option("--workspace,-w", daemon_workspace,
                    "Workspace folder (default: [site] workspace, else ./<name>-workspace)");
  }
  fed::JobProcessOptions job_process;
  std::string job_role;
  std::string job_sites;
  std::string jp_kit, jp_dir, jp_ws, jp_token;
  auto* run_job_cmd =
      app.add_subcommand("run-job", "Run one job process of a federation (started by the daemons)");
  run_job_cmd->group("");  // internal: not listed in --help
  run_job_cmd->add_option("role", job_role, "client or server")
      ->required()
      ->check(CLI::IsMember({"client", "server"}));
  run_job_cmd->add_option("--job-dir", jp_dir, "The deployed job folder")->required();
  run_job_cmd->add_option("--job-id", job_process.job_id, "The job id")->required();
  run_job_cmd->add_option("--workspace", jp_ws, "This site's folder of the job")->required();
  run_job_cmd->add_option("--parent", job_process.parent, "The daemon's listener")->required();
  run_job_cmd->add_option("--token-file", jp_token, "The job's token (0600)")->required();
  run_job_cmd->add_option("--sites", job_sites, "Server job: the sites, comma-separated");

  fed::AdminOptions admin;
  std::string admin_kit, admin_out;
  auto* submit_cmd = app.add_subcommand("submit", "Submit a job folder to the federation's server");
  submit_cmd->add_option("job", admin.job, "Job folder or its job.toml")->required();
  auto* status_cmd =
      app.add_subcommand("status", "The federation's sites and jobs, or one job's stages per site");
  status_cmd->add_option("job", admin.job, "A job id (default: every site and job)");
  status_cmd->add_flag("--watch", admin.watch, "Follow the job's rounds until it ends");
  auto* abort_cmd = app.add_subcommand("abort", "Abort a job on the server and every site");
  abort_cmd->add_option("job", admin.job, "The job id")->required();
  abort_cmd->add_flag("--task", admin.task, "Abort only the current task; the trainers live on");
  abort_cmd->add_option("--site", admin.site, "With --task: only on this site");
  auto* logs_cmd = app.add_subcommand("logs", "Print a job's log: the server job's, or a site's");
  logs_cmd->add_option("job", admin.job, "The job id")->required();
  logs_cmd->add_option("site", admin.site, "A site (default: the server job)");
  auto* download_cmd = app.add_subcommand("download", "Download a job's workspace: model, metrics, logs");
  download_cmd->add_option("job", admin.job, "The job id")->required();
  download_cmd->add_option("--out,-o", admin_out, "Folder to write (default ./<job id>)");
  std::vector<CLI::App*> admin_cmds{submit_cmd, status_cmd, abort_cmd, logs_cmd, download_cmd};
  for (auto* cmd : admin_cmds) {
    cmd->add_option("--kit", admin_kit, "An admin's startup kit folder or kit.toml (default $EMBER_KIT)");
    cmd->add_flag("--json", admin.json, "Print JSON");
  }
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return exit_code::ok;
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return exit_code::ok;
  } catch (const CLI::ParseError& e) {
    // Help of a subcommand arrives here too, as a parse "error" with exit code 0.
    if (e.get_exit_code() == 0) {
      const CLI::App* target = &app;
      for (auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
        if (sub->parsed()) {
          target = sub;
          for (auto* nested : sub->get_subcommands([](const CLI::App*) { return true; })) {
            if (nested->parsed()) {
              target = nested;
            }
          }
          break;
        }
      }
      out << target->help();
      return exit_code::ok;
    }
    // CLI11 reports an unknown command as a missing one: name it instead.
    if (std::string word = command_word(argc, argv); !word.empty()) {
      std::string known;
      bool is_known = false;
      for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
        known += (known.empty() ? "" : ", ") + sub->get_name();
        is_known = is_known || sub->get_name() == word;
      }
      if (!is_known) {
        err << "ember: unknown command '" << word << "' (commands: " << known
            << ")\nRun 'ember --help' for usage.\n";
        return exit_code::usage;
      }
    }
    err << "ember: " << e.what() << "\nRun 'ember --help' for usage.\n";
    return exit_code::usage;
  }

  if (version_cmd->parsed()) {
    out << "ember " EMBER_SDK_VERSION " (abi " << abi_version << ", build " EMBER_BUILD_ID ")\n";
    return exit_code::ok;
  }
  try {
    if (provision_cmd->parsed()) {
      return provision(provision_project, provision_out, provision_force, out, err);  // no plugins needed
    }
#ifdef EMBER_WITH_FEDERATION
    for (auto* cmd : admin_cmds) {
      if (cmd->parsed()) {
        admin.command = cmd->get_name();
        admin.kit = admin_kit;
        admin.out = admin_out;
        return fed::run_admin(admin, out, err);  // no plugins needed
      }
    }
    if ((server_cmd->parsed() || client_cmd->parsed() || run_job_cmd->parsed()) && global.log_level.empty()) {
      global.default_level = LogLevel::info;
    }
#endif
    if (simulate_cmd->parsed() && global.log_level.empty()) {
      global.default_level = LogLevel::info;  // the site logs get info; the console shows warnings only
    }
    auto kernel = make_kernel(global);
    if (!kernel) {
      err << "ember: " << kernel.error().message << "\n";
      return exit_code_for(kernel.error());
    }
    if (describe_cmd->parsed()) {
      return describe(**kernel, describe_type, describe_json, out, err);
    }
    if (plugins_cmd->parsed()) {
      return list_plugins(**kernel, plugins_json_flag, out);
    }
    if (validate_cmd->parsed()) {
      return validate(**kernel, validate_paths, out, err);
    }
    if (simulate_cmd->parsed()) {
      if (!sim_verbose && global.log_level.empty()) {
        (*kernel)->logs().set_console_level(LogLevel::warn);
      }
      sim.job = sim_job;
      sim.workspace = sim_workspace;
      sim.progress = !sim_quiet;
      return simulate(**kernel, sim, out, err);
    }
#ifdef EMBER_WITH_FEDERATION
    if (server_cmd->parsed() || client_cmd->parsed()) {
      daemon.kit = daemon_kit;
      daemon.workspace = daemon_workspace;
      return server_cmd->parsed() ? fed::run_server(**kernel, daemon, out, err)
                                  : fed::run_client(**kernel, daemon, out, err);
    }
    if (run_job_cmd->parsed()) {
      // The console is the daemon's capture of this process's output: the job's own log file has the rest.
      (*kernel)->logs().set_console_level(LogLevel::warn);
      job_process.kit = global.site_file;
      job_process.job_dir = jp_dir;
      job_process.workspace = jp_ws;
      job_process.token_file = jp_token;
      for (std::size_t start = 0; start < job_sites.size();) {
        auto comma = job_sites.find(',', start);
        if (comma == std::string::npos) {
          comma = job_sites.size();
        }
        if (comma > start) {
          job_process.sites.push_back(job_sites.substr(start, comma - start));
        }
        start = comma + 1;
      }
      return job_role == "server" ? fed::run_server_job(**kernel, job_process, err)
                                  : fed::run_client_job(**kernel, job_process, err);
    }
#endif
  } catch (const std::exception& e) {
    err << "ember: internal error: " << e.what() << "\n";
    return exit_code::internal;
  }
  return exit_code::usage;
}

}  // namespace ember::kernel
