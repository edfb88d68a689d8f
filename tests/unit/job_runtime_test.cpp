// The job runtime without the CLI: a server job and two client jobs over the in-process link, with test
// doubles for the executor and the workflow; stops, exceptions on worker threads, the workspace lock and ids.

#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <ember/plugin.hpp>
#include <nlohmann/json.hpp>

#include "client_job.hpp"
#include "in_process_link.hpp"
#include "metrics_log.hpp"
#include "server_job.hpp"
#include "support.hpp"
#include "workspace.hpp"

EMBER_DECLARE_STATIC_PLUGIN(fedavg_workflow);

namespace ember::kernel {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// Blocks until `stop` is requested or 10 s pass (the test then fails on the bound, not by hanging).
bool wait_for_stop(const std::stop_token& stop) {
  std::mutex m;
  std::condition_variable cv;
  std::stop_callback wake(stop, [&] {
    { std::lock_guard order(m); }
    cv.notify_all();
  });
  std::unique_lock lock(m);
  return cv.wait_for(lock, std::chrono::seconds(10), [&] { return stop.stop_requested(); });
}

// Answers a task with its metrics plus "loss" = round + 1, or misbehaves as told.
class FakeExecutor final : public Executor {
 public:
  enum class Mode { good, throw_in_execute, throw_in_start, hang_in_start, hang_in_execute, fail_start };
  explicit FakeExecutor(Mode mode = Mode::good) : mode_(mode) {}

  Result<void> start(std::stop_token stop) override {
    if (mode_ == Mode::throw_in_start) {
      throw std::runtime_error("launcher exploded");
    }
    if (mode_ == Mode::fail_start) {
      return fail(Errc::invalid_config, "option 'pipe' = \"nope\": no such component");
    }
    if (mode_ == Mode::hang_in_start) {
      wait_for_stop(stop);
      return fail(Errc::cancelled, "stopped while starting");
    }
    return ok();
  }
  Result<TaskData> execute(const TaskData& task, std::stop_token stop) override {
    if (mode_ == Mode::throw_in_execute) {
      throw std::runtime_error("trainer wrapper bug");
    }
    if (mode_ == Mode::hang_in_execute) {
      wait_for_stop(stop);
      return fail(Errc::cancelled, "task cancelled");
    }
    TaskData answer = task;
    answer.metrics["loss"] = static_cast<double>(task.round + 1);
    answer.metrics["num_samples"] = 10;
    if (task.params.empty() && task.name == tasks::train) {
      // A layout of its own for a task without a model (FedAvg's first round): "w", four F32 ones.
      auto ones = std::make_shared<std::vector<float>>(4, 1.0f);
      answer.params.push_back(
          WireTensor{"w", DType::F32, {4}, std::as_bytes(std::span<const float>(*ones)), ones});
    }
    return answer;
  }
  void stop() noexcept override { stopped = true; }

  std::atomic<bool> stopped{false};

 private:
  Mode mode_;
};

// Two rounds of "train" to every site; reports how many answered and the mean loss of each round.
class TwoRounds final : public Workflow {
 public:
  bool throw_in_callback = false;
  std::vector<SiteResult> results;

  Result<void> run(WorkflowHost& host) override {
    for (std::uint64_t round = 0; round < 2; ++round) {
      TaskData task;
      task.name = tasks::train;
      task.round = round;
      task.total_rounds = 2;
      double loss = 0;
      int answered = 0;
      auto sent = host.broadcast(task, host.sites(), std::chrono::seconds(10), [&](SiteResult&& r) {
        if (throw_in_callback) {
          throw std::logic_error("aggregation bug");
        }
        if (r.result) {
          loss += r.result->metrics.at("loss");
          ++answered;
        }
        results.push_back(std::move(r));
      });
      if (!sent) {
        return sent;
      }
      host.report("clients_ok", answered, round);
      host.report("loss", answered == 0 ? 0.0 : loss / answered, round);
    }
    return ok();
  }
};

// Records what a server job tells its observer.
class Recorder final : public ProgressObserver {
 public:
  void round_started(const TaskData& task, std::size_t sites) override {
    started.push_back(task.round);
    EXPECT_EQ(sites, 2u);
  }
  void site_result(const TaskData&, const SiteResult& r, Clock::duration, std::size_t answered,
                   std::size_t total) override {
    results.push_back(r.site + (r.result ? " ok" : " failed"));
    EXPECT_LE(answered, total);
  }
  void round_aggregated(std::uint64_t round, bool final, const std::map<std::string, double>& m) override {
    aggregated.push_back(round);
    finals += final ? 1 : 0;
    EXPECT_FALSE(m.empty());
  }
  void finished(const JobReport&) override { ++finishes; }

  std::vector<std::uint64_t> started;
  std::vector<std::string> results;
  std::vector<std::uint64_t> aggregated;
  int finals = 0;
  int finishes = 0;
};

struct Sites {
  explicit Sites(FakeExecutor::Mode second = FakeExecutor::Mode::good)
      : one(std::make_shared<FakeExecutor>()), two(std::make_shared<FakeExecutor>(second)) {
    jobs.push_back(std::make_unique<ClientJob>("site-1", one));
    jobs.push_back(std::make_unique<ClientJob>("site-2", two));
  }
  std::vector<ClientJob*> pointers() { return {jobs[0].get(), jobs[1].get()}; }
  // Starts both sites; true when both started.
  bool start() { return jobs[0]->start({}) && jobs[1]->start({}); }

  std::shared_ptr<FakeExecutor> one;
  std::shared_ptr<FakeExecutor> two;
  std::vector<std::unique_ptr<ClientJob>> jobs;
};

TEST(JobRuntime, AServerJobRunsTwoClientJobsOverTheInProcessLink) {
  test::TempDir dir;
  Sites sites;
  for (auto& job : sites.jobs) {
    EXPECT_EQ(job->status(), RunState::not_started);
    ASSERT_TRUE(job->start({}));
    EXPECT_EQ(job->status(), RunState::started);
  }
  InProcessLink link(sites.pointers());
  EXPECT_EQ(link.sites(), (std::vector<std::string>{"site-1", "site-2"}));
  auto metrics = MetricsLog::open(dir.path() / "metrics.jsonl");
  ASSERT_TRUE(metrics) << metrics.error().message;
  auto workflow = std::make_shared<TwoRounds>();
  Recorder recorder;
  ServerJob server(workflow, link, &recorder, metrics->get());
  auto report = server.run({});
  ASSERT_TRUE(report.outcome) << report.outcome.error().message;
  EXPECT_EQ(report.rounds.at(0).at("clients_ok"), 2);
  EXPECT_EQ(report.rounds.at(1).at("loss"), 2);
  EXPECT_EQ(recorder.started, (std::vector<std::uint64_t>{0, 1}));
  EXPECT_EQ(recorder.results.size(), 4u);
  EXPECT_EQ(recorder.aggregated, (std::vector<std::uint64_t>{0, 1}));
  EXPECT_EQ(recorder.finals, 0);
  EXPECT_EQ(recorder.finishes, 1);
  for (auto& job : sites.jobs) {
    job->stop();
    EXPECT_EQ(job->status(), RunState::stopped);
  }
  EXPECT_TRUE(sites.one->stopped && sites.two->stopped);
  std::ifstream in(dir.path() / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["source"], "server");
    EXPECT_TRUE(j["round"].is_number_unsigned()) << line;
    ++lines;
  }
  EXPECT_EQ(lines, 4);
}

// The real workflow.fedavg (its plugin linked statically) over the same runtime: two rounds, the final
// evaluation, the model written.
TEST(JobRuntime, FedAvgRunsOverTwoClientJobsAndWritesTheModel) {
  test::TempDir dir;
  KernelSettings settings;
  settings.use_default_paths = false;
  settings.use_env_path = false;
  settings.log.level = LogLevel::warn;
  settings.workspace = dir.path();
  settings.subs.workspace = dir.path().string();
  Kernel kernel(std::move(settings));
  ASSERT_TRUE(kernel.add_static(ember_plugin_descriptor_fedavg_workflow(), "<static>"));
  Options options;
  options.set("rounds", std::int64_t{2});
  auto workflow = kernel.registry().create_as<Workflow>("workflow.fedavg", options);
  ASSERT_TRUE(workflow) << workflow.error().message;
  Sites sites;
  ASSERT_TRUE(sites.start());
  InProcessLink link(sites.pointers());
  Recorder recorder;
  ServerJob server(*workflow, link, &recorder, nullptr);
  auto report = server.run({});
  ASSERT_TRUE(report.outcome) << report.outcome.error().message;
  EXPECT_EQ(report.rounds.at(0).at("clients_ok"), 2);
  EXPECT_EQ(report.rounds.at(1).at("clients_ok"), 2);
  EXPECT_GT(report.bytes_moved, 0u);
  EXPECT_EQ(recorder.started.size(), 3u) << "two training rounds and the final evaluation";
  EXPECT_EQ(recorder.finals, 1);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "model.safetensors"));
}

TEST(JobRuntime, AnExecutorThrowingOnAWorkerThreadBecomesThatSitesError) {
  Sites sites(FakeExecutor::Mode::throw_in_execute);
  ASSERT_TRUE(sites.start());
  InProcessLink link(sites.pointers());
  auto workflow = std::make_shared<TwoRounds>();
  ServerJob server(workflow, link, nullptr, nullptr);
  auto report = server.run({});
  ASSERT_TRUE(report.outcome);
  ASSERT_EQ(workflow->results.size(), 4u);
  for (const auto& r : workflow->results) {
    if (r.site == "site-2") {
      ASSERT_FALSE(r.result);
      EXPECT_EQ(r.result.error().code, Errc::internal);
      EXPECT_THAT(r.result.error().message,
                  HasSubstr("site-2: the executor's execute() threw: trainer wrapper bug"));
    } else {
      EXPECT_TRUE(r.result);
    }
  }
  EXPECT_EQ(report.rounds.at(1).at("clients_ok"), 1);
}

TEST(JobRuntime, AStartThatThrowsOrFailsLeavesTheSiteFailedWithItsError) {
  ClientJob throws("site-1", std::make_shared<FakeExecutor>(FakeExecutor::Mode::throw_in_start));
  auto started = throws.start({});
  ASSERT_FALSE(started);
  EXPECT_EQ(throws.status(), RunState::failed);
  EXPECT_THAT(throws.error()->message, HasSubstr("site-1: the executor's start() threw: launcher exploded"));
  EXPECT_TRUE(is_site_failure(*throws.error()));
  // A task for a site that did not start gets the start error.
  auto task = throws.execute(TaskData{}, {});
  ASSERT_FALSE(task);
  EXPECT_THAT(task.error().message, HasSubstr("launcher exploded"));

  ClientJob wrong("site-2", std::make_shared<FakeExecutor>(FakeExecutor::Mode::fail_start));
  ASSERT_FALSE(wrong.start({}));
  EXPECT_EQ(wrong.status(), RunState::failed);
  EXPECT_FALSE(is_site_failure(*wrong.error()));  // a config error: the job cannot run anywhere
}

TEST(JobRuntime, AStopCutsAStartThatWaitsForItsTrainer) {
  ClientJob site("site-1", std::make_shared<FakeExecutor>(FakeExecutor::Mode::hang_in_start));
  std::stop_source stop;
  Result<void> started = ok();
  std::jthread starter([&] { started = site.start(stop.get_token()); });
  while (site.status() != RunState::starting) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto t0 = Clock::now();
  stop.request_stop();
  starter.join();
  EXPECT_LT(test::ms_between(t0, Clock::now()), test::kWakeBound.count());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, Errc::cancelled);
  EXPECT_EQ(site.status(), RunState::failed);
}

TEST(JobRuntime, AStopDuringARoundCancelsItAndTheWorkflowSeesCancelled) {
  Sites sites(FakeExecutor::Mode::hang_in_execute);
  ASSERT_TRUE(sites.start());
  InProcessLink link(sites.pointers());
  auto workflow = std::make_shared<TwoRounds>();
  ServerJob server(workflow, link, nullptr, nullptr);
  std::stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop.request_stop();
  });
  auto report = server.run(stop.get_token());
  ASSERT_FALSE(report.outcome);
  EXPECT_EQ(report.outcome.error().code, Errc::cancelled);
  // site-1 answered; site-2 was cancelled, by the stop or by the host's accounting of what is still out.
  ASSERT_EQ(workflow->results.size(), 2u);
}

TEST(JobRuntime, AWorkflowThrowingInAResultCallbackOnAWorkerThreadFailsTheJob) {
  Sites sites;
  ASSERT_TRUE(sites.start());
  InProcessLink link(sites.pointers());
  auto workflow = std::make_shared<TwoRounds>();
  workflow->throw_in_callback = true;
  ServerJob server(workflow, link, nullptr, nullptr);
  auto report = server.run({});
  ASSERT_FALSE(report.outcome);
  EXPECT_EQ(report.outcome.error().code, Errc::internal);
  EXPECT_THAT(report.outcome.error().message, HasSubstr("aggregation bug"));
}

TEST(JobRuntime, ALinkToAnUnknownSiteSaysSo) {
  Sites sites;
  InProcessLink link(sites.pointers());
  auto r = link.execute("site-9", TaskData{}, {});
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("no site 'site-9'"));
}

TEST(Workspace, ASecondLockIsRefusedWithTheFirstOnesPid) {
  test::TempDir dir;
  auto first = WorkspaceLock::acquire(dir.path());
  ASSERT_TRUE(first) << first.error().message;
  auto second = WorkspaceLock::acquire(dir.path());
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, Errc::io_error);
  EXPECT_THAT(second.error().message,
              HasSubstr("in use by another run (ember pid " + std::to_string(::getpid())));
  first = fail(Errc::internal, "released");
  EXPECT_TRUE(WorkspaceLock::acquire(dir.path()));
}

TEST(Workspace, JobIdsFollowTheNameRules) {
  EXPECT_TRUE(check_job_id("hello-fedavg-20261207-101500"));
  for (const std::string& bad :
       std::vector<std::string>{"../../evil", "a/b", "", "line\nbreak", std::string(129, 'a'), "sp ace"}) {
    auto checked = check_job_id(bad);
    ASSERT_FALSE(checked) << bad;
    EXPECT_EQ(checked.error().code, Errc::invalid_argument);
    EXPECT_THAT(checked.error().message, HasSubstr("A-Z a-z 0-9 _ -"));
    EXPECT_EQ(checked.error().message.find('\n'), std::string::npos) << "a newline is shown escaped";
  }
}

TEST(Workspace, PrivateFoldersAreMode0700) {
  test::TempDir dir;
  auto nested = dir.path() / "ws" / "site-1";
  ASSERT_TRUE(make_private_dir(nested));
  for (const auto& d : {dir.path() / "ws", nested}) {
    auto perms = std::filesystem::status(d).permissions();
    EXPECT_EQ(perms & std::filesystem::perms::all, std::filesystem::perms::owner_all) << d;
  }
}

}  // namespace
}  // namespace ember::kernel
