#include "kernel.hpp"

#include <chrono>
#include <cstdlib>
#include <system_error>

#include <base/strings.hpp>

namespace ember::kernel {

namespace fs = std::filesystem;

namespace {

bool is_within(const fs::path& file, const fs::path& dir) {
  auto f = file.lexically_normal().string();
  auto d = dir.lexically_normal().string();
  if (!d.empty() && d.back() != '/') {
    d += '/';
  }
  return f.compare(0, d.size(), d) == 0;
}

std::vector<fs::path> split_path_list(const char* value) {
  std::vector<fs::path> out;
  if (value != nullptr) {
    for (auto& piece : base::split(value, ':')) {
      out.emplace_back(std::move(piece));
    }
  }
  return out;
}

LogSettings effective_log(const LogSettings& base, std::optional<Error>& error) {
  const char* spec = std::getenv("EMBER_LOG");
  if (spec == nullptr) {
    return base;
  }
  auto parsed = parse_log_spec(spec, base);
  if (!parsed) {
    error = parsed.error();
    return base;
  }
  return *parsed;
}

}  // namespace

fs::path default_plugin_dir() {
  std::error_code ec;
  auto self = fs::canonical("/proc/self/exe", ec);
  fs::path build_root = fs::weakly_canonical(EMBER_BUILD_ROOT, ec);
  if (!self.empty() && is_within(self, build_root)) {
    return build_root / "plugins";
  }
  return fs::path(EMBER_INSTALL_PLUGIN_DIR);
}

fs::path default_program_dir() {
  std::error_code ec;
  auto self = fs::canonical("/proc/self/exe", ec);
  fs::path build_root = fs::weakly_canonical(EMBER_BUILD_ROOT, ec);
  if (!self.empty() && is_within(self, build_root)) {
    return build_root / "examples";
  }
  return fs::path(EMBER_INSTALL_LIBEXEC_DIR);
}

fs::path default_python_dir() {
  if (std::string_view(EMBER_PYTHON).empty()) {
    return {};
  }
  std::error_code ec;
  auto self = fs::canonical("/proc/self/exe", ec);
  fs::path build_root = fs::weakly_canonical(EMBER_BUILD_ROOT, ec);
  if (!self.empty() && is_within(self, build_root)) {
    return build_root / "sdk" / "python";
  }
  return fs::path(EMBER_INSTALL_PYTHON_DIR);
}

fs::path python_interpreter() {
  return fs::path(EMBER_PYTHON);
}

Kernel::Kernel(KernelSettings settings) : settings_(std::move(settings)) {
  logs_ = std::make_unique<LogHub>(effective_log(settings_.log, log_spec_error_));
  log_ = logs_->get("kernel");
  events_ = std::make_unique<LocalEventBus>(logs_->get("kernel.events"));
  registry_ = std::make_unique<ComponentRegistry>(*logs_, *events_, settings_.workspace, settings_.subs);
  search_paths_ = settings_.plugin_paths;
  if (settings_.use_env_path) {
    for (auto& p : split_path_list(std::getenv("EMBER_PLUGIN_PATH"))) {
      search_paths_.push_back(std::move(p));
    }
  }
  if (settings_.use_default_paths) {
    search_paths_.push_back(default_plugin_dir());
  }
  if (log_spec_error_) {
    log_->warn(log_spec_error_->message);
  }
}

Kernel::~Kernel() {
  // Components created through the registry hold their libraries; the registry goes first so no
  // component outlives the logs and the bus it was handed.
  registry_.reset();
  events_.reset();
}

void Kernel::load_plugins() {
  auto started = std::chrono::steady_clock::now();
  auto files = discover_plugins(search_paths_, refusals_);
  std::size_t loaded = 0;
  for (const auto& file : files) {
    if (load_file(file)) {
      ++loaded;
    }
  }
  auto took =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
  if (log_->enabled(LogLevel::debug)) {
    log_->debug("loaded " + std::to_string(loaded) + " of " + std::to_string(files.size()) +
                " plugin files in " + std::to_string(took.count()) + " us");
  }
}

Result<void> Kernel::load_file(const fs::path& file) {
  auto plugin = load_plugin(file);
  Result<void> added = plugin ? registry_->add(std::move(*plugin)) : fail(std::move(plugin.error()));
  if (!added) {
    log_->debug("refused " + file.string() + ": " + added.error().message);
    refusals_.push_back({file, added.error()});
  }
  return added;
}

Result<void> Kernel::add_static(const PluginDescriptor* descriptor, const std::string& origin) {
  auto plugin = read_descriptor(descriptor, origin, nullptr);
  if (!plugin) {
    return fail(std::move(plugin.error()));
  }
  return registry_->add(std::move(*plugin));
}

}  // namespace ember::kernel
