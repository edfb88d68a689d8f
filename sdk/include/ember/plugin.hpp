#pragma once
// The plugin descriptor and EMBER_PLUGIN, the one macro that writes it. A plugin's .cpp ends with:
//
//   namespace {
//   constexpr ember::OptionSpec options[] = {
//       {.name = "capacity", .type = ember::OptionType::integer, .default_value = "64",
//        .doc = "frames buffered in each direction", .minimum = "1", .maximum = "65536"},
//   };
//   constexpr ember::ComponentDescriptor components[] = {
//       ember::component<MemoryPipe>("memory", "in-process pipe for tests", options),
//   };
//   }  // namespace
//   EMBER_PLUGIN(memory_pipe, "memory-pipe", "0.1.0", "An in-process pipe", "Apache-2.0", components)
//
// The macro writes the plugin's description twice, from the same constant tables:
// - as plain data without pointers (a PluginInfoHeader and a serialized blob, computed at compile time) in
//   the ELF section ".ember_plugin", which the kernel reads from the file before it loads anything: listing,
//   describing and validating run none of the plugin's code and load none of its dependencies;
// - as the PluginDescriptor its entry function returns, with the factories, which the kernel asks for only
//   when a component is first created (the library is dlopen()ed then) and checks against the section.

#include <cstddef>
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

/// The ELF section that holds a plugin's PluginInfoSection.
#define EMBER_PLUGIN_SECTION ".ember_plugin"

/// The first bytes of a plugin's section.
inline constexpr char plugin_info_magic[8] = {'E', 'M', 'B', 'E', 'R', 'P', 'L', 'G'};

/// Room for the build id in the section header (the text, then NULs).
inline constexpr std::size_t plugin_build_id_capacity = 64;

/// The fixed start of a plugin's ".ember_plugin" section: plain data, no pointers, no relocations. The
/// kernel checks magic, ABI version, then size, then build id before it reads the blob that follows.
struct PluginInfoHeader {
  char magic[8];                            ///< plugin_info_magic
  std::uint32_t abi_version;                ///< ember::abi_version the plugin was built with
  std::uint32_t descriptor_size;            ///< sizeof(PluginInfoHeader) as the plugin saw it
  char build_id[plugin_build_id_capacity];  ///< EMBER_BUILD_ID, NUL-padded
  std::uint32_t blob_size;                  ///< bytes of serialized description after the header
  std::uint32_t reserved;                   ///< zero
};

/// A plugin's whole section: the header and the serialized description (see docs/writing-a-plugin.md for
/// its layout: little-endian u32 counts and codes, strings as a presence byte, a u32 length and the bytes).
template <std::size_t N>
struct PluginInfoSection {
  PluginInfoHeader header;  ///< checked first
  char blob[N];             ///< plugin, then each component with its option schema
};

/// What a plugin's entry function returns (plain data). The first two fields keep their place in every
/// ABI version.
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
  const void* info;                         ///< the plugin's PluginInfoSection (what its ELF section holds)
  std::uint32_t info_size;                  ///< sizeof that section object
};

#if defined(__x86_64__) || defined(__aarch64__)
// Pinned: changing any of these is an ABI change (see abi.hpp for the bump rule).
static_assert(sizeof(OptionSpec) == 64);
static_assert(sizeof(ComponentDescriptor) == 48);
static_assert(sizeof(PluginDescriptor) == 80);
static_assert(sizeof(PluginInfoHeader) == 88);
static_assert(offsetof(PluginInfoHeader, abi_version) == 8 &&
              offsetof(PluginInfoHeader, descriptor_size) == 12);
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

constexpr std::size_t text_size(const char* text) {
  std::size_t n = 0;
  while (text != nullptr && text[n] != '\0') {
    ++n;
  }
  return n;
}

// Counts the bytes write_plugin_info would write.
struct InfoCounter {
  std::size_t size = 0;
  constexpr void put(char) { ++size; }
};

// Writes into a section's blob; running past its end is not a constant expression (a compile error).
struct InfoWriter {
  char* data;
  std::size_t capacity;
  std::size_t at = 0;
  constexpr void put(char c) {
    if (at >= capacity) {
      throw "EMBER_PLUGIN: the plugin info blob overflowed";
    }
    data[at++] = c;
  }
};

template <class Out>
constexpr void put_u32(Out& out, std::uint32_t value) {
  for (int i = 0; i < 4; ++i) {
    out.put(static_cast<char>((value >> (8 * i)) & 0xFFu));
  }
}

// A string: 1 byte present (0: nullptr), a u32 length, the bytes without a terminator.
template <class Out>
constexpr void put_text(Out& out, const char* text) {
  out.put(text != nullptr ? 1 : 0);
  std::size_t n = text_size(text);
  put_u32(out, static_cast<std::uint32_t>(n));
  for (std::size_t i = 0; i < n; ++i) {
    out.put(text[i]);
  }
}

template <class Out>
constexpr void write_plugin_info(Out& out, const char* name, const char* version, const char* description,
                                 const char* license, const ComponentDescriptor* components,
                                 std::size_t count) {
  put_text(out, name);
  put_text(out, version);
  put_text(out, description);
  put_text(out, license);
  put_u32(out, static_cast<std::uint32_t>(count));
  for (std::size_t c = 0; c < count; ++c) {
    const ComponentDescriptor& component = components[c];
    put_u32(out, static_cast<std::uint32_t>(component.kind));
    put_text(out, component.name);
    put_text(out, component.description);
    put_u32(out, component.option_count);
    for (std::uint32_t o = 0; o < component.option_count; ++o) {
      const OptionSpec& option = component.options[o];
      put_text(out, option.name);
      put_u32(out, static_cast<std::uint32_t>(option.type));
      put_text(out, option.default_value);
      put_text(out, option.doc);
      put_text(out, option.choices);
      put_text(out, option.minimum);
      put_text(out, option.maximum);
      put_u32(out, static_cast<std::uint32_t>(option.refers_to));
    }
  }
}

/// The size of the blob EMBER_PLUGIN serializes for these tables.
template <std::size_t C>
constexpr std::size_t plugin_info_size(const char* name, const char* version, const char* description,
                                       const char* license, const ComponentDescriptor (&components)[C]) {
  InfoCounter counter;
  write_plugin_info(counter, name, version, description, license, components, C);
  return counter.size;
}

/// The section object EMBER_PLUGIN places in ".ember_plugin", computed at compile time.
template <std::size_t N, std::size_t C>
constexpr PluginInfoSection<N> make_plugin_info(const char* name, const char* version,
                                                const char* description, const char* license,
                                                const ComponentDescriptor (&components)[C]) {
  PluginInfoSection<N> info{};
  for (std::size_t i = 0; i < sizeof plugin_info_magic; ++i) {
    info.header.magic[i] = plugin_info_magic[i];
  }
  info.header.abi_version = abi_version;
  info.header.descriptor_size = sizeof(PluginInfoHeader);
  constexpr const char* build_id = EMBER_BUILD_ID;
  static_assert(sizeof(EMBER_BUILD_ID) <= plugin_build_id_capacity, "EMBER_BUILD_ID is too long");
  for (std::size_t i = 0; build_id[i] != '\0'; ++i) {
    info.header.build_id[i] = build_id[i];
  }
  info.header.blob_size = static_cast<std::uint32_t>(N);
  InfoWriter writer{info.blob, N};
  write_plugin_info(writer, name, version, description, license, components, C);
  return info;
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
// Linked into a program rather than loaded: no exported alias, so several plugins can share one binary; the
// info stays ordinary constant data, which add_static() reads through the descriptor.
#define EMBER_DETAIL_EXPORT(id)
#define EMBER_DETAIL_INFO_ATTRIBUTES
#else
#include <boost/dll/alias.hpp>
#define EMBER_DETAIL_EXPORT(id) BOOST_DLL_ALIAS(ember_plugin_descriptor_##id, ember_plugin)
// `used` and `retain` keep the section through the compiler and a linker's --gc-sections.
#define EMBER_DETAIL_INFO_ATTRIBUTES __attribute__((used, retain, section(EMBER_PLUGIN_SECTION)))
#endif

/// Writes the plugin's info section and descriptor, and exports the entry symbol the kernel looks for.
/// `id` is a C identifier unique to the plugin; `components` is a constant array of
/// ember::ComponentDescriptor.
#define EMBER_PLUGIN(id, plugin_name, plugin_version, plugin_description, plugin_license, components)        \
  namespace ember_plugin_detail_##id {                                                                       \
    inline constexpr std::size_t info_size = ::ember::detail::plugin_info_size(                              \
        plugin_name, plugin_version, plugin_description, plugin_license, components);                        \
  }                                                                                                          \
  extern "C" EMBER_DETAIL_INFO_ATTRIBUTES constinit const ::ember::PluginInfoSection<                        \
      ember_plugin_detail_##id::info_size>                                                                   \
      ember_plugin_info_##id = ::ember::detail::make_plugin_info<ember_plugin_detail_##id::info_size>(       \
          plugin_name, plugin_version, plugin_description, plugin_license, components);                      \
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
                                                          sizeof(::ember::ComponentDescriptor),              \
                                                          &ember_plugin_info_##id,                           \
                                                          sizeof(ember_plugin_info_##id)};                   \
    return &descriptor;                                                                                      \
  }                                                                                                          \
  EMBER_DETAIL_EXPORT(id)

/// Declares the descriptor function of a plugin linked statically (built with EMBER_PLUGIN_STATIC), so a
/// program can hand it to the kernel: `kernel.add_static(ember_plugin_descriptor_memory_pipe())`.
#define EMBER_DECLARE_STATIC_PLUGIN(id) \
  extern "C" const ::ember::PluginDescriptor* ember_plugin_descriptor_##id()
