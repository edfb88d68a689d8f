// launcher.process: runs a program on this machine as a new session and process group, with a chosen
// environment and working directory; logs its stdout and stderr line by line; stops the whole group
// (SIGTERM, a grace, SIGKILL, then a check that nothing survived); keeps the exit status exactly.
//
// spawner.hpp   the long-lived thread that forks, and the child's side of fork/exec
// process_handle.hpp   the handle: output, reaping, wait and stop

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <string_view>

#include <ember/launcher.hpp>
#include <ember/plugin.hpp>

#include "process_handle.hpp"
#include "spawner.hpp"

extern char** environ;

namespace ember::process_launcher {
using base::has_nul;
using base::valid_env_name;

namespace {

// What inherit_env = false keeps of the launcher's environment.
constexpr std::array<const char*, 5> minimal_env = {"PATH", "HOME", "LANG", "TMPDIR", "USER"};
// The PATH a program is looked up in when its environment has none (that of execvp, with /usr/local).
constexpr std::string_view default_path = "/usr/local/bin:/usr/bin:/bin";

class ProcessLauncher final : public Launcher {
 public:
  struct Settings {
    bool inherit_env = true;
    std::vector<std::pair<std::string, std::string>> env;
    OutputPolicy output;
    std::filesystem::path workspace;
  };

  static Result<std::unique_ptr<ProcessLauncher>> create(const ComponentContext& context) {
    const Options& options = context.options();
    Settings settings;
    settings.inherit_env = options.boolean("inherit_env");
    auto env = base::env_entries(options);
    if (!env) {
      return fail(std::move(env.error()));
    }
    settings.env = std::move(*env);
    auto output = base::output_policy(options, context.logger_ptr());
    if (!output) {
      return fail(std::move(output.error()));
    }
    settings.output = std::move(*output);
    settings.workspace = context.workspace();
    return std::unique_ptr<ProcessLauncher>(new ProcessLauncher(std::move(settings)));
  }

  Result<std::unique_ptr<LaunchHandle>> launch(const LaunchSpec& spec) override {
    pid_t started = -1;
    try {
      auto child_plan = plan(spec);
      if (!child_plan) {
        return fail(std::move(child_plan.error()));
      }
      auto shared_spawner = spawner();
      auto child = shared_spawner->spawn(*child_plan, spec.name);
      if (!child) {
        return fail(std::move(child.error()));
      }
      started = child->pid;
      settings_.output.logger->info("started '" + spec.name + "' as pid " + std::to_string(started) + " (" +
                                    spec.argv.front() + ")");
      return std::unique_ptr<LaunchHandle>(std::make_unique<ProcessHandle>(
          std::move(shared_spawner), std::move(*child), spec.name, settings_.output));
    } catch (const std::exception& e) {
      if (started > 0) {
        // Running, but no handle will ever own it (the handle's thread could not start): end it here.
        kill(-started, SIGKILL);
        while (waitpid(started, nullptr, 0) < 0 && errno == EINTR) {
        }
      }
      return fail(Errc::internal, "launcher.process: '" + spec.name + "': " + e.what());
    }
  }

 private:
  explicit ProcessLauncher(Settings settings) : settings_(std::move(settings)) {}

  // The spawner thread starts with the first launch, not when the component is created.
  std::shared_ptr<Spawner> spawner() {
    std::lock_guard lock(mutex_);
    if (!spawner_) {
      spawner_ = Spawner::shared();
    }
    return spawner_;
  }

  std::map<std::string, std::string> base_environment() const {
    std::map<std::string, std::string> env;
    if (settings_.inherit_env) {
      for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
        std::string_view text(*entry);
        auto eq = text.find('=');
        if (eq != std::string_view::npos && eq > 0) {
          env.emplace(text.substr(0, eq), text.substr(eq + 1));  // the first of duplicates wins, as in getenv
        }
      }
    } else {
      for (const char* name : minimal_env) {
        if (const char* value = std::getenv(name)) {
          env.emplace(name, value);
        }
      }
    }
    return env;
  }

  // Everything the child needs, validated and resolved here, before the fork.
  Result<ChildPlan> plan(const LaunchSpec& spec) const {
    std::string where = "launcher.process: '" + spec.name + "': ";
    if (spec.argv.empty() || spec.argv.front().empty()) {
      return fail(Errc::invalid_argument, where + "no program to run (argv is empty)");
    }
    for (std::size_t i = 0; i < spec.argv.size(); ++i) {
      if (has_nul(spec.argv[i])) {
        return fail(Errc::invalid_argument, where + "argv[" + std::to_string(i) + "] contains a NUL byte");
      }
    }
    auto env = base_environment();
    for (const auto& [name, value] : settings_.env) {
      env[name] = value;
    }
    if (!spec.gpus.empty()) {
      std::string devices;
      for (const auto& gpu : spec.gpus) {
        if (gpu.empty() || gpu.find(',') != std::string::npos || has_nul(gpu)) {
          return fail(Errc::invalid_argument, where + "GPU id '" + gpu + "' is empty or contains ','");
        }
        devices += (devices.empty() ? "" : ",") + gpu;
      }
      env["CUDA_VISIBLE_DEVICES"] = devices;
    }
    for (const auto& [name, value] : spec.env) {
      if (!valid_env_name(name) || has_nul(value)) {
        return fail(Errc::invalid_argument, where + "environment variable '" + name +
                                                "' has an invalid name or a NUL byte in its value");
      }
      env[name] = value;
    }
    ChildPlan out;
    out.argv = spec.argv;
    for (const auto& [name, value] : env) {
      out.env.push_back(name + "=" + value);
    }
    // A relative cwd is taken inside the workspace, like the empty one.
    out.cwd = (settings_.workspace / spec.cwd).string();
    if (has_nul(out.cwd)) {
      return fail(Errc::invalid_argument, where + "the working directory contains a NUL byte");
    }
    const std::string& program = spec.argv.front();
    if (program.find('/') != std::string::npos) {
      out.candidates.push_back(program);
    } else {
      auto path = env.find("PATH");
      std::string_view dirs = path != env.end() ? std::string_view(path->second) : default_path;
      while (true) {
        auto colon = dirs.find(':');
        std::string_view dir = dirs.substr(0, colon);
        out.candidates.push_back((dir.empty() ? std::string(".") : std::string(dir)) + "/" + program);
        if (colon == std::string_view::npos) {
          break;
        }
        dirs.remove_prefix(colon + 1);
      }
    }
    return out;
  }

  Settings settings_;
  std::mutex mutex_;
  std::shared_ptr<Spawner> spawner_;
};

}  // namespace
}  // namespace ember::process_launcher

namespace {

constexpr ember::OptionSpec process_options[] = {
    {"inherit_env", ember::OptionType::boolean, "true",
     "start from the launcher's environment; false keeps only PATH, HOME, LANG, TMPDIR and USER"},
    ember::base::env_option,
    ember::base::stdout_level_option,
    ember::base::stderr_level_option,
    ember::base::max_line_bytes_option,
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<ember::process_launcher::ProcessLauncher>(
        "process", "Runs a program as its own session and process group on this machine", process_options),
};

}  // namespace

EMBER_PLUGIN(process_launcher, "process-launcher", "0.1.0",
             "A launcher for local programs: process groups, captured output, exact exit status",
             "Apache-2.0", components)
