#pragma once
// The registry of component factories, keyed by "kind.name", and the creation of components.

#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>

#include <ember/component.hpp>
#include <ember/event_bus.hpp>

#include "logging.hpp"
#include "option_values.hpp"
#include "plugin_loader.hpp"

namespace ember::kernel {

/// Holds every accepted plugin and creates components from them.
class ComponentRegistry final : public Registry {
 public:
  ComponentRegistry(LogHub& logs, EventBus& events, std::filesystem::path workspace, Substitutions subs);
  ~ComponentRegistry() override;

  /// Accepts a plugin, or refuses it whole when its name or one of its component types is taken.
  Result<void> add(PluginInfo plugin);

  /// Accepted plugins, in the order they were added. Their loaded state (library, factories) changes when a
  /// component is first created: read it on the thread that creates, or when no other thread does.
  const std::deque<PluginInfo>& plugins() const noexcept { return plugins_; }
  /// The component of `type`, or null.
  const ComponentInfo* find(std::string_view type) const;
  /// The plugin that provides `type`, or null.
  const PluginInfo* provider(std::string_view type) const;
  /// Every registered type, sorted.
  std::vector<std::string> types() const;

  /// Checks `given` against the schema of `component` and fills in defaults: unknown names, wrong types,
  /// values outside the declared choices or range and missing required options are errors naming the
  /// option.
  /// String defaults are substituted with `subs`.
  Result<Options> resolve_options(const ComponentInfo& component, const Options& given,
                                  const Substitutions& subs) const;

  /// Creates a component. The first creation of any component of a plugin file loads that file
  /// (load_library): until then no code of the plugin has run.
  Result<std::shared_ptr<Component>> create(std::string_view type, const Options& options,
                                            std::string_view instance = {}) override;

  /// Where a component is created: its workspace, substitutions, the registry its context hands out (a job
  /// scope, so nested creates stay in the job) and, for a simulated site, the site its logger writes for.
  struct Scope {
    std::filesystem::path workspace;
    Substitutions subs;
    Registry* registry = nullptr;
    std::string site;               ///< empty: the kernel's own log only
    bool options_resolved = false;  ///< the options were validated already (a loaded job's components)
  };
  /// create() in `scope`.
  Result<std::shared_ptr<Component>> create_in(std::string_view type, const Options& options,
                                               std::string_view instance, const Scope& scope);
  /// The stop token every component's context carries.
  std::stop_token stop_token() const noexcept { return stop_.get_token(); }
  bool contains(std::string_view type) const override { return find(type) != nullptr; }

  /// The substitutions applied to string options.
  const Substitutions& substitutions() const noexcept { return subs_; }
  /// Asks every component created so far (and later) to stop.
  void request_stop() noexcept { stop_.request_stop(); }

 private:
  LogHub& logs_;
  EventBus& events_;
  std::filesystem::path workspace_;
  Substitutions subs_;
  std::stop_source stop_;
  // The factory of `type` and the library that must outlive what it makes, loading the plugin if needed.
  Result<std::pair<ComponentFactory, std::shared_ptr<void>>> factory_of(std::string_view type);

  std::mutex load_mutex_;           // guards the loaded state of every plugin (library, factories, error)
  std::deque<PluginInfo> plugins_;  // a deque keeps ComponentInfo addresses stable as plugins are added
  std::map<std::string, const ComponentInfo*, std::less<>> by_type_;
  std::map<std::string, const PluginInfo*, std::less<>> by_plugin_name_;
  std::map<std::string, PluginInfo*, std::less<>> provider_of_;
};

}  // namespace ember::kernel
