#pragma once
// The plugin descriptor and EMBER_PLUGIN, the one macro that writes it. A plugin's .cpp ends with:
//
//   namespace {
//   constexpr ember::OptionSpec options[] = {
//       {"capacity", ember::OptionType::integer, "64", "frames buffered in each direction"},
//   };
//   constexpr ember::ComponentDescriptor components[] = {
//       ember::component<MemoryPipe>("memory", "in-process pipe for tests", options),
//   };
//   }  // namespace
//   EMBER_PLUGIN(memory_pipe, "memory-pipe", "0.1.0", "An in-process pipe", "Apache-2.0", components)
//
// The descriptor is constant data: loading a plugin runs none of its code until the kernel has checked the
// ABI version, the descriptor's size and the build id.

#include <cstdint>
#include <exception>
#include <iterator>
#include <memory>
#include <type_traits>

#include <ember/abi.hpp>
#include <ember/applet.hpp>
#include <ember/component.hpp>
#include <ember/converter.hpp>
#include <ember/executor.hpp>
#include <ember/launcher.hpp>
#include <ember/options.hpp>
#include <ember/pipe.hpp>
#include <ember/result.hpp>
#include <ember/workflow.hpp>

namespace ember {

/// Creates one component. Never throws: the wrapper that component<T>() writes catches.
using ComponentFactory = Result<std::unique_ptr<Component>> (*)(const ComponentContext& context) noexcept;

/// One component a plugin provides (plain data).
struct ComponentDescriptor {
  Kind kind;                   ///< the kind, the first half of the type name
  const char* name;            ///< the second half: "socket" in "pipe.socket"; `[a-z0-9_-]+`
  const char* description;     ///< one line
  const OptionSpec* options;   ///< the option schema (may be nullptr when option_count is 0)
  std::uint32_t option_count;  ///< entries in `options`
  ComponentFactory factory;    ///< creates an instance
};

/// What a plugin exports (plain data). The first two fields keep their place in every ABI version.
struct PluginDescriptor {
  std::uint32_t abi_version;                ///< ember::abi_version the plugin was built with
  std::uint32_t descriptor_size;            ///< sizeof(PluginDescriptor) as the plugin saw it
  const char* build_id;                     ///< EMBER_BUILD_ID as the plugin saw it
  const char* name;                         ///< the plugin's name, unique among loaded plugins
  const char* version;                      ///< the plugin's own version
  const char* description;                  ///< one line
  const char* license;                      ///< SPDX identifier
  const ComponentDescriptor* components;    ///< what it provides
  std::uint32_t component_count;            ///< entries in `components`
  std::uint32_t component_descriptor_size;  ///< sizeof(ComponentDescriptor) as the plugin saw it
};

#if defined(__x86_64__) || defined(__aarch64__)
// Pinned: changing any of these is an ABI change (see abi.hpp for the bump rule).
static_assert(sizeof(OptionSpec) == 32);
static_assert(sizeof(ComponentDescriptor) == 48);
static_assert(sizeof(PluginDescriptor) == 64);
#endif

/// The kind a component class implements, from the interface it derives from.
template <class T>
constexpr Kind kind_of() {
  if constexpr (std::is_base_of_v<Pipe, T>) {
    return Kind::pipe;
  } else if constexpr (std::is_base_of_v<Launcher, T>) {
    return Kind::launcher;
  } else if constexpr (std::is_base_of_v<Applet, T>) {
    return Kind::applet;
  } else if constexpr (std::is_base_of_v<Converter, T>) {
    return Kind::converter;
  } else if constexpr (std::is_base_of_v<Workflow, T>) {
    return Kind::workflow;
  } else {
    static_assert(std::is_base_of_v<Executor, T>,
                  "a component must derive from Pipe, Launcher, Applet, Converter, Workflow or Executor");
    return Kind::executor;
  }
}

namespace detail {

template <class T>
Result<std::unique_ptr<Component>> create_component(const ComponentContext& context) noexcept {
  try {
    if constexpr (requires { T::create(context); }) {
      // T::create(context) -> Result<std::unique_ptr<T>>, for constructors that can fail without throwing.
      auto made = T::create(context);
      if (!made) {
        return fail(std::move(made.error()));
      }
      return std::unique_ptr<Component>(std::move(*made));
    } else {
      return std::unique_ptr<Component>(std::make_unique<T>(context));
    }
  } catch (const std::exception& e) {
    return fail(Errc::create_failed, e.what());
  } catch (...) {
    return fail(Errc::create_failed, "the component's constructor threw a non-standard exception");
  }
}

}  // namespace detail

/// Describes component class T, with its option schema. T is constructed from `const ComponentContext&`,
/// or by a static `T::create(const ComponentContext&) -> Result<std::unique_ptr<T>>` when it has one.
template <class T, std::size_t N>
constexpr ComponentDescriptor component(const char* name, const char* description,
                                        const OptionSpec (&options)[N]) {
  return {
      kind_of<T>(), name, description, options, static_cast<std::uint32_t>(N), &detail::create_component<T>};
}

/// Describes component class T, which takes no options.
template <class T>
constexpr ComponentDescriptor component(const char* name, const char* description) {
  return {kind_of<T>(), name, description, nullptr, 0, &detail::create_component<T>};
}

}  // namespace ember

#if defined(EMBER_PLUGIN_STATIC)
// Linked into a program rather than loaded: no exported alias, so several plugins can share one binary.
#define EMBER_DETAIL_EXPORT(id)
#else
#include <boost/dll/alias.hpp>
#define EMBER_DETAIL_EXPORT(id) BOOST_DLL_ALIAS(ember_plugin_descriptor_##id, ember_plugin)
#endif

/// Writes the plugin's descriptor and exports it as the symbol the kernel looks for. `id` is a C
/// identifier unique to the plugin; `components` is a constant array of ember::ComponentDescriptor.
#define EMBER_PLUGIN(id, plugin_name, plugin_version, plugin_description, plugin_license, components)        \
  extern "C" const ::ember::PluginDescriptor* ember_plugin_descriptor_##id() {                               \
    static constexpr ::ember::PluginDescriptor descriptor{::ember::abi_version,                              \
                                                          sizeof(::ember::PluginDescriptor),                 \
                                                          EMBER_BUILD_ID,                                    \
                                                          plugin_name,                                       \
                                                          plugin_version,                                    \
                                                          plugin_description,                                \
                                                          plugin_license,                                    \
                                                          components,                                        \
                                                          static_cast<std::uint32_t>(std::size(components)), \
                                                          sizeof(::ember::ComponentDescriptor)};             \
    return &descriptor;                                                                                      \
  }                                                                                                          \
  EMBER_DETAIL_EXPORT(id)

/// Declares the descriptor function of a plugin linked statically (built with EMBER_PLUGIN_STATIC), so a
/// program can hand it to the kernel: `kernel.add_static(ember_plugin_descriptor_memory_pipe())`.
#define EMBER_DECLARE_STATIC_PLUGIN(id) \
  extern "C" const ::ember::PluginDescriptor* ember_plugin_descriptor_##id()
