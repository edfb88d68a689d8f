// launcher.docker's start cost (docs/BENCHMARKS.md, "Docker launcher"), beside the engine's own, in one run:
//
//   measured   executor.external-trainer's start() through launcher.docker: the bootstrap file, container
//              create and start over the Engine API, the trainer's Client API init (plugin load, pipe attach,
//              HELLO) until SESSION_READY. The same through launcher.process shows what the container adds.
//   baselines  `podman --remote run --rm` through the same engine (the service on the same socket) of the
//   same
//              image: once running the same trainer, which finds no bootstrap file and exits (the engine's
//              start plus the trainer's own), and once running busybox's `true` (the engine's start alone).
//
// The engine is podman's Docker-compatible service started for the run (tests/docker/podman_engine.hpp), with
// a busybox image imported without a registry; the trainer runs from the build tree, seen read-only with the
// host's /usr. Exits 77 when podman cannot run here.
//
//   docker_bench --ember-build DIR --trainer PATH [--runs N] [--json FILE]

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include <ember/executor.hpp>
#include <nlohmann/json.hpp>

#include "config.hpp"
#include "job_scope.hpp"
#include "kernel.hpp"
#include "podman_engine.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ember;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct Bench {
  fs::path ember_build;
  fs::path work;
  test::PodmanEngine* engine = nullptr;
  std::unique_ptr<kernel::Kernel> kernel;

  void init() {
    kernel::KernelSettings ks;
    ks.plugin_paths = {ember_build / "plugins"};
    ks.use_default_paths = false;
    ks.use_env_path = false;
    ks.log.level = std::getenv("EMBER_BENCH_DEBUG") ? LogLevel::debug : LogLevel::warn;
    ks.log.level_set = true;
    ks.workspace = work;
    kernel = std::make_unique<kernel::Kernel>(ks);
    kernel->load_plugins();
  }

  fs::path write_job(const std::string& name, const fs::path& trainer, bool in_container) {
    auto dir = work / name;
    fs::create_directories(dir);
    std::ostringstream toml;
    toml << "schema_version = 1\n[job]\nname = \"" << name << "\"\n"
         << "[timeouts]\nlaunch = \"60s\"\nheartbeat_interval = \"2s\"\nheartbeat_timeout = \"30s\"\n"
         << "task_wait = \"60s\"\nresult_wait = \"10m\"\nshutdown_grace = \"5s\"\nstream_idle = \"60s\"\n"
         << "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [\"" << trainer.string()
         << "\"]\n";
    if (in_container) {
      toml << "[components.launcher]\ntype = \"launcher.docker\"\nsocket = \"" << engine->socket().string()
           << "\"\nimage = \"" << test::PodmanEngine::image << "\"\nallowed_images = [\""
           << test::PodmanEngine::image << "\"]\nallowed_mounts = [\"" << ember_build.string()
           << "\", \"/usr\"]\nmounts = [\"" << ember_build.string() << "\", \"/usr\"]\n";
    } else {
      toml << "[components.launcher]\ntype = \"launcher.process\"\n";
    }
    toml << "[components.pipe]\ntype = \"pipe.socket\"\naddress = \"unix:{workspace}/t.sock\"\n";
    std::ofstream(dir / "job.toml") << toml.str();
    return dir;
  }

  std::unique_ptr<kernel::JobScope> scope(const fs::path& job, const std::string& site,
                                          const std::string& run) {
    auto ws = work / run / site;
    fs::create_directories(ws);
    kernel::Substitutions subs{site, run, ws.string()};
    auto config = kernel::load_job(job, kernel->registry(), subs);
    if (!config) {
      std::cerr << "docker_bench: " << config.error().message << "\n";
      std::exit(1);
    }
    auto info = kernel::job_info(*config, run, site, kernel->search_paths());
    return std::make_unique<kernel::JobScope>(kernel->registry(), std::move(*config), std::move(info), ws,
                                              subs, std::string());
  }
};

json bench_launch(Bench& b, const std::string& id, const std::string& label, const fs::path& trainer,
                  bool in_container, int runs) {
  auto job = b.write_job("launch-" + id, trainer, in_container);
  std::vector<double> samples;
  for (int i = -1; i < runs; ++i) {  // one warm-up run first
    auto s = b.scope(job, "site-1", "launch-" + id + "-" + std::to_string(i + 1));
    auto e = s->create_configured_as<Executor>("trainer");
    if (!e) {
      std::cerr << "docker_bench: " << e.error().message << "\n";
      std::exit(1);
    }
    auto t0 = Clock::now();
    auto started = (*e)->start({});
    double took = ms_since(t0);
    if (!started) {
      std::cerr << "docker_bench: launch " << label << ": " << started.error().message << "\n";
      std::exit(1);
    }
    if (i >= 0) {
      samples.push_back(took);
    }
    (*e)->stop();
  }
  return json{{"what", label}, {"median_ms", median(samples)}, {"samples_ms", samples}};
}

json bench_podman_run(Bench& b, const std::string& label, const std::vector<std::string>& command, int runs) {
  std::vector<std::string> args{"--remote",  "--url", "unix://" + b.engine->socket().string(), "run", "--rm",
                                "--network", "none"};
  for (const auto& mount : {b.ember_build.string(), std::string("/usr")}) {
    args.insert(args.end(), {"-v", mount + ":" + mount + ":ro"});
  }
  args.push_back(test::PodmanEngine::image);
  args.insert(args.end(), command.begin(), command.end());
  std::vector<double> samples;
  for (int i = -1; i < runs; ++i) {
    auto t0 = Clock::now();
    auto run = b.engine->podman(args);
    double took = ms_since(t0);
    if (run.exit_code < 0 || run.exit_code >= 125) {  // 125..127: podman itself failed, not the program
      std::cerr << "docker_bench: podman run failed (" << run.exit_code << "): " << run.out << "\n";
      std::exit(1);
    }
    if (i >= 0) {
      samples.push_back(took);
    }
  }
  return json{{"what", label}, {"median_ms", median(samples)}, {"samples_ms", samples}};
}

}  // namespace

int main(int argc, char** argv) {
  Bench b;
  fs::path trainer;
  fs::path json_out;
  int runs = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--ember-build") {
      b.ember_build = fs::absolute(argv[i + 1]);
    } else if (a == "--trainer") {
      trainer = fs::absolute(argv[i + 1]);
    } else if (a == "--runs") {
      runs = std::max(1, std::atoi(argv[i + 1]));
    } else if (a == "--json") {
      json_out = argv[i + 1];
    }
  }
  if (b.ember_build.empty() || trainer.empty()) {
    std::cerr << "usage: docker_bench --ember-build DIR --trainer PATH [--runs N] [--json FILE]\n";
    return 2;
  }
  std::string why;
  auto engine = test::PodmanEngine::start(why);
  if (!engine) {
    std::cout << "SKIP: docker_bench needs podman: " << why << "\n";
    return 77;
  }
  b.engine = engine.get();
  char tmpl[] = "/tmp/ember-docker-bench.XXXXXX";
  b.work = ::mkdtemp(tmpl);
  b.init();
  json out;
  out["runs"] = runs;
  out["engine"] = b.engine->podman({"--version"}).out;
  // Taken in turn, so a drift in the machine's load touches each about alike.
  out["launch_docker"] =
      bench_launch(b, "docker", "launch to SESSION_READY through launcher.docker", trainer, true, runs);
  out["run_trainer"] = bench_podman_run(
      b, "podman --remote run --rm of the same image and trainer, to its exit", {trainer.string()}, runs);
  out["run_true"] =
      bench_podman_run(b, "podman --remote run --rm of the same image running true", {"true"}, runs);
  out["launch_process"] =
      bench_launch(b, "process", "launch to SESSION_READY through launcher.process", trainer, false, runs);
  b.kernel.reset();
  engine.reset();
  std::error_code ec;
  fs::remove_all(b.work, ec);
  std::cout << out.dump(2) << "\n";
  if (!json_out.empty()) {
    std::ofstream(json_out) << out.dump(2) << "\n";
  }
  return 0;
}
