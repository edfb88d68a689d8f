// In-process plugin discovery and loading, with Google Benchmark, beside its baselines.
//
//   plugin_load_bench [--reference-dir=DIR] [--bench-dir=DIR] [Google Benchmark flags]
//
// What is measured: a fresh Kernel that discovers and reads every plugin of a folder (the in-tree reference
// plugins, and the ten benchmark plugins): folder scan, each file's .ember_plugin section read with libelf,
// its checks, option defaults and constraints, registry. No plugin is dlopen()ed by the kernel (that happens
// when a component is first created); the libraries are still pinned by an extra dlopen() handle for the
// whole run, as the raw_dlopen baseline needs them mapped. startup_bench measures fresh processes.
// Baselines in the same run: constructing a Kernel that loads nothing, discovery alone, and a bare
// dlopen()/dlclose() of the same (mapped) files.

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <benchmark/benchmark.h>

#include "kernel.hpp"
#include "plugin_loader.hpp"

namespace {

namespace fs = std::filesystem;
using ember::kernel::Kernel;
using ember::kernel::KernelSettings;

KernelSettings settings_for(const fs::path& dir) {
  KernelSettings settings;
  if (!dir.empty()) {
    settings.plugin_paths.push_back(dir);
  }
  settings.use_env_path = false;
  settings.use_default_paths = false;
  settings.log.level = ember::LogLevel::off;
  return settings;
}

std::vector<fs::path> discover(const fs::path& dir) {
  std::vector<ember::kernel::Refusal> refusals;
  return ember::kernel::discover_plugins({dir}, refusals);
}

// The 90th percentile of the repetitions (nearest rank), beside Google Benchmark's mean and median.
double p90(const std::vector<double>& values) {
  if (values.empty()) {
    return 0;
  }
  std::vector<double> sorted = values;
  std::sort(sorted.begin(), sorted.end());
  auto rank = static_cast<std::size_t>(std::ceil(0.9 * static_cast<double>(sorted.size())));
  return sorted[std::max<std::size_t>(rank, 1) - 1];
}

void kernel_construct(benchmark::State& state) {
  for (auto _ : state) {
    Kernel kernel(settings_for({}));
    benchmark::DoNotOptimize(kernel.registry().types());
  }
}

void kernel_load(benchmark::State& state, const fs::path& dir, std::size_t expected) {
  for (auto _ : state) {
    Kernel kernel(settings_for(dir));
    kernel.load_plugins();
    if (kernel.registry().plugins().size() != expected) {
      state.SkipWithError("not every plugin loaded (see `ember plugins --plugin-path DIR`)");
      break;
    }
  }
  state.counters["plugins"] = static_cast<double>(expected);
}

void discovery(benchmark::State& state, const fs::path& dir) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(discover(dir));
  }
}

void raw_dlopen(benchmark::State& state, const std::vector<fs::path>& files) {
  std::vector<void*> handles(files.size());
  for (auto _ : state) {
    for (std::size_t i = 0; i < files.size(); ++i) {
      handles[i] = dlopen(files[i].c_str(), RTLD_NOW | RTLD_LOCAL);
    }
    for (void* handle : handles) {
      if (handle != nullptr) {
        dlclose(handle);
      }
    }
  }
}

// Holds every library of a folder open, so iterations never map or unmap it.
std::vector<void*> pin(const std::vector<fs::path>& files) {
  std::vector<void*> handles;
  for (const auto& file : files) {
    void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      std::cerr << "plugin_load_bench: " << dlerror() << "\n";
      std::exit(1);
    }
    handles.push_back(handle);
  }
  return handles;
}

void add(const std::string& name, auto&& function) {
  benchmark::RegisterBenchmark(name.c_str(), function)
      ->Unit(benchmark::kMicrosecond)
      ->Repetitions(50)
      ->MinTime(0.02)
      ->ReportAggregatesOnly(true)
      ->ComputeStatistics("p90", p90);
}

void register_folder(const std::string& tag, const fs::path& dir, std::vector<void*>& pinned) {
  auto files = discover(dir);
  if (files.empty()) {
    std::cerr << "plugin_load_bench: no plugins in " << dir.string() << "; skipping the " << tag
              << " benchmarks\n";
    return;
  }
  auto handles = pin(files);
  pinned.insert(pinned.end(), handles.begin(), handles.end());
  std::size_t n = files.size();
  add("kernel_load/" + tag, [dir, n](benchmark::State& s) { kernel_load(s, dir, n); });
  add("discovery/" + tag, [dir](benchmark::State& s) { discovery(s, dir); });
  add("raw_dlopen/" + tag, [files](benchmark::State& s) { raw_dlopen(s, files); });
}

bool take_flag(std::string_view arg, std::string_view name, fs::path& value) {
  if (arg.substr(0, name.size()) != name) {
    return false;
  }
  value = fs::path(std::string(arg.substr(name.size())));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  fs::path reference_dir = EMBER_BENCH_REFERENCE_DIR;
  fs::path bench_dir = EMBER_BENCH_PLUGIN_DIR;
  for (int i = 1; i < argc; ++i) {
    if (!take_flag(argv[i], "--reference-dir=", reference_dir) &&
        !take_flag(argv[i], "--bench-dir=", bench_dir)) {
      std::cerr << "plugin_load_bench: unknown argument '" << argv[i] << "'\n";
      return 2;
    }
  }
  std::vector<void*> pinned;
  add("kernel_construct", kernel_construct);
  register_folder("reference", reference_dir, pinned);
  register_folder("bench10", bench_dir, pinned);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
