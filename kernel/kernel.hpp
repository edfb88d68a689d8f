#pragma once
// The kernel object: owns logging, the event bus and the registry, discovers and loads plugins.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ember/plugin.hpp>

#include "event_bus.hpp"
#include "logging.hpp"
#include "option_values.hpp"
#include "plugin_loader.hpp"
#include "registry.hpp"

namespace ember::kernel {

/// Where to look for plugins and how to log.
struct KernelSettings {
  std::vector<std::filesystem::path> plugin_paths;  ///< from the site's TOML and the command line, first
  bool use_env_path = true;                         ///< then EMBER_PLUGIN_PATH (colon-separated)
  bool use_default_paths = true;  ///< then the build tree when run uninstalled, else the install prefix
  LogSettings log;                ///< EMBER_LOG is applied on top
  std::filesystem::path workspace = ".";
  Substitutions subs;
  unsigned umask = 077;  ///< the site's mask for the files and folders of a run (logs, metrics, checkpoints)
};

/// The build tree's plugin folder when this program runs from the build tree, else the installed one.
std::filesystem::path default_plugin_dir();
/// Where example trainers live: the build tree's examples/ when run from it, else the installed libexec
/// folder.
std::filesystem::path default_program_dir();
/// Where the Python package `ember` is: the build tree's sdk/python when run from it, else the installed
/// site-packages folder; empty when ember was built without Python support.
std::filesystem::path default_python_dir();
/// The Python interpreter the package was built for (/usr/bin/python3); empty without Python support.
std::filesystem::path python_interpreter();

class Kernel {
 public:
  /// Sets up logging (settings.log, then EMBER_LOG) and the search path; loads nothing yet.
  explicit Kernel(KernelSettings settings);
  ~Kernel();
  Kernel(const Kernel&) = delete;
  Kernel& operator=(const Kernel&) = delete;

  /// The plugin search path, in priority order.
  const std::vector<std::filesystem::path>& search_paths() const noexcept { return search_paths_; }
  /// Discovers every plugin on the search path and registers what each file's .ember_plugin section
  /// describes; refusals are kept, not fatal. No plugin library is loaded (see ComponentRegistry::create).
  void load_plugins();
  /// Reads and registers one plugin file (already discovered or named by the caller), without loading it.
  Result<void> load_file(const std::filesystem::path& file);
  /// Registers a plugin linked into the program (built with EMBER_PLUGIN_STATIC).
  Result<void> add_static(const PluginDescriptor* descriptor, const std::string& origin);

  /// The settings the kernel was made with.
  const KernelSettings& settings() const noexcept { return settings_; }
  ComponentRegistry& registry() noexcept { return *registry_; }
  LocalEventBus& events() noexcept { return *events_; }
  LogHub& logs() noexcept { return *logs_; }
  /// Files that were refused, with why, in discovery order.
  const std::vector<Refusal>& refusals() const noexcept { return refusals_; }
  /// A problem with EMBER_LOG, if it could not be parsed (the kernel then logs at the configured level).
  const std::optional<Error>& log_spec_error() const noexcept { return log_spec_error_; }

 private:
  KernelSettings settings_;
  std::optional<Error> log_spec_error_;
  std::unique_ptr<LogHub> logs_;
  std::unique_ptr<LocalEventBus> events_;
  std::unique_ptr<ComponentRegistry> registry_;
  std::vector<std::filesystem::path> search_paths_;
  std::vector<Refusal> refusals_;
  std::shared_ptr<Logger> log_;
};

}  // namespace ember::kernel
