// Start-up and plugin-load time of `ember` in fresh processes, beside its baselines, measured in one run.
//
//   startup_bench --ember PATH --raw PATH --plugins DIR [--tree DIR] [--runs N] [--warmup N] [--json FILE]
//
// --tree names the build tree's plugin folder (every in-tree plugin, converter.torch and its LibTorch
// included): `ember plugins` over it, beside `ember version`, is the cost of listing what a site has. Each
// sample also records the process's peak resident memory (wait4's ru_maxrss).
//
// Every sample spawns a new process, so no plugin library is mapped yet when it starts (the files are in
// the page cache after the warm-up runs: this is a warm-cache cold start, as when a job starts on a site).
// The cases run interleaved, one sample of each in turn, so a slow moment of a shared machine falls on all
// of them alike. The time is wall time from posix_spawn to waitpid; output goes to /dev/null.

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

extern char** environ;

namespace {

namespace fs = std::filesystem;

struct Case {
  std::string id;
  std::string label;
  std::vector<std::string> argv;
  std::vector<double> samples_ms;
  long peak_rss_kib = 0;  ///< the largest ru_maxrss of any sample
};

struct Stats {
  double median = 0;
  double p90 = 0;
  double min = 0;
  double mean = 0;
};

Stats stats_of(std::vector<double> values) {
  Stats s;
  if (values.empty()) {
    return s;
  }
  std::sort(values.begin(), values.end());
  std::size_t n = values.size();
  s.median = n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  // Nearest rank: the smallest sample with at least 90% of the samples at or below it.
  auto rank = static_cast<std::size_t>(std::ceil(0.9 * static_cast<double>(n)));
  s.p90 = values[std::max<std::size_t>(rank, 1) - 1];
  s.min = values.front();
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(n);
  return s;
}

// The environment without EMBER_* variables, so a developer's settings cannot change what is measured.
std::vector<char*> clean_environment() {
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "EMBER_", 6) != 0) {
      env.push_back(*e);
    }
  }
  env.push_back(nullptr);
  return env;
}

class FileActions {
 public:
  FileActions() {
    posix_spawn_file_actions_init(&actions_);
    posix_spawn_file_actions_addopen(&actions_, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions_, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  }
  ~FileActions() { posix_spawn_file_actions_destroy(&actions_); }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;
  const posix_spawn_file_actions_t* get() const { return &actions_; }

 private:
  posix_spawn_file_actions_t actions_;
};

// Runs argv once; the wall time in milliseconds, or nothing (with a message) if it did not exit with 0.
// `peak_rss_kib` is raised to the child's peak resident memory.
std::optional<double> run_once(const std::vector<std::string>& args, std::vector<char*>& env,
                               const FileActions& actions, long& peak_rss_kib) {
  std::vector<char*> argv;
  for (const auto& a : args) {
    argv.push_back(const_cast<char*>(a.c_str()));
  }
  argv.push_back(nullptr);
  auto started = std::chrono::steady_clock::now();
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], actions.get(), nullptr, argv.data(), env.data());
  if (rc != 0) {
    std::cerr << "startup_bench: cannot run " << args[0] << ": " << std::strerror(rc) << "\n";
    return std::nullopt;
  }
  int status = 0;
  rusage usage{};
  while (wait4(pid, &status, 0, &usage) < 0) {
    if (errno != EINTR) {
      std::cerr << "startup_bench: waitpid: " << std::strerror(errno) << "\n";
      return std::nullopt;
    }
  }
  auto took = std::chrono::steady_clock::now() - started;
  peak_rss_kib = std::max(peak_rss_kib, usage.ru_maxrss);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::cerr << "startup_bench: " << args[0] << " failed (status " << status << ")\n";
    return std::nullopt;
  }
  return std::chrono::duration<double, std::milli>(took).count();
}

// A folder that exists for the life of the object: the "no plugins" side of the baselines.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/ember-bench.XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      throw std::system_error(errno, std::generic_category(), "mkdtemp");
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "\"";
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    out += (out.empty() ? "" : " ") + a;
  }
  return out;
}

void write_json(std::ostream& out, const std::vector<Case>& cases, int runs, int warmup) {
  out << "{\n  \"runs\": " << runs << ",\n  \"warmup\": " << warmup << ",\n  \"cases\": [\n";
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    auto s = stats_of(c.samples_ms);
    out << "    {\"id\": " << json_string(c.id) << ", \"label\": " << json_string(c.label)
        << ", \"command\": " << json_string(command_line(c.argv)) << ", \"median_ms\": " << s.median
        << ", \"p90_ms\": " << s.p90 << ", \"min_ms\": " << s.min << ", \"mean_ms\": " << s.mean
        << ", \"peak_rss_kib\": " << c.peak_rss_kib << ", \"samples_ms\": [";
    for (std::size_t k = 0; k < c.samples_ms.size(); ++k) {
      out << (k == 0 ? "" : ", ") << c.samples_ms[k];
    }
    out << "]}" << (i + 1 < cases.size() ? "," : "") << "\n";
  }
  out << "  ]\n}\n";
}

int usage() {
  std::cerr << "usage: startup_bench --ember PATH --raw PATH --plugins DIR [--tree DIR] [--runs N] "
               "[--warmup N] [--json FILE]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string ember;
  std::string raw;
  std::string plugins;
  std::string tree;
  std::string json_file;
  int runs = 50;
  int warmup = 3;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (i + 1 >= argc) {
      return usage();
    }
    std::string value = argv[++i];
    if (arg == "--ember") {
      ember = value;
    } else if (arg == "--raw") {
      raw = value;
    } else if (arg == "--plugins") {
      plugins = value;
    } else if (arg == "--tree") {
      tree = value;
    } else if (arg == "--runs") {
      runs = std::atoi(value.c_str());
    } else if (arg == "--warmup") {
      warmup = std::atoi(value.c_str());
    } else if (arg == "--json") {
      json_file = value;
    } else {
      return usage();
    }
  }
  if (ember.empty() || raw.empty() || plugins.empty() || runs < 1 || warmup < 0) {
    return usage();
  }

  TempDir empty;
  auto ember_plugins = [&](const std::string& dir) {
    return std::vector<std::string>{
        ember, "--no-default-plugins", "--no-env-plugin-path", "--plugin-path", dir, "plugins", "--json"};
  };
  std::vector<Case> cases = {
      {"ember_plugins", "ember plugins --json, 10 plugins", ember_plugins(plugins), {}},
      {"ember_plugins_empty", "ember plugins --json, empty folder", ember_plugins(empty.path()), {}},
      {"ember_version", "ember version", {ember, "version"}, {}},
      {"raw_dlopen", "raw dlopen of the 10 plugins", {raw, plugins}, {}},
      {"raw_dlopen_empty", "raw dlopen program, no files", {raw, empty.path()}, {}},
  };
  if (!tree.empty()) {
    cases.push_back({"ember_plugins_tree",
                     "ember plugins --json, every in-tree plugin (build tree)",
                     ember_plugins(tree),
                     {}});
  }

  auto env = clean_environment();
  FileActions actions;
  for (int i = 0; i < warmup + runs; ++i) {
    for (auto& c : cases) {
      auto ms = run_once(c.argv, env, actions, c.peak_rss_kib);
      if (!ms) {
        return 1;
      }
      if (i >= warmup) {
        c.samples_ms.push_back(*ms);
      }
    }
  }

  std::printf("%-56s %10s %10s %10s %10s %12s\n", "case", "median ms", "p90 ms", "min ms", "mean ms",
              "peak RSS MiB");
  for (const auto& c : cases) {
    auto s = stats_of(c.samples_ms);
    std::printf("%-56s %10.2f %10.2f %10.2f %10.2f %12.1f\n", c.label.c_str(), s.median, s.p90, s.min, s.mean,
                static_cast<double>(c.peak_rss_kib) / 1024.0);
  }
  if (!json_file.empty()) {
    std::ofstream out(json_file);
    write_json(out, cases, runs, warmup);
    if (!out) {
      std::cerr << "startup_bench: cannot write " << json_file << "\n";
      return 1;
    }
  }
  return 0;
}
