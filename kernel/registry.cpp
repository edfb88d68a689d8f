#include "registry.hpp"

namespace ember::kernel {

ComponentRegistry::ComponentRegistry(LogHub& logs, EventBus& events, std::filesystem::path workspace,
                                     Substitutions subs)
    : logs_(logs), events_(events), workspace_(std::move(workspace)), subs_(std::move(subs)) {}

ComponentRegistry::~ComponentRegistry() {
  stop_.request_stop();
}

Result<void> ComponentRegistry::add(PluginInfo plugin) {
  if (auto it = by_plugin_name_.find(plugin.name); it != by_plugin_name_.end()) {
    return fail(Errc::duplicate_name, plugin.path.string() + ": duplicate plugin name '" + plugin.name +
                                          "': already provided by " + it->second->path.string());
  }
  for (const auto& component : plugin.components) {
    if (auto it = provider_of_.find(component.type); it != provider_of_.end()) {
      return fail(Errc::duplicate_name, plugin.path.string() + ": duplicate component '" + component.type +
                                            "': already provided by " + it->second->path.string() +
                                            " (plugin '" + it->second->name + "')");
    }
  }
  PluginInfo& stored = plugins_.emplace_back(std::move(plugin));
  by_plugin_name_.emplace(stored.name, &stored);
  for (const auto& component : stored.components) {
    by_type_.emplace(component.type, &component);
    provider_of_.emplace(component.type, &stored);
  }
  return ok();
}

const ComponentInfo* ComponentRegistry::find(std::string_view type) const {
  auto it = by_type_.find(type);
  return it == by_type_.end() ? nullptr : it->second;
}

const PluginInfo* ComponentRegistry::provider(std::string_view type) const {
  auto it = provider_of_.find(type);
  return it == provider_of_.end() ? nullptr : it->second;
}

std::vector<std::string> ComponentRegistry::types() const {
  std::vector<std::string> out;
  out.reserve(by_type_.size());
  for (const auto& [type, info] : by_type_) {
    out.push_back(type);
  }
  return out;
}

Result<Options> ComponentRegistry::resolve_options(const ComponentInfo& component, const Options& given,
                                                   const Substitutions& subs) const {
  for (const auto& [name, value] : given.values()) {
    const auto* spec = component.find_option(name);
    if (spec == nullptr) {
      return fail(Errc::invalid_option, component.type + ": unknown option '" + name + "'");
    }
    if (!holds_type(value, spec->type)) {
      return fail(Errc::invalid_option, component.type + ": option '" + name + "' must be of type " +
                                            std::string(to_string(spec->type)));
    }
    if (auto fits = check_constraints(value, spec->constraints); !fits) {
      return fail(Errc::invalid_option, component.type + ": option '" + name + "': " + fits.error().message);
    }
  }
  Options resolved = given;
  for (const auto& spec : component.options) {
    if (resolved.contains(spec.name)) {
      continue;
    }
    if (!spec.default_text) {
      return fail(Errc::invalid_option, component.type + ": required option '" + spec.name + "' is missing");
    }
    auto value = option_from_text(*spec.default_text, spec.type, subs);
    if (!value) {
      return fail(Errc::invalid_option,
                  component.type + ": default of option '" + spec.name + "': " + value.error().message);
    }
    if (auto fits = check_constraints(*value, spec.constraints); !fits) {
      return fail(Errc::invalid_option,
                  component.type + ": default of option '" + spec.name + "': " + fits.error().message);
    }
    resolved.set(spec.name, std::move(*value));
  }
  return resolved;
}

Result<std::pair<ComponentFactory, std::shared_ptr<void>>> ComponentRegistry::factory_of(
    std::string_view type) {
  std::lock_guard lock(load_mutex_);
  auto it = provider_of_.find(type);
  if (it == provider_of_.end()) {
    return fail(Errc::not_found, "no component of type '" + std::string(type) + "' is registered");
  }
  PluginInfo& plugin = *it->second;
  if (!plugin.loaded && !plugin.load_error) {
    if (auto loaded = load_library(plugin); !loaded) {
      plugin.load_error = loaded.error();
    }
  }
  if (plugin.load_error) {
    return fail(plugin.load_error->code,
                "cannot create '" + std::string(type) + "': " + plugin.load_error->message);
  }
  for (const auto& component : plugin.components) {
    if (component.type == type) {
      return std::pair{component.factory, plugin.library};
    }
  }
  return fail(Errc::internal, "component '" + std::string(type) + "' vanished from its plugin");
}

Result<std::shared_ptr<Component>> ComponentRegistry::create(std::string_view type, const Options& options,
                                                             std::string_view instance) {
  return create_in(type, options, instance, Scope{workspace_, subs_, this, {}});
}

Result<std::shared_ptr<Component>> ComponentRegistry::create_in(std::string_view type, const Options& options,
                                                                std::string_view instance,
                                                                const Scope& scope) {
  const auto* component = find(type);
  if (component == nullptr) {
    return fail(Errc::not_found, "no component of type '" + std::string(type) +
                                     "' is registered (run 'ember plugins' to list what was found)");
  }
  auto resolved =
      scope.options_resolved ? Result<Options>(options) : resolve_options(*component, options, scope.subs);
  if (!resolved) {
    return fail(std::move(resolved.error()));
  }
  const PluginInfo* plugin = provider(type);
  auto factory = factory_of(type);
  if (!factory) {
    return fail(std::move(factory.error()));
  }
  std::string category = "plugin." + component->type;
  ComponentContext context(component->type, instance.empty() ? component->type : std::string(instance),
                           scope.site.empty() ? logs_.get(category) : logs_.get(category, scope.site),
                           std::move(*resolved), scope.workspace, events_,
                           scope.registry != nullptr ? *scope.registry : *this, stop_.get_token());
  auto made = factory->first(context);
  if (!made) {
    // A bad option value stays invalid_option (exit code 3), whatever else failed is create_failed.
    Errc code = made.error().code == Errc::invalid_option ? Errc::invalid_option : Errc::create_failed;
    return fail(
        code, plugin->path.string() + ": creating '" + component->type + "' failed: " + made.error().message);
  }
  if (!*made) {
    return fail(Errc::create_failed, plugin->path.string() + ": creating '" + component->type +
                                         "' failed: the factory returned null");
  }
  // The object is destroyed before the library reference is dropped: members of Holder die in reverse order.
  struct Holder {
    std::shared_ptr<void> library;
    std::unique_ptr<Component> object;
  };
  auto holder = std::make_shared<Holder>(Holder{std::move(factory->second), std::move(*made)});
  Component* raw = holder->object.get();
  return std::shared_ptr<Component>(std::move(holder), raw);
}

}  // namespace ember::kernel
