#pragma once
// Finding plugin files and loading them: every check the plugin contract asks for, in its order, before
// any of the plugin's code runs.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ember/component.hpp>
#include <ember/plugin.hpp>
#include <ember/result.hpp>

namespace ember::kernel {

/// One option of a component's schema, copied out of the plugin's descriptor.
struct OptionInfo {
  std::string name;
  OptionType type = OptionType::string;
  std::optional<std::string> default_text;  ///< nullopt: the option is required
  std::string doc;
};

/// One component a loaded plugin provides.
struct ComponentInfo {
  Kind kind = Kind::pipe;
  std::string name;  ///< "socket"
  std::string type;  ///< "pipe.socket"
  std::string description;
  std::vector<OptionInfo> options;
  ComponentFactory factory = nullptr;

  const OptionInfo* find_option(std::string_view option) const;
};

/// A plugin that passed every check. `library` keeps the shared object mapped (null for a static plugin).
struct PluginInfo {
  std::filesystem::path path;  ///< the file, or "<static>" for a plugin linked into the program
  std::string name;
  std::string version;
  std::string description;
  std::string license;
  std::vector<ComponentInfo> components;
  std::shared_ptr<void> library;
};

/// A file that was looked at and refused, with why.
struct Refusal {
  std::filesystem::path path;
  Error error;
};

/// Every candidate plugin file (regular files ending in ".so") under `roots`, searched recursively: roots in
/// the order given, files sorted by path within each root, each file once (by canonical path). A root that
/// does not exist is skipped; one that cannot be read is reported in `refusals`.
std::vector<std::filesystem::path> discover_plugins(const std::vector<std::filesystem::path>& roots,
                                                    std::vector<Refusal>& refusals);

/// Loads one plugin file with RTLD_NOW | RTLD_LOCAL and validates its descriptor.
Result<PluginInfo> load_plugin(const std::filesystem::path& file);

/// Validates a descriptor (ABI version, then size, then build id, then contents) and copies it out.
/// `library` is what keeps the descriptor's memory alive; `origin` names it in errors.
Result<PluginInfo> read_descriptor(const PluginDescriptor* descriptor, const std::filesystem::path& origin,
                                   std::shared_ptr<void> library);

}  // namespace ember::kernel
