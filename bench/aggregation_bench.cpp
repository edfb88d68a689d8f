// FedAvg aggregation speed (workflow.fedavg's aggregator), with Google Benchmark, beside its baselines.
//
//   aggregation_bench [Google Benchmark flags]
//
// The model: 100 MiB of F32 in 283 tensors (24 of 4 MiB, 3 of 1 MiB, 256 of 4 KiB), and a 4 MiB one (the
// last two groups) where starting a thread weighs more. Each client has buffers of its own, filled once.
// What is measured, as bytes of client tensors per second:
//   round/<threading>/<model>/clients:N  a whole round: N folds, then finish() (the new model)
//   fold/<threading>/<model>/clients:N   the N folds alone (finish() paused)
// where threading is how a pass is cut in two: single (one thread), spawn (a std::jthread per pass) or pool
// (one thread kept for the run, what workflow.fedavg uses). One aggregator serves every round of a case, as
// in a run, and each round's model is dropped after it (a run drops it one round later): either way, memory
// is mapped in the first rounds only.
// Baselines in the same run, over the same client bytes:
//   read/<model>/clients:N     a plain sequential read (a sum of 64-bit words) on one thread
//   read2/<model>/clients:N    the same cut in two, on two threads
// And two design checks: the cost of accumulating F32 in double rather than float (one thread,
// acc[i] += w * x[i] over 100 MiB of F32: kernel/f32 and kernel/f64), and the fixed cost of a pass on two
// threads (handoff/<threading>: PairRunner::run of two empty functions).

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "aggregator.hpp"

namespace {

using ember::DType;
using ember::WireTensor;
using ember::fedavg::Aggregator;
using ember::fedavg::AggregatorSettings;
using ember::fedavg::Layout;
using ember::fedavg::Threading;

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;
constexpr int max_clients = 8;

// Tensor sizes in bytes: 100 MiB, or its 4 MiB tail.
std::vector<std::size_t> tensor_sizes(bool large) {
  std::vector<std::size_t> sizes;
  if (large) {
    sizes.assign(24, 4 * MiB);
  }
  sizes.insert(sizes.end(), 3, MiB);
  sizes.insert(sizes.end(), 256, 4 * KiB);
  return sizes;
}

struct Client {
  std::shared_ptr<std::vector<float>> storage;
  std::vector<WireTensor> tensors;
};

// One model's worth of F32 per client, in one allocation each, touched once so that no page faults are timed.
Client make_client(const std::vector<std::size_t>& sizes, int seed) {
  std::size_t total = 0;
  for (auto size : sizes) {
    total += size;
  }
  Client client;
  client.storage = std::make_shared<std::vector<float>>(total / sizeof(float));
  auto& values = *client.storage;
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>((i * 7 + static_cast<std::size_t>(seed)) % 1000) * 0.001f - 0.5f;
  }
  const auto* at = reinterpret_cast<const std::byte*>(values.data());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    auto n = static_cast<std::int64_t>(sizes[i] / sizeof(float));
    client.tensors.push_back(WireTensor{std::to_string(i), DType::F32, {n}, {at, sizes[i]}, client.storage});
    at += sizes[i];
  }
  return client;
}

struct Setup {
  std::size_t model_bytes = 0;
  std::vector<Client> clients;
  Layout layout;
  std::vector<std::vector<const WireTensor*>> ordered;  // each client's tensors in the layout's order
};

const Setup& setup(bool large) {
  static std::unique_ptr<Setup> made[2];
  auto& slot = made[large ? 1 : 0];
  if (!slot) {
    slot = std::make_unique<Setup>();
    auto sizes = tensor_sizes(large);
    for (int c = 0; c < max_clients; ++c) {
      slot->clients.push_back(make_client(sizes, c));
    }
    slot->model_bytes = slot->clients[0].storage->size() * sizeof(float);
    slot->layout = *Layout::of(slot->clients[0].tensors);
    for (const auto& client : slot->clients) {
      slot->ordered.push_back(*slot->layout.match(client.tensors));
    }
  }
  return *slot;
}

double weight_of(int client) {
  return 100.0 + client;
}

void aggregate_round(benchmark::State& state, Threading threading, bool large, bool folds_only) {
  const auto& s = setup(large);
  auto clients = static_cast<int>(state.range(0));
  // One aggregator for every round, as in a run: after the first round, its memory is mapped already.
  Aggregator aggregator(s.layout, AggregatorSettings{threading, MiB});
  for (auto _ : state) {
    for (int c = 0; c < clients; ++c) {
      aggregator.fold(s.ordered[static_cast<std::size_t>(c)], weight_of(c));
    }
    if (folds_only) {
      state.PauseTiming();
    }
    auto model = aggregator.finish();
    benchmark::DoNotOptimize(model.data());
    model.clear();  // free for the next round's accumulators
    if (folds_only) {
      state.ResumeTiming();
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * clients *
                          static_cast<std::int64_t>(s.model_bytes));
}

std::uint64_t sum_words(const std::byte* data, std::size_t bytes) {
  std::uint64_t a = 0, b = 0, c = 0, d = 0;
  std::size_t words = bytes / 8;
  for (std::size_t i = 0; i + 4 <= words; i += 4) {
    std::uint64_t w[4];
    std::memcpy(w, data + i * 8, sizeof w);
    a += w[0];
    b += w[1];
    c += w[2];
    d += w[3];
  }
  return a + b + c + d;
}

void read_bytes(benchmark::State& state, bool large, int threads) {
  const auto& s = setup(large);
  auto clients = static_cast<int>(state.range(0));
  for (auto _ : state) {
    for (int c = 0; c < clients; ++c) {
      const auto* data =
          reinterpret_cast<const std::byte*>(s.clients[static_cast<std::size_t>(c)].storage->data());
      if (threads == 1) {
        benchmark::DoNotOptimize(sum_words(data, s.model_bytes));
        continue;
      }
      std::size_t half = s.model_bytes / 2;
      std::uint64_t other = 0;
      std::jthread helper([&] { other = sum_words(data + half, s.model_bytes - half); });
      benchmark::DoNotOptimize(sum_words(data, half));
      helper.join();
      benchmark::DoNotOptimize(other);
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * clients *
                          static_cast<std::int64_t>(s.model_bytes));
}

// acc[i] += w * x[i] on one thread, the accumulator allocated and touched beforehand.
template <class Acc>
void accumulate_only(benchmark::State& state) {
  const auto& s = setup(true);
  const float* x = s.clients[0].storage->data();
  std::size_t n = s.clients[0].storage->size();
  std::vector<Acc> acc(n, Acc{0});
  Acc w = 0.5;
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) {
      acc[i] += w * static_cast<Acc>(x[i]);
    }
    benchmark::DoNotOptimize(acc.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n) *
                          static_cast<std::int64_t>(sizeof(float)));
}

void handoff(benchmark::State& state, Threading threading) {
  ember::fedavg::PairRunner runner(threading);
  int calls = 0;
  for (auto _ : state) {
    runner.run([&] { benchmark::DoNotOptimize(calls); }, [&] { benchmark::DoNotOptimize(calls); });
  }
}

const char* name_of(Threading threading) {
  switch (threading) {
    case Threading::single:
      return "single";
    case Threading::spawn:
      return "spawn";
    case Threading::pool:
      return "pool";
  }
  return "?";
}

void configure(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3)->Repetitions(5)->ReportAggregatesOnly(true);
}

void register_all() {
  for (bool large : {true, false}) {
    std::string model = large ? "100MiB" : "4MiB";
    for (auto threading : {Threading::single, Threading::spawn, Threading::pool}) {
      std::string t = name_of(threading);
      configure(benchmark::RegisterBenchmark(("round/" + t + "/" + model).c_str(), aggregate_round, threading,
                                             large, false)
                    ->ArgName("clients")
                    ->Arg(2)
                    ->Arg(8));
      configure(benchmark::RegisterBenchmark(("fold/" + t + "/" + model).c_str(), aggregate_round, threading,
                                             large, true)
                    ->ArgName("clients")
                    ->Arg(2)
                    ->Arg(8));
    }
    configure(benchmark::RegisterBenchmark(("read/" + model).c_str(), read_bytes, large, 1)
                  ->ArgName("clients")
                  ->Arg(2)
                  ->Arg(8));
    configure(benchmark::RegisterBenchmark(("read2/" + model).c_str(), read_bytes, large, 2)
                  ->ArgName("clients")
                  ->Arg(2)
                  ->Arg(8));
  }
  for (auto threading : {Threading::spawn, Threading::pool}) {
    benchmark::RegisterBenchmark((std::string("handoff/") + name_of(threading)).c_str(), handoff, threading)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime()
        ->MinTime(0.2)
        ->Repetitions(5)
        ->ReportAggregatesOnly(true);
  }
  configure(benchmark::RegisterBenchmark("kernel/f32", accumulate_only<float>));
  configure(benchmark::RegisterBenchmark("kernel/f64", accumulate_only<double>));
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
