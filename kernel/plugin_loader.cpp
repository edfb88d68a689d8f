#include "plugin_loader.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <system_error>

#include <boost/dll/shared_library.hpp>

#include "option_values.hpp"

namespace ember::kernel {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t max_text = 4096;
constexpr std::uint32_t max_components = 256;
constexpr std::uint32_t max_options = 256;
constexpr const char* entry_symbol = "ember_plugin";

std::string where(const fs::path& origin) {
  return origin.string() + ": ";
}

// Reads a C string the plugin supplied, bounded so a missing terminator cannot run away.
std::optional<std::string> bounded(const char* text) {
  if (text == nullptr) {
    return std::nullopt;
  }
  std::size_t length = strnlen(text, max_text + 1);
  if (length > max_text) {
    return std::nullopt;
  }
  return std::string(text, length);
}

bool valid_name(std::string_view name, bool allow_dash) {
  if (name.empty() || name.size() > 64) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [allow_dash](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || (allow_dash && c == '-');
  });
}

bool valid_kind(Kind kind) {
  auto k = static_cast<std::uint32_t>(kind);
  return k >= static_cast<std::uint32_t>(Kind::pipe) && k <= static_cast<std::uint32_t>(Kind::executor);
}

bool valid_option_type(OptionType type) {
  auto t = static_cast<std::uint32_t>(type);
  return t >= static_cast<std::uint32_t>(OptionType::string) &&
         t <= static_cast<std::uint32_t>(OptionType::string_list);
}

tl::unexpected<Error> invalid(const fs::path& origin, const std::string& what) {
  return fail(Errc::invalid_descriptor, where(origin) + "invalid descriptor: " + what);
}

Result<OptionInfo> read_option(const OptionSpec& spec, const fs::path& origin, const std::string& component) {
  auto name = bounded(spec.name);
  if (!name || !valid_name(*name, false)) {
    return invalid(origin, "component '" + component + "' has an option with a missing or invalid name");
  }
  if (*name == "type") {
    return invalid(origin, "component '" + component + "' declares option 'type', which is reserved");
  }
  if (!valid_option_type(spec.type)) {
    return invalid(origin, "option '" + component + "." + *name + "' has unknown type " +
                               std::to_string(static_cast<std::uint32_t>(spec.type)));
  }
  OptionInfo info{*name, spec.type, std::nullopt, bounded(spec.doc).value_or("")};
  if (spec.default_value != nullptr) {
    auto text = bounded(spec.default_value);
    if (!text) {
      return invalid(origin, "option '" + component + "." + *name + "' has an over-long default");
    }
    auto parsed = option_from_text(*text, spec.type, Substitutions{});
    if (!parsed) {
      return invalid(origin, "option '" + component + "." + *name + "': " + parsed.error().message);
    }
    info.default_text = *text;
  }
  return info;
}

Result<ComponentInfo> read_component(const ComponentDescriptor& desc, const fs::path& origin) {
  if (!valid_kind(desc.kind)) {
    return invalid(origin,
                   "a component has unknown kind " + std::to_string(static_cast<std::uint32_t>(desc.kind)));
  }
  auto name = bounded(desc.name);
  if (!name || !valid_name(*name, true)) {
    return invalid(origin, "a " + std::string(to_string(desc.kind)) +
                               " component has a missing or invalid name (want [a-z0-9_-]{1,64})");
  }
  ComponentInfo info;
  info.kind = desc.kind;
  info.name = *name;
  info.type = std::string(to_string(desc.kind)) + "." + *name;
  info.description = bounded(desc.description).value_or("");
  if (desc.factory == nullptr) {
    return invalid(origin, "component '" + info.type + "' has no factory");
  }
  info.factory = desc.factory;
  if (desc.option_count > max_options || (desc.option_count > 0 && desc.options == nullptr)) {
    return invalid(origin, "component '" + info.type + "' has a bad option table");
  }
  std::set<std::string, std::less<>> seen;
  for (std::uint32_t i = 0; i < desc.option_count; ++i) {
    auto option = read_option(desc.options[i], origin, info.type);
    if (!option) {
      return fail(std::move(option.error()));
    }
    if (!seen.insert(option->name).second) {
      return invalid(origin, "component '" + info.type + "' declares option '" + option->name + "' twice");
    }
    info.options.push_back(std::move(*option));
  }
  return info;
}

}  // namespace

const OptionInfo* ComponentInfo::find_option(std::string_view option) const {
  for (const auto& o : options) {
    if (o.name == option) {
      return &o;
    }
  }
  return nullptr;
}

std::vector<fs::path> discover_plugins(const std::vector<fs::path>& roots, std::vector<Refusal>& refusals) {
  std::vector<fs::path> found;
  std::set<fs::path> seen;
  for (const auto& root : roots) {
    std::error_code ec;
    if (!fs::exists(root, ec)) {
      continue;
    }
    std::vector<fs::path> here;
    if (fs::is_regular_file(root, ec)) {
      here.push_back(root);
    } else {
      fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
      if (ec) {
        refusals.push_back(
            {root, Error{Errc::io_error, root.string() + ": cannot read plugin folder: " + ec.message()}});
        continue;
      }
      for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) {
          break;
        }
        // Meson's private object folders hold no plugins; skipping them keeps a build tree scan cheap.
        if (it->is_directory(ec) && it->path().extension() == ".p") {
          it.disable_recursion_pending();
          continue;
        }
        if (it->path().extension() == ".so" && it->is_regular_file(ec)) {
          here.push_back(it->path());
        }
      }
    }
    std::sort(here.begin(), here.end());
    for (auto& file : here) {
      auto canonical = fs::weakly_canonical(file, ec);
      if (seen.insert(ec ? file : canonical).second) {
        found.push_back(std::move(file));
      }
    }
  }
  return found;
}

Result<PluginInfo> read_descriptor(const PluginDescriptor* d, const fs::path& origin,
                                   std::shared_ptr<void> library) {
  if (d == nullptr) {
    return invalid(origin, "the entry point returned no descriptor");
  }
  // The contract's order: ABI version, then size, then build id, before any other field is read.
  if (d->abi_version != abi_version) {
    return fail(Errc::abi_mismatch, where(origin) + "ABI version mismatch: plugin has " +
                                        std::to_string(d->abi_version) + ", kernel has " +
                                        std::to_string(abi_version));
  }
  if (d->descriptor_size != sizeof(PluginDescriptor)) {
    return invalid(origin, "descriptor size is " + std::to_string(d->descriptor_size) + " bytes, expected " +
                               std::to_string(sizeof(PluginDescriptor)));
  }
  auto build_id = bounded(d->build_id);
  if (!build_id) {
    return invalid(origin, "missing build id");
  }
  if (*build_id != EMBER_BUILD_ID) {
    return fail(Errc::build_mismatch, where(origin) + "build id mismatch: plugin was built as '" + *build_id +
                                          "', kernel as '" EMBER_BUILD_ID "'");
  }
  if (d->component_descriptor_size != sizeof(ComponentDescriptor)) {
    return invalid(origin, "component descriptor size is " + std::to_string(d->component_descriptor_size) +
                               " bytes, expected " + std::to_string(sizeof(ComponentDescriptor)));
  }
  PluginInfo info;
  info.path = origin;
  auto name = bounded(d->name);
  if (!name || !valid_name(*name, true)) {
    return invalid(origin, "missing or invalid plugin name (want [a-z0-9_-]{1,64})");
  }
  info.name = *name;
  auto version = bounded(d->version);
  if (!version || version->empty()) {
    return invalid(origin, "plugin '" + info.name + "' has no version");
  }
  info.version = *version;
  info.description = bounded(d->description).value_or("");
  info.license = bounded(d->license).value_or("");
  if (d->component_count == 0 || d->component_count > max_components || d->components == nullptr) {
    return invalid(origin, "plugin '" + info.name + "' must provide between 1 and " +
                               std::to_string(max_components) + " components, has " +
                               std::to_string(d->component_count));
  }
  std::set<std::string, std::less<>> types;
  for (std::uint32_t i = 0; i < d->component_count; ++i) {
    auto component = read_component(d->components[i], origin);
    if (!component) {
      return fail(std::move(component.error()));
    }
    if (!types.insert(component->type).second) {
      return invalid(origin, "plugin '" + info.name + "' provides '" + component->type + "' twice");
    }
    info.components.push_back(std::move(*component));
  }
  info.library = std::move(library);
  return info;
}

Result<PluginInfo> load_plugin(const fs::path& file) {
  std::error_code fs_ec;
  if (!fs::exists(file, fs_ec)) {
    return fail(Errc::not_found, where(file) + "plugin file not found");
  }
  namespace dll = boost::dll;
  auto library = std::make_shared<dll::shared_library>();
  std::error_code ec;
  dlerror();  // clear a stale message so the one read below is this load's
  library->load(file, ec, dll::load_mode::rtld_now | dll::load_mode::rtld_local);
  if (ec || !library->is_loaded()) {
    const char* message = dlerror();
    return fail(Errc::open_failed,
                where(file) + "cannot open: " + (message != nullptr ? std::string(message) : ec.message()));
  }
  if (!library->has(entry_symbol)) {
    return fail(Errc::not_a_plugin, where(file) + "not an ember plugin: no '" + std::string(entry_symbol) +
                                        "' entry symbol (write EMBER_PLUGIN(...) in one source file)");
  }
  using Entry = const PluginDescriptor*();
  Entry* entry = nullptr;
  try {
    entry = &library->get_alias<Entry>(entry_symbol);
  } catch (const std::exception& e) {
    return fail(Errc::not_a_plugin, where(file) + "cannot resolve entry symbol: " + e.what());
  }
  if (entry == nullptr) {
    return fail(Errc::not_a_plugin, where(file) + "the entry symbol is null");
  }
  return read_descriptor(entry(), file, std::move(library));
}

}  // namespace ember::kernel
