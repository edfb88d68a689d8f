#pragma once
// The base of every component, the kinds a plugin can provide, and the context the kernel hands a component.
//
// Threading. Every SDK interface says which of its calls may come from which thread, in three words (after
// libcamera's):
//   - reentrant: may be called from several threads at once on *different* objects (value types: Options,
//     TaskData, WireTensor, Result);
//   - thread-safe: may be called from several threads at once on the *same* object;
//   - thread-bound: called from one thread at a time (not necessarily the same thread each time), so the
//     object needs no lock for it; the interface says which other calls may overlap it.
// The kernel never calls a component from a signal handler. Where an interface has a stop (Executor::stop,
// Applet::stop, LaunchHandle::stop, PipeEndpoint::close) it may come from another thread while a long call
// runs, and must make that call return promptly; a long wait polls or registers on its stop token.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

#include <ember/abi.hpp>
#include <ember/event_bus.hpp>
#include <ember/job.hpp>
#include <ember/kind.hpp>
#include <ember/logger.hpp>
#include <ember/options.hpp>
#include <ember/result.hpp>

namespace ember {

/// The base of every component. Created by its plugin's factory, owned by the kernel through a
/// shared_ptr that also keeps the plugin's library loaded. Destroyed on any thread, once no call runs.
class EMBER_API Component {
 public:
  virtual ~Component() = default;
  Component() = default;
  Component(const Component&) = delete;
  Component& operator=(const Component&) = delete;
};

class Registry;

/// A component as the job configures it: its type and its validated options.
struct ConfiguredComponent {
  std::string type;  ///< "pipe.socket"
  Options options;   ///< validated, defaults filled in, substituted for this site
};

/// What the kernel hands a component when it creates it. Reentrant; its accessors are thread-safe, and what
/// they return (logger, event bus, registry) is thread-safe too.
class ComponentContext {
 public:
  ComponentContext(std::string type, std::string instance, std::shared_ptr<Logger> logger, Options options,
                   std::filesystem::path workspace, EventBus& events, Registry& registry,
                   std::stop_token stop)
      : type_(std::move(type)),
        instance_(std::move(instance)),
        logger_(std::move(logger)),
        options_(std::move(options)),
        workspace_(std::move(workspace)),
        events_(&events),
        registry_(&registry),
        stop_(std::move(stop)) {}

  /// The component's type name, e.g. "pipe.socket".
  const std::string& type() const noexcept { return type_; }
  /// The instance name from the config (the key under [components]), or the type when created ad hoc.
  const std::string& instance() const noexcept { return instance_; }
  /// The component's logger, category `plugin.<kind>.<name>`.
  Logger& logger() const noexcept { return *logger_; }
  /// A shared handle on the logger, for objects that outlive the context.
  const std::shared_ptr<Logger>& logger_ptr() const noexcept { return logger_; }
  /// The validated options.
  const Options& options() const noexcept { return options_; }
  /// The folder this component may write to (the job's or site's workspace).
  const std::filesystem::path& workspace() const noexcept { return workspace_; }
  /// The kernel's event bus.
  EventBus& events() const noexcept { return *events_; }
  /// The registry, to create other components (an executor creating its pipe).
  Registry& registry() const noexcept { return *registry_; }
  /// Requested when the kernel shuts the component's job down; long waits poll or register on it.
  const std::stop_token& stop_token() const noexcept { return stop_; }

 private:
  std::string type_;
  std::string instance_;
  std::shared_ptr<Logger> logger_;
  Options options_;
  std::filesystem::path workspace_;
  EventBus* events_;
  Registry* registry_;
  std::stop_token stop_;
};

/// Creates components by type name. Implemented by the kernel; a component reaches it through its context.
/// Thread-safe: a component may create others from any of its threads.
class EMBER_API Registry {
 public:
  virtual ~Registry() = default;

  /// Creates a component of `type` ("pipe.socket"), validating `options` against its schema (declared
  /// defaults fill what is missing). The component keeps its plugin loaded for as long as it lives.
  virtual Result<std::shared_ptr<Component>> create(std::string_view type, const Options& options,
                                                    std::string_view instance = {}) = 0;

  /// Whether a component of this type is registered.
  virtual bool contains(std::string_view type) const = 0;

  /// Creates a component and checks that it implements interface T (Pipe, Launcher, ...).
  template <class T>
  Result<std::shared_ptr<T>> create_as(std::string_view type, const Options& options,
                                       std::string_view instance = {}) {
    auto made = create(type, options, instance);
    if (!made) {
      return fail(std::move(made.error()));
    }
    auto typed = std::dynamic_pointer_cast<T>(*made);
    if (!typed) {
      return fail(Errc::invalid_argument,
                  "component '" + std::string(type) + "' does not implement the requested interface");
    }
    return typed;
  }

  /// The job this registry creates components for, or null outside a job (`ember plugins`, tests).
  virtual const JobInfo* job() const noexcept { return nullptr; }
  /// Creates the job's component configured under [components.<id>], with its options from the job file
  /// (substituted for this site). Errc::not_found outside a job or for an unknown id.
  virtual Result<std::shared_ptr<Component>> create_configured(std::string_view id) {
    return fail(Errc::not_found, "no job: component '" + std::string(id) + "' cannot be looked up");
  }
  /// The type and options of the job's component [components.<id>], without creating it (an executor
  /// passes them on to the trainer it launches). Errc::not_found outside a job or for an unknown id.
  virtual Result<ConfiguredComponent> configured(std::string_view id) const {
    return fail(Errc::not_found, "no job: component '" + std::string(id) + "' cannot be looked up");
  }
  /// create_configured() and a check that the component implements interface T.
  template <class T>
  Result<std::shared_ptr<T>> create_configured_as(std::string_view id) {
    auto made = create_configured(id);
    if (!made) {
      return fail(std::move(made.error()));
    }
    auto typed = std::dynamic_pointer_cast<T>(*made);
    if (!typed) {
      return fail(Errc::invalid_argument, "component '" + std::string(id) +
                                              "' of the job does not implement the requested interface");
    }
    return typed;
  }
};

}  // namespace ember
