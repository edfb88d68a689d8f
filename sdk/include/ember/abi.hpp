#pragma once
// The plugin ABI: the version a plugin was built against and the build id that must match the kernel's.

#include <cstdint>

namespace ember {

/// Marks a polymorphic SDK type visible, so RTTI and dynamic_cast agree across hidden-visibility plugins.
#define EMBER_API __attribute__((visibility("default")))

/// The SDK's release, as text; part of the build id.
#define EMBER_SDK_VERSION "0.1.0"

/// The ABI version of the plugin contract.
///
/// Bump rule: increase it by one in the same commit as any change that alters
/// - the layout of PluginInfoHeader, PluginDescriptor or ComponentDescriptor (plugin.hpp), of OptionSpec
///   (options.hpp), or the serialized info blob that EMBER_PLUGIN writes (its field order or encoding);
/// - the value of an enumerator that crosses the boundary (Kind in kind.hpp, OptionType in options.hpp, Errc
///   in result.hpp, the RunState and other enums of the interfaces);
/// - the signature of a factory, or the virtual table of an interface a plugin implements or calls (adding,
///   removing or reordering a virtual function, changing its parameters).
/// Adding a new interface, a new free function or a new non-virtual helper does not bump it. The kernel
/// refuses a plugin whose ABI version differs from its own, naming both; tests/sdk/abi_test.cpp pins the
/// sizes and the enumerator values, so a change that forgets the bump fails there.
inline constexpr std::uint32_t abi_version = 6;

#define EMBER_DETAIL_STR2(x) #x
#define EMBER_DETAIL_STR(x) EMBER_DETAIL_STR2(x)

#if defined(__clang__)
#define EMBER_DETAIL_COMPILER "clang-" EMBER_DETAIL_STR(__clang_major__)
#elif defined(__GNUC__)
#define EMBER_DETAIL_COMPILER "gcc-" EMBER_DETAIL_STR(__GNUC__)
#else
#define EMBER_DETAIL_COMPILER "unknown"
#endif

#if defined(_GLIBCXX_RELEASE)
#define EMBER_DETAIL_STDLIB \
  "libstdc++-" EMBER_DETAIL_STR(_GLIBCXX_RELEASE) "-abi" EMBER_DETAIL_STR(_GLIBCXX_USE_CXX11_ABI)
#elif defined(_LIBCPP_VERSION)
#define EMBER_DETAIL_STDLIB "libc++-" EMBER_DETAIL_STR(_LIBCPP_VERSION)
#else
#define EMBER_DETAIL_STDLIB "unknown"
#endif

/// The build id: what must be the same between the kernel and a plugin for C++ types (std::string,
/// std::shared_ptr, virtual tables) to be safe to pass between them. Compiler family and major version,
/// standard library and its ABI, and the SDK release.
#define EMBER_BUILD_ID EMBER_DETAIL_COMPILER ";" EMBER_DETAIL_STDLIB ";sdk-" EMBER_SDK_VERSION

}  // namespace ember
