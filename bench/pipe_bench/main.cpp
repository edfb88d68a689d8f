// pipe_bench: the pipes through the session layer, beside raw sockets and files, with each end in its own
// process (DESIGN §11).
//
//   pipe_bench [--plugins DIR] [--runs N] [--json FILE] [--case ID]... [--no-pieces] [--list]
//
// For every case and every run, the orchestrator (this process) starts a fresh measuring end (this program
// again, `--role job` or `--role raw-near`), which starts its far end (`--role trainer` or `--role
// raw-far`), measures, reads both ends' peak resident memory while they still run, and reports in a JSON
// file. The runs go round all cases in turn, so a slow moment of a shared machine falls on measured and
// baseline alike; each case's figure is the median over its runs. --case (repeatable) runs only the cases
// named; --list prints their ids. Last, unless --no-pieces, the pieces of the per-chunk work are timed
// alone in this process (pieces.hpp).
//
// Cases: one-way throughput of 1 KiB, 1 MiB, 100 MiB and 1 GiB messages; the round trip of 64-byte
// messages; 64-byte messages per second one way; each through pipe.socket (Unix socket and TCP loopback)
// and pipe.file (and pipe.cell, self-hosted on loopback, where the cell network is built), and each beside
// a raw Unix socket, raw loopback TCP and raw files. The ends run where the
// scheduler puts them; the socket cases of the round trip and of 100 MiB and 1 GiB are measured again with
// both ends pinned, to one CPU (`/same-cpu`, round trip only) and to two (`/two-cpus`), because which of
// those the scheduler picks for a pair of processes changes a round trip by 3x and a bulk copy by 2x, and
// it may pick differently for the pipe and for its baseline.

#include <sched.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "ends.hpp"
#include "pieces.hpp"
#include "process.hpp"

#ifndef EMBER_BENCH_PIPE_PLUGINS
#define EMBER_BENCH_PIPE_PLUGINS ""
#endif

namespace ember::bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

// A measuring end that takes longer than this is killed and the benchmark fails.
constexpr auto case_bound = std::chrono::minutes(15);

struct Case {
  std::string id;
  Spec spec;
  std::vector<Measurement> runs;
};

std::string size_name(std::uint64_t bytes) {
  if (bytes >= (1u << 30) && bytes % (1u << 30) == 0) {
    return std::to_string(bytes >> 30) + "GiB";
  }
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) {
    return std::to_string(bytes >> 20) + "MiB";
  }
  if (bytes >= (1u << 10) && bytes % (1u << 10) == 0) {
    return std::to_string(bytes >> 10) + "KiB";
  }
  return std::to_string(bytes) + "B";
}

// The CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) {
        cpus.push_back(cpu);
      }
    }
  }
  return cpus;
}

// Every case; the pinned ones on the first one or two of `cpus` (those needing two are left out when
// there is only one).
std::vector<Case> all_cases(const std::vector<int>& cpus) {
  std::vector<std::string> pipes = {"socket-unix", "socket-tcp", "file"};
#ifdef EMBER_BENCH_PIPE_CELL
  pipes.push_back("cell");  // pipe.cell, self-hosted on loopback: beside raw-tcp
#endif
  const std::vector<std::string> raws = {"raw-unix", "raw-tcp", "raw-file"};
  std::vector<std::string> every = pipes;
  every.insert(every.end(), raws.begin(), raws.end());
  std::vector<Case> cases;
  auto add = [&](const std::string& transport, Kind kind, std::uint64_t size, std::uint64_t warmup,
                 std::uint64_t iterations, std::uint32_t chunk = 1u << 20) {
    Case c;
    c.spec.transport = transport;
    c.spec.kind = kind;
    c.spec.size = size;
    c.spec.chunk = chunk;
    c.spec.warmup = warmup;
    c.spec.iterations = iterations;
    c.id = transport + "/" + std::string(to_string(kind)) + "/" + size_name(size);
    if (chunk != 1u << 20) {
      c.id += "/chunk-" + size_name(chunk);
    }
    cases.push_back(std::move(c));
  };
  // Small messages are many per process (a median of hundreds); large ones few, each in a fresh process.
  struct Size {
    std::uint64_t bytes, warmup, iterations;
  };
  const Size hundred_mib{100u << 20, 1, 3}, one_gib{1u << 30, 0, 1}, small_rtt{64, 200, 2000};
  for (auto size : {Size{1u << 10, 20, 200}, Size{1u << 20, 5, 50}, hundred_mib, one_gib}) {
    for (const auto& t : every) {
      add(t, Kind::throughput, size.bytes, size.warmup, size.iterations);
    }
  }
  for (const auto& t : pipes) {
    add(t, Kind::throughput, 1u << 30, 0, 1, 4u << 20);
  }
  for (const auto& t : every) {
    add(t, Kind::latency, small_rtt.bytes, small_rtt.warmup, small_rtt.iterations);
  }
  // The socket cases again, each pipe beside its baseline, with the ends pinned to `near` and `far`.
  auto pinned = [&](Kind kind, Size size, int near, int far) {
    for (const char* t : {"socket-unix", "raw-unix", "socket-tcp", "raw-tcp"}) {
      add(t, kind, size.bytes, size.warmup, size.iterations);
      cases.back().spec.near_cpu = near;
      cases.back().spec.far_cpu = far;
      cases.back().id.append("/").append(cases.back().spec.placement());
    }
  };
  if (!cpus.empty()) {
    pinned(Kind::latency, small_rtt, cpus[0], cpus[0]);
  }
  if (cpus.size() >= 2) {
    pinned(Kind::latency, small_rtt, cpus[0], cpus[1]);
    pinned(Kind::throughput, hundred_mib, cpus[0], cpus[1]);
    pinned(Kind::throughput, one_gib, cpus[0], cpus[1]);
  }
  for (const auto& t : every) {
    add(t, Kind::rate, 64, 1000, 20000);
  }
  return cases;
}

double median(std::vector<double> v) {
  if (v.empty()) {
    return 0;
  }
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Nearest rank: the smallest sample with at least `p` of the samples at or below it.
double percentile(std::vector<double> v, double p) {
  if (v.empty()) {
    return 0;
  }
  std::sort(v.begin(), v.end());
  auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::max<std::size_t>(rank, 1) - 1];
}

Result<Measurement> run_once(const Case& c, const fs::path& work) {
  Spec spec = c.spec;
  spec.role = spec.session() ? "job" : "raw-near";
  spec.work = work;
  spec.result = work / "result.json";
  std::error_code ec;
  fs::remove(spec.result, ec);
  std::vector<std::string> argv = {self_exe()};
  auto args = spec.to_args();
  argv.insert(argv.end(), args.begin(), args.end());
  auto child = Child::spawn(argv);
  if (!child) {
    return fail(std::move(child.error()));
  }
  if (auto ended = expect_clean_exit(**child, case_bound, "the measuring end of " + c.id); !ended) {
    return fail(std::move(ended.error()));
  }
  auto m = read_measurement(spec.result);
  fs::remove(spec.result, ec);
  return m;
}

json cpu_json(const CpuUse& u) {
  return {{"user_s", u.user_s},
          {"system_s", u.system_s},
          {"minor_faults", u.minor_faults},
          {"major_faults", u.major_faults}};
}

// One case's runs, summarised: the figure of each run, their median, both ends' peak memory (the largest
// over the runs), and CPU use summed over the timed parts of all runs.
json summarise(const Case& c, const std::string& command) {
  const auto& s = c.spec;
  json j = {{"id", c.id},
            {"layer", s.session() ? "session" : "raw"},
            {"transport", s.transport},
            {"kind", to_string(s.kind)},
            {"size", s.size},
            {"chunk", s.chunk},
            {"block", s.block},
            {"warmup", s.warmup},
            {"iterations", s.iterations},
            {"placement", s.placement()},
            {"near_cpu", s.near_cpu},
            {"far_cpu", s.far_cpu},
            {"runs", c.runs.size()},
            {"command", command}};
  std::vector<double> values, p99s;
  std::uint64_t near_peak = 0, far_peak = 0, resends = 0;
  double wall = 0;
  CpuUse near_cpu, far_cpu;
  for (const auto& m : c.runs) {
    switch (s.kind) {
      case Kind::throughput:
        values.push_back(median(m.seconds));
        break;
      case Kind::latency:
        values.push_back(median(m.seconds));
        p99s.push_back(percentile(m.seconds, 0.99));
        break;
      case Kind::rate:
        values.push_back(static_cast<double>(s.iterations) / m.seconds.at(0));
        break;
    }
    near_peak = std::max(near_peak, m.near_peak_kib);
    far_peak = std::max(far_peak, m.far_peak_kib);
    resends += m.resends;
    wall += m.timed_wall_s;
    near_cpu = near_cpu + m.near_cpu;
    far_cpu = far_cpu + m.far_cpu;
  }
  j["run_values"] = values;
  switch (s.kind) {
    case Kind::throughput:
      j["seconds"] = median(values);
      j["mb_per_s"] = static_cast<double>(s.size) / median(values) / 1e6;
      break;
    case Kind::latency:
      j["median_us"] = median(values) * 1e6;
      j["p99_us"] = median(p99s) * 1e6;
      j["run_p99_us"] = p99s;
      break;
    case Kind::rate:
      j["msgs_per_s"] = median(values);
      break;
  }
  j["near_peak_kib"] = near_peak;
  j["far_peak_kib"] = far_peak;
  j["resends"] = resends;
  j["timed_wall_s"] = wall;
  j["timed_messages"] = s.iterations * c.runs.size();
  j["near_cpu"] = cpu_json(near_cpu);
  j["far_cpu"] = cpu_json(far_cpu);
  return j;
}

std::string figure(const json& j) {
  char text[96];
  if (j["kind"] == "throughput") {
    std::snprintf(text, sizeof text, "%10.1f MB/s  (%.3f ms per message)", j["mb_per_s"].get<double>(),
                  j["seconds"].get<double>() * 1e3);
  } else if (j["kind"] == "latency") {
    std::snprintf(text, sizeof text, "%10.1f us median, %.1f us p99", j["median_us"].get<double>(),
                  j["p99_us"].get<double>());
  } else {
    std::snprintf(text, sizeof text, "%10.0f messages/s", j["msgs_per_s"].get<double>());
  }
  return text;
}

int usage() {
  std::cerr << "usage: pipe_bench [--plugins DIR] [--runs N] [--json FILE] [--case ID]... [--no-pieces] "
               "[--list]\n";
  return 2;
}

int orchestrate(const std::vector<std::string>& args) {
  fs::path plugins = EMBER_BENCH_PIPE_PLUGINS;
  int runs = 3;
  fs::path json_file;
  std::vector<std::string> only;
  bool list = false;
  bool pieces = true;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--list") {
      list = true;
      continue;
    }
    if (args[i] == "--no-pieces") {
      pieces = false;
      continue;
    }
    if (i + 1 >= args.size()) {
      return usage();
    }
    const auto& value = args[++i];
    if (args[i - 1] == "--plugins") {
      plugins = value;
    } else if (args[i - 1] == "--runs") {
      runs = std::atoi(value.c_str());
    } else if (args[i - 1] == "--json") {
      json_file = value;
    } else if (args[i - 1] == "--case") {
      only.push_back(value);
    } else {
      return usage();
    }
  }
  auto cases = all_cases(allowed_cpus());
  if (list) {
    for (const auto& c : cases) {
      std::cout << c.id << "\n";
    }
    return 0;
  }
  if (!only.empty()) {
    std::erase_if(cases,
                  [&](const Case& c) { return std::find(only.begin(), only.end(), c.id) == only.end(); });
    if (cases.size() != only.size()) {
      std::cerr << "pipe_bench: unknown --case (try --list)\n";
      return 2;
    }
  }
  if (runs < 1 || plugins.empty() || cases.empty()) {
    return usage();
  }
  for (auto& c : cases) {
    c.spec.plugins = plugins;
  }
  const char* base = std::getenv("TMPDIR");
  auto work = TempDir::make(base != nullptr ? base : "/tmp", "ember-pipe-bench");
  if (!work) {
    std::cerr << "pipe_bench: " << work.error().message << "\n";
    return 1;
  }

  std::cout << "pipe_bench: " << cases.size() << " cases, " << runs << " runs each, interleaved; folders in "
            << work->path().string() << "\n";
  for (int run = 1; run <= runs; ++run) {
    for (auto& c : cases) {
      auto m = run_once(c, work->path());
      if (!m) {
        std::cerr << "pipe_bench: " << c.id << ": " << m.error().message << "\n";
        return 1;
      }
      std::printf("[%d/%d] %-40s %9.3f s timed, peak %6.1f / %6.1f MiB\n", run, runs, c.id.c_str(),
                  m->timed_wall_s, static_cast<double>(m->near_peak_kib) / 1024.0,
                  static_cast<double>(m->far_peak_kib) / 1024.0);
      std::fflush(stdout);
      c.runs.push_back(std::move(*m));
    }
  }

  json out = {
      {"runs", runs}, {"plugins", plugins.string()}, {"work_parent", work->path().parent_path().string()}};
  const std::string exe = self_exe();
  std::printf("\n%-40s %s\n", "case (median over runs)", "figure");
  for (const auto& c : cases) {
    auto j = summarise(c, exe + " --runs " + std::to_string(runs) + " --case " + c.id);
    std::printf("%-40s %s%s\n", c.id.c_str(), figure(j).c_str(),
                j["resends"].get<std::uint64_t>() > 0 ? "  (resends!)" : "");
    out["cases"].push_back(std::move(j));
  }
  if (pieces) {
    std::cout << "\nwhere the time goes: pieces on a 1 MiB chunk, and a thread hand-off (median of 200):\n";
  }
  for (const auto& p : pieces ? measure_pieces(1u << 20, 200) : std::vector<Piece>()) {
    std::printf("  %-24s %8.1f us  %s\n", p.id.c_str(), p.median_us, p.label.c_str());
    out["pieces"].push_back(
        {{"id", p.id}, {"label", p.label}, {"median_us", p.median_us}, {"bytes", p.bytes}});
  }
  if (!json_file.empty()) {
    std::ofstream file(json_file);
    file << out.dump(2) << "\n";
    if (!file) {
      std::cerr << "pipe_bench: cannot write " << json_file.string() << "\n";
      return 1;
    }
  }
  return 0;
}

// A measuring or far end: named for `perf` and `top` (pb-job, pb-trainer, pb-raw-near, pb-raw-far).
int run_role(const std::vector<std::string>& args) {
  auto spec = Spec::parse(args);
  if (!spec) {
    std::cerr << "pipe_bench: " << spec.error().message << "\n";
    return 2;
  }
  prctl(PR_SET_NAME, ("pb-" + spec->role).c_str(), 0, 0, 0);
  if (auto pinned = spec->pin(); !pinned) {
    std::cerr << "pipe_bench: " << pinned.error().message << "\n";
    return 1;
  }
  if (spec->role == "trainer") {
    return run_trainer(*spec);
  }
  if (spec->role == "raw-far") {
    return run_raw_far(*spec);
  }
  Result<Measurement> m = fail(Errc::invalid_argument, "unknown --role '" + spec->role + "'");
  if (spec->role == "job") {
    m = run_job(*spec);
  } else if (spec->role == "raw-near") {
    m = run_raw_near(*spec);
  }
  if (!m) {
    std::cerr << "pipe_bench " << spec->role << " " << spec->transport << ": " << m.error().message << "\n";
    return 1;
  }
  if (auto written = write_measurement(*m, spec->result); !written) {
    std::cerr << "pipe_bench: " << written.error().message << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ember::bench

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool role = std::find(args.begin(), args.end(), "--role") != args.end();
  return role ? ember::bench::run_role(args) : ember::bench::orchestrate(args);
}
