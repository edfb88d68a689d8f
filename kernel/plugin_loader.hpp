#pragma once
// Finding plugin files and reading what they provide without running any of their code: the kernel reads a
// plugin's ".ember_plugin" ELF section (libelf) and checks it in the contract's order; the library itself
// is dlopen()ed only when one of its components is first created (load_library).

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <ember/component.hpp>
#include <ember/plugin.hpp>
#include <ember/result.hpp>

#include "option_values.hpp"

namespace ember::kernel {

/// One option of a component's schema, copied out of the plugin's section or descriptor.
struct OptionInfo {
  std::string name;
  OptionType type = OptionType::string;
  std::optional<std::string> default_text;  ///< nullopt: the option is required
  std::string doc;
  std::optional<std::string> choices_text;  ///< as declared ("job|task")
  std::optional<std::string> minimum_text;  ///< as declared ("1")
  std::optional<std::string> maximum_text;  ///< as declared
  Kind refers_to = Kind{};                  ///< non-zero: names a job component of this kind
  OptionConstraints constraints;            ///< parsed from the three texts
};

/// One component a plugin provides.
struct ComponentInfo {
  Kind kind = Kind::pipe;
  std::string name;  ///< "socket"
  std::string type;  ///< "pipe.socket"
  std::string description;
  std::vector<OptionInfo> options;
  ComponentFactory factory = nullptr;  ///< null until the plugin's library is loaded

  const OptionInfo* find_option(std::string_view option) const;
};

/// A plugin that passed every check of its section. `library` keeps the shared object mapped once it is
/// loaded (it stays null for a static plugin and for a plugin none of whose components was created yet).
struct PluginInfo {
  std::filesystem::path path;  ///< the file, or "<static>" for a plugin linked into the program
  std::string name;
  std::string version;
  std::string description;
  std::string license;
  std::vector<ComponentInfo> components;
  std::shared_ptr<void> library;
  bool loaded = false;              ///< the factories are known (a static plugin, or a loaded library)
  std::optional<Error> load_error;  ///< why loading the library failed, kept so it is tried once
};

/// A file that was looked at and refused, with why.
struct Refusal {
  std::filesystem::path path;
  Error error;
};

/// How far discovery looks under one search folder: plugins sit at most this deep (build/plugins/pipe/
/// memory/x.so is depth 2), and a folder that is not a plugin folder ("/") is cut short, not scanned.
inline constexpr int max_scan_depth = 3;
/// How many folder entries discovery examines under one search folder before it stops.
inline constexpr std::size_t max_scan_entries = 10000;

/// Every candidate plugin file (regular files ending in ".so") under `roots`: roots in the order given,
/// files sorted by path within each root, each file once (by canonical path). Folders deeper than
/// max_scan_depth, hidden folders and Meson's ".p" folders are not entered; a root whose scan examined
/// max_scan_entries entries is cut there. A root that cannot be read, and a cut scan, are reported in
/// `refusals`; a root that does not exist is skipped.
std::vector<std::filesystem::path> discover_plugins(const std::vector<std::filesystem::path>& roots,
                                                    std::vector<Refusal>& refusals);

/// Reads a plugin file's ".ember_plugin" section with libelf and validates it (magic, ABI version, then
/// size, then build id, then contents). Nothing of the file is loaded or run.
Result<PluginInfo> load_plugin(const std::filesystem::path& file);

/// Validates the bytes of a ".ember_plugin" section (bounded by their size); `origin` names it in errors.
Result<PluginInfo> parse_plugin_info(std::span<const std::byte> section, const std::filesystem::path& origin);

/// dlopen()s a plugin read by load_plugin (RTLD_NOW | RTLD_LOCAL), calls its entry function and checks that
/// the descriptor it returns says what the section said; then fills in the factories and `library`.
/// A descriptor that disagrees with the section is Errc::invalid_descriptor.
Result<void> load_library(PluginInfo& plugin);

/// Validates a runtime descriptor (ABI version, then size, then build id, then contents) and copies it out,
/// factories included; when it points at its info section, checks that the two agree. `library` is what
/// keeps the descriptor's memory alive; `origin` names it in errors.
Result<PluginInfo> read_descriptor(const PluginDescriptor* descriptor, const std::filesystem::path& origin,
                                   std::shared_ptr<void> library);

}  // namespace ember::kernel
