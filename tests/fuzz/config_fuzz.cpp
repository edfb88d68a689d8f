// Fuzz target for job and site configuration: any bytes, read as TOML, must give either a config or an
// error with a message, never a crash, a hang or a leak. Built as a libFuzzer target under clang
// (-Dfuzz=true) and, everywhere, linked with replay_main.cpp to run the seed corpus as a test.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <ember/plugin.hpp>

#include "config.hpp"
#include "kernel.hpp"
#include "option_values.hpp"

EMBER_DECLARE_STATIC_PLUGIN(memory_pipe);
EMBER_DECLARE_STATIC_PLUGIN(fake_launcher);
EMBER_DECLARE_STATIC_PLUGIN(echo_applet);
EMBER_DECLARE_STATIC_PLUGIN(identity_converter);

namespace {

using ember::kernel::Kernel;

ember::kernel::KernelSettings fuzz_settings() {
  ember::kernel::KernelSettings settings;
  settings.use_default_paths = false;
  settings.use_env_path = false;
  settings.log.level = ember::LogLevel::off;
  return settings;
}

bool register_reference_plugins(Kernel& kernel) {
  struct Static {
    const ember::PluginDescriptor* descriptor;
    const char* origin;
  };
  const Static plugins[] = {
      {ember_plugin_descriptor_memory_pipe(), "<static:memory_pipe>"},
      {ember_plugin_descriptor_fake_launcher(), "<static:fake_launcher>"},
      {ember_plugin_descriptor_echo_applet(), "<static:echo_applet>"},
      {ember_plugin_descriptor_identity_converter(), "<static:identity_converter>"},
  };
  for (const auto& plugin : plugins) {
    if (!kernel.add_static(plugin.descriptor, plugin.origin)) {
      return false;
    }
  }
  return true;
}

// One kernel for the whole run: registering plugins is setup, not what is fuzzed. The reference plugins are
// linked in, so inputs reach option validation against real schemas without any dlopen.
Kernel& fuzz_kernel() {
  static Kernel kernel(fuzz_settings());
  static const bool registered = register_reference_plugins(kernel);
  if (!registered) {
    __builtin_trap();  // the harness itself is broken: every input would be meaningless
  }
  return kernel;
}

// Touches every field of a result so that a value left uninitialised or dangling would be read.
std::size_t consume(const ember::kernel::JobConfig& job) {
  std::size_t n = job.name.size() + job.description.size() + job.log.rules.size();
  for (const auto& component : job.components) {
    n += component.id.size() + component.type.size() + component.where.str().size();
    for (const auto& [name, value] : component.options.values()) {
      n += name.size() + ember::kernel::option_to_text(value).size();
    }
  }
  return n;
}

std::size_t consume(const ember::kernel::SiteConfig& site) {
  std::size_t n = site.name.size() + site.workspace.native().size() + site.log.rules.size();
  for (const auto& path : site.plugin_paths) {
    n += path.native().size();
  }
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Kernel& kernel = fuzz_kernel();
  std::string_view text(reinterpret_cast<const char*>(data), size);
  volatile std::size_t sink = 0;

  auto job = ember::kernel::parse_job(text, "fuzz/job.toml", kernel.registry());
  sink = sink + (job ? consume(*job) : job.error().message.size());

  auto site = ember::kernel::parse_site(text, "fuzz/site.toml", "/fuzz");
  sink = sink + (site ? consume(*site) : site.error().message.size());

  sink = sink + (ember::kernel::looks_like_site(text) ? 1 : 0);
  return 0;
}
