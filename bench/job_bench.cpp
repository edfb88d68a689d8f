// The job path's costs, each beside a baseline measured in the same run (docs/BENCHMARKS.md, issue 4):
//
//   launch   executor.start(): pipe open, bootstrap file, process launch, the trainer's Client API init
//            (plugin load, pipe attach, HELLO) until SESSION_READY; for the C++ test trainer and the LibTorch
//            example trainer. Baseline: fork+exec+wait of /bin/true.
//   round    one task of a 100 MiB model to N sites at once (N = 2, 8) through executor.external-trainer over
//            pipe.socket, each trainer adding 1 to every element (its "training") and answering with the
//            model; the executors decode and check each result. Baseline: the same bytes (100 MiB each way
//            per site) through N pairs of sessions over pipe.socket in this process, with no trainer.
//   relay    peak resident memory of this process (the client job) while a 1 GiB model goes to one trainer
//            and its 1 GiB answer comes back, beside the memory the model itself takes.
//
//   job_bench --ember-build DIR --trainer PATH [--hello-trainer PATH] [--launch-runs N] [--round-runs N]
//             [--relay-mib M] [--json FILE]

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>

#include <ember/executor.hpp>
#include <ember/pipe.hpp>
#include <nlohmann/json.hpp>

#include "config.hpp"
#include "job_scope.hpp"
#include "kernel.hpp"
#include "session/session.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ember;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::uint64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      return std::strtoull(line.c_str() + std::strlen(key), nullptr, 10);
    }
  }
  return 0;
}

struct Bench {
  fs::path ember_build;
  fs::path work;
  std::unique_ptr<kernel::Kernel> kernel;

  void init() {
    kernel::KernelSettings ks;
    ks.plugin_paths = {ember_build / "plugins"};
    ks.use_default_paths = false;
    ks.use_env_path = false;
    ks.log.level = LogLevel::warn;
    ks.log.level_set = true;
    ks.workspace = work;
    kernel = std::make_unique<kernel::Kernel>(ks);
    kernel->load_plugins();
  }

  fs::path write_job(const std::string& name, const std::vector<std::string>& command) {
    auto dir = work / name;
    fs::create_directories(dir);
    std::ostringstream toml;
    toml << "schema_version = 1\n[job]\nname = \"" << name << "\"\n"
         << "[timeouts]\nlaunch = \"60s\"\nheartbeat_interval = \"2s\"\nheartbeat_timeout = \"30s\"\n"
         << "task_wait = \"60s\"\nresult_wait = \"10m\"\nshutdown_grace = \"5s\"\nstream_idle = \"60s\"\n"
         << "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [";
    for (std::size_t i = 0; i < command.size(); ++i) {
      toml << (i ? ", " : "") << "\"" << command[i] << "\"";
    }
    toml << "]\n[components.launcher]\ntype = \"launcher.process\"\n"
         << "[components.pipe]\ntype = \"pipe.socket\"\naddress = \"unix:{workspace}/t.sock\"\n";
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
      std::cerr << "job_bench: " << config.error().message << "\n";
      std::exit(1);
    }
    auto info = kernel::job_info(*config, run, site, kernel->search_paths());
    return std::make_unique<kernel::JobScope>(kernel->registry(), std::move(*config), std::move(info), ws,
                                              subs, std::string());
  }

  std::shared_ptr<Executor> executor(kernel::JobScope& s) {
    auto e = s.create_configured_as<Executor>("trainer");
    if (!e) {
      std::cerr << "job_bench: " << e.error().message << "\n";
      std::exit(1);
    }
    return *e;
  }
};

json bench_launch(Bench& b, const std::string& id, const std::string& label, const fs::path& trainer,
                  int runs) {
  auto job = b.write_job("launch-" + id, {trainer.string()});
  std::vector<double> samples;
  for (int i = 0; i < runs; ++i) {
    auto s = b.scope(job, "site-1", "launch-" + id + "-" + std::to_string(i));
    auto e = b.executor(*s);
    auto t0 = Clock::now();
    auto started = e->start({});
    double took = ms_since(t0);
    if (!started) {
      std::cerr << "job_bench: launch " << label << ": " << started.error().message << "\n";
      std::exit(1);
    }
    samples.push_back(took);
    e->stop();
  }
  return json{{"trainer", label}, {"median_ms", median(samples)}, {"samples_ms", samples}};
}

json bench_spawn_baseline(const fs::path& program, int runs) {
  std::vector<double> samples;
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    pid_t pid = ::fork();
    if (pid == 0) {
      ::unsetenv("EMBER_BOOTSTRAP");
      int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 2);
      ::execl(program.c_str(), program.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    samples.push_back(ms_since(t0));
  }
  return json{{"program", program.string()}, {"median_ms", median(samples)}, {"samples_ms", samples}};
}

TaskData model_task(std::uint64_t bytes) {
  auto buffer = std::make_shared<std::vector<float>>(bytes / sizeof(float), 0.0f);
  WireTensor t;
  t.name = "w";
  t.dtype = DType::F32;
  t.shape = {static_cast<std::int64_t>(buffer->size())};
  t.bytes = std::as_bytes(std::span<const float>(*buffer));
  t.owner = buffer;
  TaskData task;
  task.name = "train";
  task.total_rounds = 1;
  task.params.push_back(std::move(t));
  return task;
}

// N executors, each with its trainer, set up once; run() is one round of the task to all of them at once.
class RealRounds {
 public:
  RealRounds(Bench& b, const fs::path& trainer, int clients, std::uint64_t bytes) : task_(model_task(bytes)) {
    auto job = b.write_job("round", {trainer.string()});
    for (int i = 0; i < clients; ++i) {
      scopes_.push_back(b.scope(job, "site-" + std::to_string(i + 1), "round-" + std::to_string(clients)));
      executors_.push_back(b.executor(*scopes_.back()));
      if (auto s = executors_.back()->start({}); !s) {
        std::cerr << "job_bench: round start: " << s.error().message << "\n";
        std::exit(1);
      }
    }
  }
  RealRounds(const RealRounds&) = delete;
  RealRounds& operator=(const RealRounds&) = delete;
  ~RealRounds() {
    for (auto& e : executors_) {
      e->stop();
    }
  }

  // The round's wall time and the slowest trainer's own work on the tensors, in ms.
  std::pair<double, double> run() {
    task_.round = round_++;
    std::atomic<int> failed{0};
    std::mutex train_mutex;
    double train_ms = 0;
    auto t0 = Clock::now();
    {
      // std::thread, not jthread: a jthread's destructor requests stop, which would cancel the tasks.
      std::vector<std::thread> threads;
      for (auto& e : executors_) {
        threads.emplace_back([&, e] {
          auto result = e->execute(task_, {});
          if (!result) {
            std::cerr << "job_bench: round: " << result.error().message << "\n";
            ++failed;
            return;
          }
          std::lock_guard lock(train_mutex);
          train_ms = std::max(train_ms, result->metrics["train_ms"]);
        });
      }
      for (auto& t : threads) {
        t.join();
      }
    }
    double took = ms_since(t0);
    if (failed != 0) {
      std::exit(1);
    }
    return {took, train_ms};
  }

 private:
  TaskData task_;
  std::uint64_t round_ = 0;
  std::vector<std::unique_ptr<kernel::JobScope>> scopes_;
  std::vector<std::shared_ptr<Executor>> executors_;
};

// The same bytes through the same pipe and session layer, without a trainer process: N pairs in this process.
class CountingSink final : public session::PayloadSink {
 public:
  Result<void> write(std::uint64_t, std::span<const std::byte> bytes) override {
    n_ += bytes.size();
    return ok();
  }
  void reset() override { n_ = 0; }
  Result<void> finish() override { return ok(); }

 private:
  std::uint64_t n_ = 0;
};

class ZeroSource final : public session::PayloadSource {
 public:
  explicit ZeroSource(std::uint64_t n) : n_(n) {}
  std::uint64_t size() const override { return n_; }
  Result<void> read(std::uint64_t, std::span<std::byte> out) const override {
    std::memset(out.data(), 0, out.size());
    return ok();
  }

 private:
  std::uint64_t n_;
};

class BaselineRounds {
 public:
  BaselineRounds(Bench& b, int clients, std::uint64_t bytes)
      : pairs_(static_cast<std::size_t>(clients)), source_(std::make_shared<ZeroSource>(bytes)) {
    session::Settings settings;
    settings.heartbeat_interval = 2s;
    settings.heartbeat_timeout = 30s;
    const std::string token(64, 'a');
    for (int i = 0; i < clients; ++i) {
      auto& p = pairs_[static_cast<std::size_t>(i)];
      Options options;
      options.set("address", "unix:" + (b.work / ("base-" + std::to_string(i) + ".sock")).string());
      p.pipe = *b.kernel->registry().create_as<Pipe>("pipe.socket", options);
      auto job_end = p.pipe->open(PipeSide::job, 10s, session::admit_hello(token));
      std::unique_ptr<PipeEndpoint> trainer_end;
      std::jthread attach([&] { trainer_end = std::move(*p.pipe->open(PipeSide::trainer, 10s)); });
      auto log = b.kernel->logs().get("bench");
      p.job = std::make_unique<session::Session>(session::Role::job, std::move(*job_end), settings, log);
      attach.join();
      p.trainer =
          std::make_unique<session::Session>(session::Role::trainer, std::move(trainer_end), settings, log);
      for (auto* s : {p.job.get(), p.trainer.get()}) {
        s->set_sink_factory([](const session::Message&) { return std::make_unique<CountingSink>(); });
      }
      std::jthread hello([&] { (void)p.trainer->hello(token); });
      (void)p.job->accept(token);
    }
  }
  BaselineRounds(const BaselineRounds&) = delete;
  BaselineRounds& operator=(const BaselineRounds&) = delete;
  ~BaselineRounds() {
    for (auto& p : pairs_) {
      p.trainer->close();
      p.job->close();
    }
  }

  // One round's wall time in ms: every pair's job end sends the bytes, its trainer end answers with as many.
  double run() {
    auto t0 = Clock::now();
    {
      std::vector<std::jthread> threads;
      for (auto& p : pairs_) {
        threads.emplace_back([&p, source = source_] {
          std::jthread back([&] {
            while (true) {
              auto m = p.trainer->receive(100ms);
              if (m && *m && (*m)->op == wire::Op::task_ready) {
                break;
              }
            }
            (void)p.trainer->send(wire::Op::result_ready, "train", {}, source);
          });
          (void)p.job->send(wire::Op::task_ready, "train", {}, source);
          while (true) {
            auto m = p.job->receive(100ms);
            if (m && *m && (*m)->op == wire::Op::result_ready) {
              break;
            }
          }
        });
      }
    }
    return ms_since(t0);
  }

 private:
  struct Pair {
    std::shared_ptr<Pipe> pipe;
    std::unique_ptr<session::Session> job, trainer;
  };
  std::vector<Pair> pairs_;
  std::shared_ptr<ZeroSource> source_;
};

// Rounds through trainers and baseline rounds taken in turn (the order swapped every run), so a slow moment
// of the machine falls on both alike. One warm-up round of each first: the trainers allocate their model
// memory once, as real trainers do, and the executors' receive buffers are allocated once.
std::pair<json, json> bench_rounds(Bench& b, const fs::path& trainer, int clients, int runs,
                                   std::uint64_t bytes) {
  RealRounds real(b, trainer, clients, bytes);
  BaselineRounds baseline(b, clients, bytes);
  (void)real.run();
  (void)baseline.run();
  std::vector<double> samples, net, base;
  for (int r = 0; r < runs; ++r) {
    auto one_real = [&] {
      auto [took, train_ms] = real.run();
      samples.push_back(took);
      net.push_back(took - train_ms);
    };
    if (r % 2 == 0) {
      one_real();
      base.push_back(baseline.run());
    } else {
      base.push_back(baseline.run());
      one_real();
    }
  }
  // Beyond training: the round's wall time less the slowest trainer's own work on the tensors.
  return {json{{"clients", clients},
               {"median_ms", median(samples)},
               {"beyond_training_ms", median(net)},
               {"samples_ms", samples},
               {"beyond_training_samples_ms", net}},
          json{{"clients", clients}, {"median_ms", median(base)}, {"samples_ms", base}}};
}

json bench_relay(Bench& b, const fs::path& trainer, std::uint64_t bytes) {
  auto job = b.write_job("relay", {trainer.string()});
  auto s = b.scope(job, "site-1", "relay");
  auto e = b.executor(*s);
  if (auto st = e->start({}); !st) {
    std::cerr << "job_bench: relay start: " << st.error().message << "\n";
    std::exit(1);
  }
  const auto before = status_kib("VmRSS:");
  const auto anon_before = status_kib("RssAnon:");
  auto task = model_task(bytes);
  std::memset(const_cast<std::byte*>(task.params[0].bytes.data()), 0, task.params[0].bytes.size());
  const auto with_model = status_kib("VmRSS:");
  std::atomic<bool> done{false};
  std::uint64_t peak = with_model;
  std::uint64_t anon_peak = status_kib("RssAnon:");
  std::jthread sampler([&] {
    while (!done) {
      peak = std::max(peak, status_kib("VmRSS:"));
      anon_peak = std::max(anon_peak, status_kib("RssAnon:"));
      std::this_thread::sleep_for(5ms);
    }
  });
  auto result = e->execute(task, {});
  peak = std::max(peak, status_kib("VmRSS:"));
  anon_peak = std::max(anon_peak, status_kib("RssAnon:"));
  done = true;
  sampler.join();
  if (!result) {
    std::cerr << "job_bench: relay: " << result.error().message << "\n";
    std::exit(1);
  }
  const auto with_result = status_kib("VmRSS:");
  e->stop();
  // The client job's own memory: the anonymous memory it holds beyond the model the task came with (in
  // `ember simulate` that is the server's copy); a spilled result is file pages, counted in VmRSS only.
  const double model_mib = static_cast<double>(bytes >> 20);
  return json{{"model_mib", model_mib},
              {"rss_before_mib", before / 1024.0},
              {"rss_with_model_mib", with_model / 1024.0},
              {"rss_peak_mib", peak / 1024.0},
              {"rss_with_result_mib", with_result / 1024.0},
              {"rss_anon_before_mib", anon_before / 1024.0},
              {"rss_anon_peak_mib", anon_peak / 1024.0},
              {"own_anon_peak_mib", anon_peak / 1024.0 - model_mib}};
}

}  // namespace

int main(int argc, char** argv) {
  Bench b;
  fs::path trainer, hello;
  fs::path json_out;
  int launch_runs = 20, round_runs = 3;
  std::uint64_t relay_mib = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--ember-build") {
      b.ember_build = argv[i + 1];
    } else if (a == "--trainer") {
      trainer = argv[i + 1];
    } else if (a == "--hello-trainer") {
      hello = argv[i + 1];
    } else if (a == "--launch-runs") {
      launch_runs = std::atoi(argv[i + 1]);
    } else if (a == "--round-runs") {
      round_runs = std::atoi(argv[i + 1]);
    } else if (a == "--relay-mib") {
      relay_mib = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (a == "--json") {
      json_out = argv[i + 1];
    }
  }
  if (b.ember_build.empty() || trainer.empty()) {
    std::cerr << "usage: job_bench --ember-build DIR --trainer PATH [--hello-trainer PATH] [--json FILE]\n";
    return 2;
  }
  char tmpl[] = "/tmp/ember-job-bench.XXXXXX";
  b.work = ::mkdtemp(tmpl);
  b.init();
  json out;
  if (relay_mib > 0) {
    out["relay"] = bench_relay(b, trainer, relay_mib << 20);  // first, while the heap is fresh
  }
  out["launch"] = json::array();
  out["launch"].push_back(
      bench_launch(b, "test-trainer", "test trainer (C++, Client API only)", trainer, launch_runs));
  if (!hello.empty() && fs::exists(hello)) {
    out["launch"].push_back(bench_launch(b, "hello-trainer", "hello trainer (C++, LibTorch)", hello,
                                         std::max(3, launch_runs / 4)));
  }
  out["spawn_baseline"] = bench_spawn_baseline("/bin/true", launch_runs);
  if (!hello.empty() && fs::exists(hello)) {
    // The LibTorch trainer's own start: it loads LibTorch, finds no bootstrap file and exits.
    out["hello_start_baseline"] = bench_spawn_baseline(hello, std::max(3, launch_runs / 4));
  }
  constexpr std::uint64_t model = std::uint64_t{100} << 20;
  out["round"] = json::array();
  out["round_baseline"] = json::array();
  for (int clients : {2, 8}) {
    auto [round, baseline] = bench_rounds(b, trainer, clients, round_runs, model);
    out["round"].push_back(std::move(round));
    out["round_baseline"].push_back(std::move(baseline));
  }
  std::error_code ec;
  fs::remove_all(b.work, ec);
  std::cout << out.dump(2) << "\n";
  if (!json_out.empty()) {
    std::ofstream(json_out) << out.dump(2) << "\n";
  }
  return 0;
}
