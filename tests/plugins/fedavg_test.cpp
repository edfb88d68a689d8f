// workflow.fedavg: the aggregator on raw buffers, and whole runs against a fake WorkflowHost that answers
// each task with canned results per site, from a thread of its own, one result at a time.

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/plugin.hpp>
#include <ember/workflow.hpp>

#include "aggregator.hpp"
#include "half.hpp"
#include "kernel.hpp"
#include "option_values.hpp"
#include "support.hpp"
#include "wire/safetensors.hpp"

EMBER_DECLARE_STATIC_PLUGIN(fedavg_workflow);

namespace ember {
namespace {

namespace fs = std::filesystem;
using fedavg::Aggregator;
using fedavg::Layout;
using fedavg::Threading;
using ::testing::HasSubstr;

// ---- tensors

template <class T>
WireTensor tensor(std::string name, DType dtype, std::vector<std::int64_t> shape, std::vector<T> values) {
  auto storage = std::make_shared<std::vector<T>>(std::move(values));
  return WireTensor{std::move(name), dtype, std::move(shape), std::as_bytes(std::span(*storage)), storage};
}

WireTensor f32(std::string name, std::vector<std::int64_t> shape, std::vector<float> values) {
  return tensor(std::move(name), DType::F32, std::move(shape), std::move(values));
}

template <class T>
std::vector<T> values_of(const WireTensor& t) {
  std::vector<T> out(t.bytes.size() / sizeof(T));
  if (!out.empty()) {
    std::memcpy(out.data(), t.bytes.data(), t.bytes.size());
  }
  return out;
}

const WireTensor& named(const std::vector<WireTensor>& tensors, const std::string& name) {
  auto it = std::find_if(tensors.begin(), tensors.end(), [&](const WireTensor& t) { return t.name == name; });
  if (it == tensors.end()) {
    throw std::runtime_error("no tensor " + name);
  }
  return *it;
}

TaskData result(std::vector<WireTensor> params, double weight, std::map<std::string, double> metrics = {}) {
  TaskData data;
  data.name = "train";
  data.params = std::move(params);
  data.metrics = std::move(metrics);
  data.metrics["num_samples"] = weight;
  return data;
}

// ---- safetensors files, read and written with the wire codec alone

struct File {
  std::vector<WireTensor> tensors;
  std::map<std::string, std::string> metadata;
};

File read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  wire::CollectingConsumer consumer;
  wire::SafetensorsStreamReader reader(consumer);
  auto fed = reader.feed(std::as_bytes(std::span(bytes)));
  auto done = fed ? reader.finish() : fed;
  if (!done) {
    throw std::runtime_error(path.string() + ": " + done.error().message);
  }
  return {consumer.take_tensors(), consumer.take_metadata()};
}

void write_file(const fs::path& path, std::vector<WireTensor> tensors) {
  auto source = wire::SafetensorsSource::make(std::move(tensors));
  ASSERT_TRUE(source) << source.error().message;
  std::string bytes(source->size(), '\0');
  ASSERT_TRUE(source->read(0, std::as_writable_bytes(std::span(bytes))));
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// ---- the component's surroundings

class CapturingLogger final : public Logger {
 public:
  void log(LogLevel level, std::string_view message) noexcept override {
    std::lock_guard lock(mutex_);
    lines_.push_back({level, std::string(message)});
  }
  bool enabled(LogLevel) const noexcept override { return true; }
  std::string_view name() const noexcept override { return "plugin.workflow.fedavg"; }

  std::vector<std::string> at(LogLevel level) const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [l, text] : lines_) {
      if (l == level) {
        out.push_back(text);
      }
    }
    return out;
  }
  std::string warnings() const {
    std::string all;
    for (const auto& line : at(LogLevel::warn)) {
      all += line + "\n";
    }
    return all;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::pair<LogLevel, std::string>> lines_;
};

class NullEvents final : public EventBus {
 public:
  void publish(const Event&) noexcept override {}
  Subscription subscribe(std::string, Handler) override { return {}; }

 protected:
  void unsubscribe(std::uint64_t) noexcept override {}
};

class JobRegistry final : public Registry {
 public:
  Result<std::shared_ptr<Component>> create(std::string_view type, const Options&,
                                            std::string_view) override {
    return fail(Errc::not_found, std::string(type));
  }
  bool contains(std::string_view) const override { return false; }
  const JobInfo* job() const noexcept override { return job_ ? &*job_ : nullptr; }

  std::optional<JobInfo> job_;
};

struct Report {
  std::string key;
  double value;
  std::uint64_t round;
};

// Answers every task with `answer(site, task)`, on a thread of its own, one site after the other.
class FakeHost final : public WorkflowHost {
 public:
  using Answer = std::function<Result<TaskData>(const std::string& site, const TaskData& task)>;

  FakeHost(std::vector<std::string> sites, Answer answer)
      : sites_(std::move(sites)), answer_(std::move(answer)) {}

  std::vector<std::string> sites() const override { return sites_; }

  Result<void> broadcast(const TaskData& task, const std::vector<std::string>& sites,
                         std::chrono::milliseconds timeout,
                         const std::function<void(SiteResult&&)>& on_result) override {
    tasks.push_back(task);
    timeouts.push_back(timeout);
    std::thread([&] {
      for (const auto& site : sites) {
        on_result(SiteResult{site, answer_(site, task)});
      }
    }).join();
    return ok();
  }

  void report(const std::string& key, double value, std::uint64_t round) override {
    reports.push_back({key, value, round});
  }

  // The value reported for `key` in `round`, if any.
  std::optional<double> reported(const std::string& key, std::uint64_t round) const {
    for (const auto& r : reports) {
      if (r.key == key && r.round == round) {
        return r.value;
      }
    }
    return std::nullopt;
  }

  std::vector<TaskData> tasks;
  std::vector<std::chrono::milliseconds> timeouts;
  std::vector<Report> reports;

 private:
  std::vector<std::string> sites_;
  Answer answer_;
};

const ComponentDescriptor& fedavg_component() {
  const auto* plugin = ember_plugin_descriptor_fedavg_workflow();
  return plugin->components[0];
}

// A workflow.fedavg made by its plugin's factory, with the defaults its schema declares (read as the kernel
// reads them), a capturing logger, and a workspace of its own.
class Harness {
 public:
  explicit Harness(std::map<std::string, OptionValue> given = {}, std::optional<JobInfo> job = std::nullopt,
                   const fs::path& workspace = {}) {
    workspace_ = workspace.empty() ? dir_.path() : workspace;
    registry_.job_ = std::move(job);
    const auto& descriptor = fedavg_component();
    kernel::Substitutions subs;
    subs.workspace = workspace_.string();
    Options options;
    for (auto& [name, value] : given) {
      options.set(name, value);
    }
    for (std::uint32_t i = 0; i < descriptor.option_count; ++i) {
      const auto& spec = descriptor.options[i];
      if (!options.contains(spec.name)) {
        auto value = kernel::option_from_text(spec.default_value, spec.type, subs);
        if (!value) {
          throw std::runtime_error(value.error().message);
        }
        options.set(spec.name, *value);
      }
    }
    ComponentContext context("workflow.fedavg", "fedavg", logger_, std::move(options), workspace_, events_,
                             registry_, stop_.get_token());
    auto made = descriptor.factory(context);
    if (!made) {
      error_ = made.error();
      return;
    }
    component_ = std::move(*made);
  }

  Workflow& workflow() { return dynamic_cast<Workflow&>(*component_); }
  const std::optional<Error>& create_error() const { return error_; }
  const CapturingLogger& log() const { return *logger_; }
  const fs::path& workspace() const { return workspace_; }
  fs::path checkpoints() const { return workspace_ / "checkpoints"; }

 private:
  test::TempDir dir_;
  fs::path workspace_;
  std::shared_ptr<CapturingLogger> logger_ = std::make_shared<CapturingLogger>();
  NullEvents events_;
  JobRegistry registry_;
  std::stop_source stop_;
  std::unique_ptr<Component> component_;
  std::optional<Error> error_;
};

OptionValue integer(std::int64_t v) {
  return OptionValue(v);
}

const std::vector<std::string> three = {"site-1", "site-2", "site-3"};

// ---- the aggregator

TEST(HalfFloats, EveryValueRoundTripsAndNarrowingRoundsToNearestEven) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    auto h = static_cast<std::uint16_t>(bits);
    float wide = fedavg::half_to_float(h);
    if (std::isnan(wide)) {
      EXPECT_TRUE(std::isnan(fedavg::half_to_float(fedavg::float_to_half(wide))));
    } else {
      ASSERT_EQ(fedavg::float_to_half(wide), h) << bits;
    }
    float brain = fedavg::bf16_to_float(h);
    if (!std::isnan(brain)) {
      ASSERT_EQ(fedavg::float_to_bf16(brain), h) << bits;
    }
  }
  EXPECT_EQ(fedavg::float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(fedavg::float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(fedavg::float_to_half(65520.0f), 0x7c00);         // half-way to the next power: infinity
  EXPECT_EQ(fedavg::float_to_half(1.0f + 0x1p-11f), 0x3c00);  // a tie: to even
  EXPECT_EQ(fedavg::float_to_half(0x1p-25f), 0x0000);         // a tie below the smallest subnormal: to even
  EXPECT_EQ(fedavg::float_to_half(0x1.8p-25f), 0x0001);
  EXPECT_EQ(fedavg::float_to_bf16(1.0f + 0x1p-8f), 0x3f80);  // a tie: to even
  EXPECT_EQ(fedavg::float_to_bf16(1.0f + 0x1.8p-8f), 0x3f81);
}

// Folds `results` with `weights` and returns the finished model.
std::vector<WireTensor> average(const std::vector<std::vector<WireTensor>>& results,
                                const std::vector<double>& weights,
                                fedavg::AggregatorSettings settings = {}) {
  auto layout = Layout::of(results.at(0));
  if (!layout) {
    throw std::runtime_error(layout.error().message);
  }
  Aggregator aggregator(*layout, settings);
  for (std::size_t i = 0; i < results.size(); ++i) {
    auto ordered = aggregator.layout().match(results[i]);
    if (!ordered) {
      throw std::runtime_error(ordered.error().message);
    }
    aggregator.fold(*ordered, weights[i]);
  }
  return aggregator.finish();
}

TEST(Aggregator, AveragesF64HalvesAndIntegersInTheirOwnDtypes) {
  auto model = [](std::vector<double> d, std::vector<float> halves, std::vector<std::int32_t> i32,
                  std::vector<std::uint8_t> u8, std::vector<std::int64_t> i64) {
    std::vector<std::uint16_t> h16, b16;
    for (float v : halves) {
      h16.push_back(fedavg::float_to_half(v));
      b16.push_back(fedavg::float_to_bf16(v));
    }
    return std::vector<WireTensor>{tensor("d", DType::F64, {2}, d),    tensor("h", DType::F16, {3}, h16),
                                   tensor("b", DType::BF16, {3}, b16), tensor("i", DType::I32, {3}, i32),
                                   tensor("u", DType::U8, {2}, u8),    tensor("l", DType::I64, {1}, i64)};
  };
  auto out = average({model({1.5, -2}, {1, -4, 0.5}, {1, -7, 100}, {255, 0}, {std::int64_t{1} << 40}),
                      model({2.5, 6}, {3, 4, 0.25}, {2, 3, -100}, {255, 1}, {std::int64_t{1} << 40})},
                     {1, 3});
  EXPECT_EQ(values_of<double>(named(out, "d")), (std::vector<double>{2.25, 4}));
  std::vector<float> h, b;
  for (auto bits : values_of<std::uint16_t>(named(out, "h"))) {
    h.push_back(fedavg::half_to_float(bits));
  }
  for (auto bits : values_of<std::uint16_t>(named(out, "b"))) {
    b.push_back(fedavg::bf16_to_float(bits));
  }
  EXPECT_EQ(h, (std::vector<float>{2.5, 2, 0.3125}));
  EXPECT_EQ(b, (std::vector<float>{2.5, 2, 0.3125}));
  // 1.75 -> 2, 0.5 -> 1 (halves away from zero), -50; 255 stays 255, 0.75 -> 1.
  EXPECT_EQ(values_of<std::int32_t>(named(out, "i")), (std::vector<std::int32_t>{2, 1, -50}));
  EXPECT_EQ(values_of<std::uint8_t>(named(out, "u")), (std::vector<std::uint8_t>{255, 1}));
  EXPECT_EQ(values_of<std::int64_t>(named(out, "l")), (std::vector<std::int64_t>{std::int64_t{1} << 40}));
  EXPECT_EQ(named(out, "b").dtype, DType::BF16);
  EXPECT_EQ(named(out, "h").shape, (std::vector<std::int64_t>{3}));
}

TEST(Aggregator, RefusesBoolAndReportsWhatDiffers) {
  auto bool_layout = Layout::of({tensor("mask", DType::BOOL, {2}, std::vector<std::uint8_t>{1, 0})});
  ASSERT_FALSE(bool_layout);
  EXPECT_THAT(bool_layout.error().message, HasSubstr("tensor 'mask' is BOOL"));
  auto layout = Layout::of({f32("a", {2}, {1, 2}), f32("b", {1}, {3})});
  ASSERT_TRUE(layout);
  auto check = [&](std::vector<WireTensor> params, const std::string& what) {
    auto matched = layout->match(params);
    ASSERT_FALSE(matched) << what;
    EXPECT_EQ(matched.error().code, Errc::rejected);
    EXPECT_THAT(matched.error().message, HasSubstr(what));
  };
  check({f32("a", {2}, {1, 2})}, "tensor 'b' is missing");
  check({f32("a", {2}, {1, 2}), f32("b", {1}, {3}), f32("c", {1}, {3})}, "tensor 'c' is not in the model");
  check({f32("a", {1, 2}, {1, 2}), f32("b", {1}, {3})}, "tensor 'a' has shape [1, 2], the model's is [2]");
  check({tensor("a", DType::F64, {2}, std::vector<double>{1, 2}), f32("b", {1}, {3})},
        "tensor 'a' is F64, the model's is F32");
  check({f32("a", {2}, {1, 2, 3}), f32("b", {1}, {3})}, "tensor 'a' has 12 bytes, 8 expected for F32 [2]");
  // Any order is fine: tensors are matched by name.
  std::vector<WireTensor> reordered = {f32("b", {1}, {3}), f32("a", {2}, {1, 2})};
  auto swapped = layout->match(reordered);
  ASSERT_TRUE(swapped);
  EXPECT_EQ((*swapped)[0]->name, "a");
}

TEST(Aggregator, TwoThreadsGiveTheBytesOfOne) {
  // 4 M elements of F32 (split in two), an odd-sized F16 tensor and a small one, three results.
  std::mt19937 random(7);
  std::uniform_real_distribution<float> value(-2, 2);
  auto model = [&] {
    std::vector<float> big(std::size_t{4} << 20), small(3);
    std::vector<std::uint16_t> halves(1'000'003);
    std::generate(big.begin(), big.end(), [&] { return value(random); });
    std::generate(small.begin(), small.end(), [&] { return value(random); });
    std::generate(halves.begin(), halves.end(), [&] { return fedavg::float_to_half(value(random)); });
    return std::vector<WireTensor>{f32("big", {2048, 2048}, big),
                                   tensor("half", DType::F16, {1'000'003}, halves), f32("small", {3}, small)};
  };
  std::vector<std::vector<WireTensor>> results = {model(), model(), model()};
  std::vector<double> weights = {1.5, 2, 0.25};
  auto one = average(results, weights, {Threading::single, 1 << 20});
  for (auto threading : {Threading::spawn, Threading::pool}) {
    for (std::uint64_t split : {std::uint64_t{1} << 20, std::uint64_t{1}}) {
      auto two = average(results, weights, {threading, split});
      ASSERT_EQ(two.size(), one.size());
      for (std::size_t i = 0; i < one.size(); ++i) {
        ASSERT_EQ(two[i].bytes.size(), one[i].bytes.size());
        EXPECT_EQ(std::memcmp(two[i].bytes.data(), one[i].bytes.data(), one[i].bytes.size()), 0)
            << one[i].name << " differs with threading " << static_cast<int>(threading);
      }
    }
  }
  // The mean of the first element, computed here the same way (float sums, then a division).
  float expected = 0;
  for (std::size_t i = 0; i < 3; ++i) {
    float x;
    std::memcpy(&x, results[i][0].bytes.data(), sizeof x);
    expected = i == 0 ? static_cast<float>(weights[i]) * x : expected + static_cast<float>(weights[i]) * x;
  }
  float got;
  std::memcpy(&got, one[0].bytes.data(), sizeof got);
  EXPECT_EQ(got, expected / 3.75f);
}

TEST(Aggregator, ServesRoundAfterRoundInTheSameMemory) {
  auto layout =
      Layout::of({f32("w", {3}, {0, 0, 0}), tensor("h", DType::F16, {1}, std::vector<std::uint16_t>{0})});
  ASSERT_TRUE(layout);
  Aggregator aggregator(*layout, {Threading::pool, 1});
  std::vector<const void*> buffers;
  std::vector<WireTensor> previous;  // alive while the next round folds, as a run's global model is
  for (int round = 0; round < 4; ++round) {
    auto v = static_cast<float>(round);
    std::vector<WireTensor> a = {
        f32("w", {3}, {v, 1, 2}),
        tensor("h", DType::F16, {1}, std::vector<std::uint16_t>{fedavg::float_to_half(v)})};
    std::vector<WireTensor> b = {
        f32("w", {3}, {v + 2, 3, 4}),
        tensor("h", DType::F16, {1}, std::vector<std::uint16_t>{fedavg::float_to_half(v + 2)})};
    aggregator.fold(*aggregator.layout().match(a), 1);
    aggregator.fold(*aggregator.layout().match(b), 1);
    EXPECT_EQ(aggregator.count(), 2u);
    EXPECT_EQ(aggregator.total_weight(), 2);
    auto model = aggregator.finish();
    EXPECT_EQ(values_of<float>(model[0]), (std::vector<float>{v + 1, 2, 3})) << round;
    EXPECT_EQ(fedavg::half_to_float(values_of<std::uint16_t>(model[1])[0]), v + 1) << round;
    EXPECT_EQ(aggregator.count(), 0u);
    buffers.push_back(model[0].bytes.data());
    previous = std::move(model);  // the model of the round before is dropped
  }
  // Two blocks take turns: round 2 folds into round 0's model's memory, free by then.
  EXPECT_NE(buffers[1], buffers[0]);
  EXPECT_EQ(buffers[2], buffers[0]);
  EXPECT_EQ(buffers[3], buffers[1]);
}

// ---- whole runs

TEST(FedAvg, WeightedMeanIsExact) {
  Harness h({{"rounds", integer(1)}, {"evaluate_final", false}});
  ASSERT_FALSE(h.create_error()) << h.create_error()->message;
  // Weights 1, 2, 5 (total 8): every sum and quotient below is exact in binary.
  std::map<std::string, TaskData> answers = {
      {"site-1", result({f32("w", {2, 2}, {1, 8, -3, 0.5})}, 1, {{"loss", 4}})},
      {"site-2", result({f32("w", {2, 2}, {3, 0, 1, 0.25})}, 2, {{"loss", 2}})},
      {"site-3", result({f32("w", {2, 2}, {7, 16, 5, -0.5})}, 5, {{"loss", 0.5}})},
  };
  FakeHost host(three, [&](const std::string& site, const TaskData&) { return answers.at(site); });
  auto ran = h.workflow().run(host);
  ASSERT_TRUE(ran) << ran.error().message;
  ASSERT_EQ(host.tasks.size(), 1u);
  EXPECT_EQ(host.tasks[0].name, "train");
  EXPECT_EQ(host.tasks[0].round, 0u);
  EXPECT_EQ(host.tasks[0].total_rounds, 1u);
  EXPECT_TRUE(host.tasks[0].params.empty());  // no initial model
  auto model = read_file(h.workspace() / "model.safetensors");
  EXPECT_EQ(values_of<float>(named(model.tensors, "w")), (std::vector<float>{5.25, 11, 3, -0.1875}));
  EXPECT_EQ(host.reported("loss", 0), (4 + 2 * 2 + 5 * 0.5) / 8);
  EXPECT_EQ(host.reported("clients_ok", 0), 3);
  EXPECT_EQ(host.reported("clients_failed", 0), 0);
  EXPECT_TRUE(host.reported("round_seconds", 0));
  EXPECT_FALSE(host.reported("num_samples", 0));       // the weight is not averaged with itself
  EXPECT_EQ(host.timeouts[0], std::chrono::hours(1));  // no job, no round_timeout
  EXPECT_EQ(h.log().warnings(), "");
}

TEST(FedAvg, AFailedSiteDropsOutOfTheMean) {
  Harness h({{"rounds", integer(1)}, {"evaluate_final", false}, {"min_clients", integer(2)}});
  // site-2 times out: the mean is over weights 1 and 5.
  FakeHost host(three, [&](const std::string& site, const TaskData&) -> Result<TaskData> {
    if (site == "site-2") {
      return fail(Errc::timeout, "no result within 1h");
    }
    return site == "site-1" ? result({f32("w", {4}, {1, 4, -2.5, 0.75})}, 1)
                            : result({f32("w", {4}, {7, -2, 0.5, 0.75})}, 5);
  });
  auto ran = h.workflow().run(host);
  ASSERT_TRUE(ran) << ran.error().message;
  auto model = read_file(h.workspace() / "model.safetensors");
  EXPECT_EQ(values_of<float>(named(model.tensors, "w")), (std::vector<float>{6, -1, 0, 0.75}));
  EXPECT_EQ(host.reported("clients_ok", 0), 2);
  EXPECT_EQ(host.reported("clients_failed", 0), 1);
  EXPECT_THAT(h.log().warnings(), HasSubstr("round 0: site-2 failed"));
  EXPECT_THAT(h.log().warnings(), HasSubstr("no result within 1h"));
}

TEST(FedAvg, AResultWithoutWeightCountsOnceAndIsSaidOncePerSite) {
  Harness h({{"rounds", integer(2)}, {"evaluate_final", false}});
  FakeHost host({"site-1", "site-2"}, [&](const std::string& site, const TaskData&) {
    TaskData data = result({f32("w", {1}, {site == "site-1" ? 1.0f : 4.0f})}, 3);
    if (site == "site-1") {
      data.metrics.clear();
    }
    return data;
  });
  ASSERT_TRUE(h.workflow().run(host));
  auto model = read_file(h.workspace() / "model.safetensors");
  EXPECT_EQ(values_of<float>(named(model.tensors, "w")), (std::vector<float>{3.25}));  // (1 + 3 x 4) / 4
  auto warnings = h.log().at(LogLevel::warn);
  ASSERT_EQ(warnings.size(), 1u) << h.log().warnings();
  EXPECT_THAT(warnings[0], HasSubstr("site-1 reports no 'num_samples' metric"));
}

TEST(FedAvg, DiffsAreAddedToTheGlobalModel) {
  test::TempDir files;
  write_file(files.path() / "init.safetensors", {f32("w", {4}, {1, 2, 3, 4})});
  Harness h({{"rounds", integer(1)},
             {"evaluate_final", false},
             {"initial_model", (files.path() / "init.safetensors").string()}});
  FakeHost host({"site-1", "site-2"}, [&](const std::string& site, const TaskData& task) {
    EXPECT_EQ(values_of<float>(named(task.params, "w")), (std::vector<float>{1, 2, 3, 4}));
    TaskData data = site == "site-1" ? result({f32("w", {4}, {1, 1, 1, 1})}, 1)
                                     : result({f32("w", {4}, {-1, 3, 0.5, 0})}, 3);
    data.params_type = ParamsType::diff;
    return data;
  });
  auto ran = h.workflow().run(host);
  ASSERT_TRUE(ran) << ran.error().message;
  auto model = read_file(h.workspace() / "model.safetensors");
  // 1 + (1 - 3) / 4, 2 + (1 + 9) / 4, 3 + (1 + 1.5) / 4, 4 + 1 / 4.
  EXPECT_EQ(values_of<float>(named(model.tensors, "w")), (std::vector<float>{0.5, 4.5, 3.625, 4.25}));
}

TEST(FedAvg, InitialModelIsReadRelativeToTheJobFolder) {
  test::TempDir job_dir;
  write_file(job_dir.path() / "models" / "init.safetensors", {f32("w", {2}, {1, 2})});
  JobInfo job;
  job.job_id = "job-7";
  job.job_dir = job_dir.path();
  job.timeouts.result_wait = std::chrono::seconds(42);
  Harness h({{"rounds", integer(1)},
             {"evaluate_final", false},
             {"initial_model", std::string("models/init.safetensors")}},
            job);
  FakeHost host({"site-1"}, [&](const std::string&, const TaskData&) {
    return result({f32("w", {2}, {3, 4})}, 1);
  });
  ASSERT_TRUE(h.workflow().run(host));
  EXPECT_EQ(values_of<float>(named(host.tasks[0].params, "w")), (std::vector<float>{1, 2}));
  EXPECT_EQ(host.tasks[0].meta.at("job_id"), "job-7");
  EXPECT_EQ(host.timeouts[0], std::chrono::seconds(42));  // the job's result_wait
  auto checkpoint = read_file(h.checkpoints() / "round-0.safetensors");
  EXPECT_EQ(checkpoint.metadata.at("ember.meta.job_id"), "job-7");
}

TEST(FedAvg, ADiffWithoutAGlobalModelOrBesideFullResultsIsRejected) {
  Harness h({{"rounds", integer(1)}, {"evaluate_final", false}, {"min_clients", integer(1)}});
  FakeHost host(three, [&](const std::string& site, const TaskData&) {
    TaskData data = result({f32("w", {1}, {2})}, 1);
    data.params_type = site == "site-1" ? ParamsType::diff : ParamsType::full;
    return data;
  });
  ASSERT_TRUE(h.workflow().run(host));
  EXPECT_EQ(host.reported("clients_ok", 0), 2);
  EXPECT_THAT(h.log().warnings(),
              HasSubstr("rejected the result of site-1: it is a DIFF, but there is no global"));

  Harness mixed({{"rounds", integer(1)},
                 {"evaluate_final", false},
                 {"min_clients", integer(1)},
                 {"initial_model", (h.workspace() / "model.safetensors").string()}});
  FakeHost host2(three, [&](const std::string& site, const TaskData&) {
    TaskData data = result({f32("w", {1}, {2})}, 1);
    data.params_type = site == "site-2" ? ParamsType::diff : ParamsType::full;
    return data;
  });
  ASSERT_TRUE(mixed.workflow().run(host2));
  EXPECT_THAT(mixed.log().warnings(),
              HasSubstr("rejected the result of site-2: it is a DIFF, but earlier results were FULL"));
}

TEST(FedAvg, TooFewUsableResultsFailTheRun) {
  Harness h({{"rounds", integer(2)}, {"min_clients", integer(2)}});
  FakeHost host(three, [&](const std::string& site, const TaskData&) -> Result<TaskData> {
    if (site != "site-1") {
      return fail(Errc::peer_gone, site + " went away");
    }
    return result({f32("w", {1}, {1})}, 1);
  });
  auto ran = h.workflow().run(host);
  ASSERT_FALSE(ran);
  EXPECT_EQ(ran.error().code, Errc::peer_gone);
  EXPECT_THAT(ran.error().message,
              HasSubstr("round 0: 1 of 3 sites answered with a usable result, 2 needed"));
  EXPECT_THAT(ran.error().message, HasSubstr("site-3: peer_gone: site-3 went away"));
  EXPECT_EQ(host.tasks.size(), 1u);  // no second round, no evaluation
  EXPECT_FALSE(fs::exists(h.checkpoints() / "round-0.safetensors"));

  // min_clients = 0: every site is needed.
  Harness all({{"rounds", integer(1)}});
  FakeHost host2(three, [&](const std::string& site, const TaskData&) -> Result<TaskData> {
    if (site == "site-3") {
      return fail(Errc::timeout, "late");
    }
    return result({f32("w", {1}, {1})}, 1);
  });
  auto ran2 = all.workflow().run(host2);
  ASSERT_FALSE(ran2);
  EXPECT_THAT(ran2.error().message, HasSubstr("2 of 3 sites answered with a usable result, 3 needed"));

  Harness too_many({{"min_clients", integer(4)}});
  FakeHost host3(three, [&](const std::string&, const TaskData&) { return result({}, 1); });
  auto ran3 = too_many.workflow().run(host3);
  ASSERT_FALSE(ran3);
  EXPECT_EQ(ran3.error().code, Errc::invalid_option);
  EXPECT_THAT(ran3.error().message, HasSubstr("min_clients is 4, but the job has 3 sites"));
  EXPECT_TRUE(host3.tasks.empty());
}

TEST(FedAvg, ResultsOfAnotherLayoutAreRejectedNamingSiteAndTensor) {
  test::TempDir files;
  write_file(files.path() / "init.safetensors", {f32("a", {2, 2}, {0, 0, 0, 0}), f32("b", {3}, {0, 0, 0})});
  Harness h({{"rounds", integer(1)},
             {"evaluate_final", false},
             {"min_clients", integer(1)},
             {"initial_model", (files.path() / "init.safetensors").string()}});
  std::vector<std::string> sites = {"site-1", "site-2", "site-3", "site-4", "site-5"};
  FakeHost host(sites, [&](const std::string& site, const TaskData&) {
    auto a = f32("a", {2, 2}, {1, 2, 3, 4});
    if (site == "site-2") {
      return result({a, f32("c", {3}, {1, 1, 1})}, 1);
    }
    if (site == "site-3") {
      return result({a, f32("b", {1, 3}, {1, 1, 1})}, 1);
    }
    if (site == "site-4") {
      return result({a, tensor("b", DType::F64, {3}, std::vector<double>{1, 1, 1})}, 1);
    }
    if (site == "site-5") {
      return result({a, f32("b", {3}, {1, 1})}, 1);
    }
    return result({f32("b", {3}, {5, 6, 7}), a}, 2);  // another order: fine
  });
  auto ran = h.workflow().run(host);
  ASSERT_TRUE(ran) << ran.error().message;
  auto warnings = h.log().warnings();
  EXPECT_THAT(warnings, HasSubstr("rejected the result of site-2: tensor 'c' is not in the model"));
  EXPECT_THAT(warnings,
              HasSubstr("rejected the result of site-3: tensor 'b' has shape [1, 3], the model's is [3]"));
  EXPECT_THAT(warnings, HasSubstr("rejected the result of site-4: tensor 'b' is F64, the model's is F32"));
  EXPECT_THAT(warnings, HasSubstr("rejected the result of site-5: tensor 'b' has 8 bytes, 12 expected"));
  EXPECT_EQ(host.reported("clients_ok", 0), 1);
  EXPECT_EQ(host.reported("clients_failed", 0), 4);
  auto model = read_file(h.workspace() / "model.safetensors");
  EXPECT_EQ(values_of<float>(named(model.tensors, "b")), (std::vector<float>{5, 6, 7}));
  EXPECT_EQ(model.tensors[0].name, "a");  // the global model's order
}

TEST(FedAvg, TheFirstResultFixesTheLayoutWithoutAnInitialModel) {
  Harness h({{"rounds", integer(1)}, {"evaluate_final", false}, {"min_clients", integer(1)}});
  FakeHost host({"site-1", "site-2"}, [&](const std::string& site, const TaskData&) {
    return site == "site-1" ? result({f32("w", {2}, {1, 2})}, 1) : result({f32("w", {3}, {1, 2, 3})}, 1);
  });
  ASSERT_TRUE(h.workflow().run(host));
  EXPECT_THAT(h.log().warnings(),
              HasSubstr("rejected the result of site-2: tensor 'w' has shape [3], the model's is [2]"));
}

// Each site answers with (round + 1) x its number, so each round's mean says which round made it.
FakeHost counting_host(std::vector<std::string> sites = {"site-1", "site-2"}) {
  return FakeHost(std::move(sites), [](const std::string& site, const TaskData& task) {
    float n = static_cast<float>(site.back() - '0');
    if (task.name == tasks::evaluate) {
      return result({}, n, {{"accuracy", n == 1 ? 0.5 : 1.0}});
    }
    float v = static_cast<float>(task.round + 1) * n;
    return result({f32("w", {2}, {v, -v})}, 1, {{"loss", v}});
  });
}

TEST(FedAvg, EveryRoundIsCheckpointedInSafetensors) {
  Harness h({{"rounds", integer(3)}, {"evaluate_final", false}});
  auto host = counting_host();
  ASSERT_TRUE(h.workflow().run(host));
  for (std::uint64_t round = 0; round < 3; ++round) {
    auto file = read_file(h.checkpoints() / ("round-" + std::to_string(round) + ".safetensors"));
    float mean = static_cast<float>(round + 1) * 1.5f;
    EXPECT_EQ(values_of<float>(named(file.tensors, "w")), (std::vector<float>{mean, -mean}));
    EXPECT_EQ(file.metadata.at("ember.round"), std::to_string(round));
    EXPECT_EQ(file.metadata.at("ember.total_rounds"), "3");
    EXPECT_EQ(std::stod(file.metadata.at("ember.metric.loss")), mean);
  }
  auto final_model = read_file(h.workspace() / "model.safetensors");
  EXPECT_EQ(values_of<float>(named(final_model.tensors, "w")), (std::vector<float>{4.5, -4.5}));
  for (const auto& entry : fs::directory_iterator(h.checkpoints())) {
    EXPECT_THAT(entry.path().filename().string(), ::testing::MatchesRegex("round-[0-9]\\.safetensors"));
  }
  // Each round sent the model of the round before.
  EXPECT_EQ(values_of<float>(named(host.tasks[2].params, "w")), (std::vector<float>{3, -3}));

  Harness keep({{"rounds", integer(3)}, {"evaluate_final", false}, {"keep_checkpoints", integer(2)}});
  auto host2 = counting_host();
  ASSERT_TRUE(keep.workflow().run(host2));
  EXPECT_FALSE(fs::exists(keep.checkpoints() / "round-0.safetensors"));
  EXPECT_TRUE(fs::exists(keep.checkpoints() / "round-1.safetensors"));
  EXPECT_TRUE(fs::exists(keep.checkpoints() / "round-2.safetensors"));
}

TEST(FedAvg, ResumeContinuesFromTheNewestGoodCheckpoint) {
  test::TempDir workspace;
  {
    Harness first({{"rounds", integer(2)}, {"evaluate_final", false}}, std::nullopt, workspace.path());
    auto host = counting_host();
    ASSERT_TRUE(first.workflow().run(host));
  }
  // A newer checkpoint that is not one (a crash of something else, a disk error): skipped with a warning.
  std::ofstream(workspace.path() / "checkpoints" / "round-2.safetensors") << "not safetensors";
  // What a write cut short leaves: removed when the run resumes.
  std::ofstream(workspace.path() / "checkpoints" / "round-2.safetensors.tmp-a1b2c3") << "half a file";
  Harness resumed({{"rounds", integer(4)}, {"evaluate_final", false}, {"resume", true}}, std::nullopt,
                  workspace.path());
  auto host = counting_host();
  auto ran = resumed.workflow().run(host);
  ASSERT_TRUE(ran) << ran.error().message;
  EXPECT_THAT(resumed.log().warnings(),
              HasSubstr("skipping a checkpoint that cannot be used: " +
                        (workspace.path() / "checkpoints" / "round-2.safetensors").string() + ": malformed"));
  EXPECT_FALSE(fs::exists(workspace.path() / "checkpoints" / "round-2.safetensors.tmp-a1b2c3"));
  ASSERT_EQ(host.tasks.size(), 2u);
  EXPECT_EQ(host.tasks[0].round, 2u);
  EXPECT_EQ(values_of<float>(named(host.tasks[0].params, "w")), (std::vector<float>{3, -3}));  // round 1's
  EXPECT_EQ(host.tasks[1].round, 3u);
  auto final_model = read_file(workspace.path() / "model.safetensors");
  EXPECT_EQ(values_of<float>(named(final_model.tensors, "w")), (std::vector<float>{6, -6}));
  EXPECT_EQ(read_file(workspace.path() / "checkpoints" / "round-2.safetensors").metadata.at("ember.round"),
            "2");

  // Resuming a finished run: no round left, the final evaluation still runs.
  Harness finished({{"rounds", integer(4)}, {"resume", true}}, std::nullopt, workspace.path());
  auto host2 = counting_host();
  ASSERT_TRUE(finished.workflow().run(host2));
  ASSERT_EQ(host2.tasks.size(), 1u);
  EXPECT_EQ(host2.tasks[0].name, "evaluate");
  EXPECT_EQ(values_of<float>(named(host2.tasks[0].params, "w")), (std::vector<float>{6, -6}));
}

TEST(FedAvg, ACheckpointWhoseDataWasDamagedIsRefusedOnResume) {
  test::TempDir workspace;
  {
    Harness first({{"rounds", integer(2)}, {"evaluate_final", false}}, std::nullopt, workspace.path());
    auto host = counting_host();
    ASSERT_TRUE(first.workflow().run(host));
  }
  // One bit of round 1's tensor data flipped at rest: the header still reads, the values are wrong.
  auto damaged = workspace.path() / "checkpoints" / "round-1.safetensors";
  {
    std::fstream file(damaged, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(-1, std::ios::end);
    char last = 0;
    file.get(last);
    file.seekp(-1, std::ios::end);
    file.put(static_cast<char>(last ^ 0x10));
  }
  Harness resumed({{"rounds", integer(3)}, {"evaluate_final", false}, {"resume", true}}, std::nullopt,
                  workspace.path());
  auto host = counting_host();
  auto ran = resumed.workflow().run(host);
  ASSERT_TRUE(ran) << ran.error().message;
  EXPECT_THAT(resumed.log().warnings(),
              HasSubstr("skipping a checkpoint that cannot be used: " + damaged.string()));
  EXPECT_THAT(resumed.log().warnings(), HasSubstr("the data is damaged"));
  // It went on from round 0's checkpoint, as for a damaged header.
  ASSERT_EQ(host.tasks.size(), 2u);
  EXPECT_EQ(host.tasks[0].round, 1u);
  EXPECT_EQ(values_of<float>(named(host.tasks[0].params, "w")), (std::vector<float>{1.5, -1.5}));
}

TEST(FedAvg, ANewRunReplacesAnEarlierRunsCheckpoints) {
  test::TempDir workspace;
  write_file(workspace.path() / "checkpoints" / "round-7.safetensors", {f32("w", {2}, {9, 9})});
  Harness h({{"rounds", integer(1)}, {"evaluate_final", false}}, std::nullopt, workspace.path());
  auto host = counting_host();
  ASSERT_TRUE(h.workflow().run(host));
  EXPECT_FALSE(fs::exists(workspace.path() / "checkpoints" / "round-7.safetensors"));
  EXPECT_THAT(h.log().warnings(), HasSubstr("removing 1 checkpoint(s) of an earlier run"));
}

TEST(FedAvg, TheFinalModelIsEvaluatedEverywhere) {
  Harness h({{"rounds", integer(2)}, {"round_timeout", OptionValue(std::chrono::milliseconds(5000))}});
  auto host = counting_host();
  ASSERT_TRUE(h.workflow().run(host));
  ASSERT_EQ(host.tasks.size(), 3u);
  const auto& evaluate = host.tasks[2];
  EXPECT_EQ(evaluate.name, "evaluate");
  EXPECT_EQ(evaluate.round, 2u);
  EXPECT_EQ(evaluate.total_rounds, 2u);
  EXPECT_EQ(values_of<float>(named(evaluate.params, "w")), (std::vector<float>{3, -3}));
  // Weights 1 and 2 (num_samples): (0.5 + 2 x 1) / 3.
  EXPECT_DOUBLE_EQ(*host.reported("accuracy", 2), 2.5 / 3);
  EXPECT_EQ(host.reported("clients_ok", 2), 2);
  EXPECT_EQ(host.reported("loss", 1), 3);
  EXPECT_EQ(host.timeouts[2], std::chrono::seconds(5));
}

TEST(FedAvg, RegistersWithTheKernelAndChecksItsOptions) {
  test::TempDir workspace;
  kernel::KernelSettings settings;
  settings.use_default_paths = false;
  settings.use_env_path = false;
  settings.log.level = LogLevel::warn;
  settings.workspace = workspace.path();
  settings.subs.workspace = workspace.path().string();
  kernel::Kernel k(std::move(settings));
  ASSERT_TRUE(k.add_static(ember_plugin_descriptor_fedavg_workflow(), "<static>"));
  auto made = k.registry().create_as<Workflow>("workflow.fedavg", Options{});
  ASSERT_TRUE(made) << made.error().message;
  Options zero;
  zero.set("rounds", std::int64_t{0});
  auto refused = k.registry().create_as<Workflow>("workflow.fedavg", zero);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::invalid_option);
  EXPECT_THAT(refused.error().message, HasSubstr("option 'rounds': 0 is below the minimum 1"));
}

}  // namespace
}  // namespace ember
