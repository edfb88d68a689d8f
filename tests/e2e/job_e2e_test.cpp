// A federated job end to end: `ember simulate` with real trainer processes (ember-test-trainer) over real
// pipes, and trainers that fail on purpose — killed, exiting non-zero, hanging before HELLO, answering with
// the wrong tensors. Each test checks what the job reports, its exit code, and that no trainer survived.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "exit_codes.hpp"
#include "support.hpp"

extern char** environ;

namespace ember {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct JobSpec {
  std::string pipe = "pipe.socket";
  std::string mode = "good";
  std::string bad_site;
  int from_round = 1;
  int rounds = 3;
  int min_clients = 1;
  std::string launch = "10s";
  std::string heartbeat_timeout = "3s";
  std::int64_t spill_over = -1;  // -1: the executor's default
  bool converter = false;        // the executor lists a converter (converter.identity) the trainer must speak
  std::string round_timeout = "0s";
  std::string launch_mode = "job";  // the executor's `launch`: one trainer per job, or one per task
  std::string address;              // the pipe's address, the same for every site ("": each its own)
  std::string stream_idle = "10s";
  std::string trainer_config;  // the [trainer_config] table's lines ("": none)
  std::string executor_extra;  // more lines of the executor's table
};

// The final model of the test trainer's job: round 0 answers ones, each later round adds one: 3 rounds → 3.
void expect_final_model_is_three(const fs::path& model) {
  std::ifstream in(model, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 16u) << model;
  float values[4];
  std::memcpy(values, bytes.data() + bytes.size() - 16, 16);
  for (float v : values) {
    EXPECT_EQ(v, 3.0f) << model;
  }
}

class JobE2E : public ::testing::TestWithParam<std::string> {
 protected:
  fs::path write_job(JobSpec spec) {
    std::ostringstream toml;
    toml << "schema_version = 1\n[job]\nname = \"e2e\"\n"
         << "[timeouts]\nlaunch = \"" << spec.launch << "\"\nheartbeat_interval = \"500ms\"\n"
         << "heartbeat_timeout = \"" << spec.heartbeat_timeout << "\"\ntask_wait = \"10s\"\n"
         << "result_wait = \"5m\"\nshutdown_grace = \"2s\"\nstream_idle = \"" << spec.stream_idle << "\"\n"
         << "[components.fedavg]\ntype = \"workflow.fedavg\"\nrounds = " << spec.rounds
         << "\nmin_clients = " << spec.min_clients << "\nround_timeout = \"" << spec.round_timeout << "\"\n"
         << "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [\"" EMBER_TEST_TRAINER
            "\", \"--mode\", \""
         << spec.mode << "\", \"--bad-site\", \"" << spec.bad_site << "\", \"--from-round\", \""
         << spec.from_round << "\"]\n"
         << "launch = \"" << spec.launch_mode << "\"\n"
         << spec.executor_extra
         << (spec.spill_over >= 0 ? "spill_over = " + std::to_string(spec.spill_over) + "\n" : std::string())
         << (spec.converter
                 ? "converters = [\"tensors\"]\n[components.tensors]\ntype = \"converter.identity\"\n"
                 : std::string())
         << "[components.launcher]\ntype = \"launcher.process\"\n"
         << "[components.pipe]\ntype = \"" << GetParam() << "\"\n"
         << (spec.address.empty() ? std::string() : "address = \"" + spec.address + "\"\n")
         << (spec.trainer_config.empty() ? std::string() : "[trainer_config]\n" + spec.trainer_config);
    return dir_.write("job.toml", toml.str());
  }

  test::RunResult simulate(const fs::path& job, int clients = 2) {
    return test::run_program(
        {(test::build_root() / "kernel" / "ember").string(), "simulate", job.string(), "--clients",
         std::to_string(clients), "--workspace", (dir_.path() / "ws").string(), "--job-id", "e2e-test"},
        120);
  }

  // Starts `ember simulate` on `job` with two clients, its stdout and stderr going to out.txt; -1 on failure.
  pid_t spawn_simulate(const fs::path& job) {
    std::string ember = (test::build_root() / "kernel" / "ember").string();
    std::string out_file = (dir_.path() / "out.txt").string();
    std::vector<std::string> args{
        ember,      "simulate", job.string(), "--clients", "2", "--workspace", (dir_.path() / "ws").string(),
        "--job-id", "e2e-test"};
    std::vector<char*> argv;
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = -1;
    if (::posix_spawn(&pid, ember.c_str(), &actions, nullptr, argv.data(), environ) != 0) {
      pid = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    return pid;
  }

  // What the spawned `ember simulate` printed so far.
  std::string output() const {
    std::ifstream in(dir_.path() / "out.txt");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }

  // Polls `ready` every 10 ms for at most `seconds`.
  template <class Ready>
  static bool wait_until(int seconds, Ready ready) {
    for (int i = 0; i < seconds * 100; ++i) {
      if (ready()) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return ready();
  }

  // The exit code of `pid` once it exits within `seconds`; otherwise it is killed and nullopt returned.
  static std::optional<int> wait_exit(pid_t pid, int seconds) {
    int status = 0;
    if (wait_until(seconds, [&] { return ::waitpid(pid, &status, WNOHANG) == pid; })) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return std::nullopt;
  }

  // Every trainer wrote its pid; none may be alive (or a zombie of ours) once ember has exited.
  void expect_no_trainer_left(int clients = 2) {
    for (int i = 1; i <= clients; ++i) {
      auto pid_file = dir_.path() / "ws" / ("site-" + std::to_string(i)) / "trainer.pid";
      std::ifstream in(pid_file);
      pid_t pid = 0;
      in >> pid;
      ASSERT_GT(pid, 0) << pid_file;
      errno = 0;
      EXPECT_EQ(::kill(pid, 0), -1) << "trainer " << pid << " of site-" << i << " survived the job";
      EXPECT_EQ(errno, ESRCH);
    }
  }

  test::TempDir dir_;
};

TEST_P(JobE2E, AllSitesFinishTheRoundsAndTheModelIsSaved) {
  auto run = simulate(write_job({}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("finished"));
  EXPECT_THAT(run.out, HasSubstr("2/2 sites ready"));
  expect_final_model_is_three(dir_.path() / "ws" / "server" / "model.safetensors");
  EXPECT_TRUE(fs::exists(dir_.path() / "ws" / "metrics.jsonl"));
  EXPECT_TRUE(fs::exists(dir_.path() / "ws" / "site-1" / "log.txt"));
  EXPECT_TRUE(fs::exists(dir_.path() / "ws" / "server" / "checkpoints" / "round-2.safetensors"));
  expect_no_trainer_left();
  // A site's files are its own: folders 0700, files 0600.
  auto ws = dir_.path() / "ws";
  for (const auto& folder : {ws, ws / "site-1", ws / "server", ws / "server" / "checkpoints"}) {
    EXPECT_EQ(fs::status(folder).permissions() & fs::perms::all, fs::perms::owner_all) << folder;
  }
  for (const auto& file :
       {ws / "metrics.jsonl", ws / "site-1" / "log.txt", ws / "server" / "model.safetensors",
        ws / "server" / "checkpoints" / "round-2.safetensors"}) {
    EXPECT_EQ(fs::status(file).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write)
        << file;
  }
  // The test trainer logs "loss" with step = the task's round: each line carries that round, both as numbers.
  std::ifstream metrics(ws / "metrics.jsonl");
  std::string line;
  int trainer_lines = 0;
  while (std::getline(metrics, line)) {
    if (line.find("\"source\":\"site-") == std::string::npos) {
      continue;
    }
    ++trainer_lines;
    auto number_after = [&](const std::string& key) {
      auto at = line.find("\"" + key + "\":");
      return at == std::string::npos
                 ? std::string("missing")
                 : line.substr(at + key.size() + 3, line.find_first_of(",}", at) - at - key.size() - 3);
    };
    EXPECT_EQ(number_after("round"), number_after("step")) << line;
    EXPECT_NE(number_after("step").front(), '"') << "step is a JSON number: " << line;
  }
  // Three training rounds and the final evaluation, two sites; a LOG of the last task may reach the job after
  // its result, when nobody reads any more (LOG is best effort), so at least the training rounds' lines.
  EXPECT_GE(trainer_lines, 6) << "3 rounds, 2 sites";
}

TEST_P(JobE2E, TheTrainersInfoLinesDoNotReachTheConsoleAsWarnings) {
  // Without EMBER_LOG (the suite sets it to warn), as a user runs it: the trainer's stderr is shown at warn,
  // so the trainer must not write its plugins' info lines there (the file pipe's 'trainer end attached').
  const char* saved = std::getenv("EMBER_LOG");
  const std::string restore = saved != nullptr ? saved : "";
  ::unsetenv("EMBER_LOG");
  auto run = simulate(write_job({.rounds = 1}));
  if (saved != nullptr) {
    ::setenv("EMBER_LOG", restore.c_str(), 1);
  }
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out + run.err, Not(HasSubstr("trainer end attached")));
  EXPECT_THAT(run.out + run.err, Not(HasSubstr("[info]")));
  expect_no_trainer_left();
}

TEST_P(JobE2E, OneTrainerPerTaskGivesTheSameModel) {
  auto run = simulate(write_job({.launch_mode = "task"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  expect_final_model_is_three(dir_.path() / "ws" / "server" / "model.safetensors");
  expect_no_trainer_left();
}

TEST_P(JobE2E, ResultsSpilledToFilesGiveTheSameModel) {
  auto run = simulate(write_job({.spill_over = 1}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  expect_final_model_is_three(dir_.path() / "ws" / "server" / "model.safetensors");
  expect_no_trainer_left();
}

TEST_P(JobE2E, ATrainerKilledMidRoundFailsItsSiteAndTheJobGoesOn) {
  auto run = simulate(write_job({.mode = "sigkill", .bad_site = "site-2"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("site-2  FAILED"));
  EXPECT_THAT(run.out, HasSubstr("killed by signal 9"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, ATrainerDecliningATaskIsReportedAndGoesOnWithTheNextOne) {
  auto run = simulate(write_job({.mode = "decline", .bad_site = "site-2", .from_round = 1}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("site-2: the trainer declined task 'train' round 1: not this round"));
  EXPECT_THAT(run.out, HasSubstr("train round 3/3  site-2  ok")) << "the trainer did not live on";
  auto told = read_text(dir_.path() / "ws" / "site-2" / "told.txt");
  EXPECT_THAT(told, HasSubstr("task evaluate train 0 evaluate 1"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, TheTrainerConfigAndTaskNamesReachTheTrainer) {
  auto run =
      simulate(write_job({.trainer_config = "lr = 0.5\nname = \"cnn\"\n[trainer_config.nested]\nk = [1, 2]\n",
                          .executor_extra = "train_task = \"fit\"\n"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  auto told = read_text(dir_.path() / "ws" / "site-1" / "told.txt");
  EXPECT_THAT(told, HasSubstr("config {\"lr\":0.5,\"name\":\"cnn\",\"nested\":{\"k\":[1,2]}}"));
  EXPECT_THAT(told, HasSubstr("lr 0.5\n"));
  // fedavg sends "train", which this job's trainer does not call its train task.
  EXPECT_THAT(told, HasSubstr("task train train 0 evaluate 0"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, ATrainerKilledWhenMinClientsCannotHoldFailsTheJob) {
  auto run = simulate(write_job({.mode = "sigkill", .bad_site = "site-2", .min_clients = 2}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::job_failed) << run.out << run.err;
  EXPECT_THAT(run.err, HasSubstr("the job failed"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, ATrainerExitingNonZeroIsReportedWithItsCode) {
  auto run = simulate(write_job({.mode = "exit3", .bad_site = "site-1"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("site-1  FAILED"));
  EXPECT_THAT(run.out, HasSubstr("exited with code 3"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, ATrainerHangingBeforeHelloFailsAfterTheLaunchTimeout) {
  auto run = simulate(write_job({.mode = "hang-before-hello", .bad_site = "site-2", .launch = "2s"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("site-2: could not start"));
  EXPECT_THAT(run.out, HasSubstr("did not say HELLO within launch"));
  EXPECT_THAT(run.out, HasSubstr("1/2 sites ready"));
  expect_no_trainer_left();
}

// SIGTERM while a trainer hangs before HELLO: the launch wait is cut, the job ends as interrupted long before
// `launch` runs out, and no trainer is left.
TEST_P(JobE2E, SigtermDuringTheLaunchWaitEndsTheJobAsInterrupted) {
  auto ws = dir_.path() / "ws";
  pid_t pid = spawn_simulate(write_job({.mode = "hang-before-hello", .bad_site = "site-2", .launch = "60s"}));
  ASSERT_GT(pid, 0);
  // Both trainers launched (their pid files written): site-2's now hangs before HELLO.
  bool launched = wait_until(30, [&] {
    return fs::exists(ws / "site-1" / "trainer.pid") && fs::exists(ws / "site-2" / "trainer.pid");
  });
  ASSERT_TRUE(launched || (::kill(pid, SIGKILL), ::waitpid(pid, nullptr, 0), false))
      << "the trainers were not launched within 30 s";
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  // Bounded by the launch timeout: the job must end before it, not when it runs out.
  auto status = wait_exit(pid, 55);
  ASSERT_TRUE(status) << "ember simulate was still running when the launch timeout (60 s) ran out\n"
                      << output();
  EXPECT_EQ(*status, kernel::exit_code::interrupted) << output();
  EXPECT_THAT(output(), HasSubstr("the job was stopped before the trainer said HELLO"));
  EXPECT_THAT(output(), HasSubstr("interrupted by signal 15"));
  expect_no_trainer_left();
}

// SIGTERM while a site trains: its task is cut (ABORT to the trainer, which sees it), the job ends as
// interrupted well within result_wait, and no trainer is left.
TEST_P(JobE2E, SigtermDuringARoundAbortsTheTrainingSiteAndEndsTheJob) {
  auto ws = dir_.path() / "ws";
  pid_t pid = spawn_simulate(write_job({.mode = "poll-abort", .bad_site = "site-2"}));
  ASSERT_GT(pid, 0);
  // site-2 trains round 2 (polling the abort flag for up to 30 s).
  bool answered = wait_until(30, [&] { return fs::exists(ws / "site-2" / "training"); });
  ASSERT_TRUE(answered || (::kill(pid, SIGKILL), ::waitpid(pid, nullptr, 0), false)) << output();
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  auto status = wait_exit(pid, 55);
  ASSERT_TRUE(status) << "ember simulate was still running 55 s after SIGTERM\n" << output();
  EXPECT_EQ(*status, kernel::exit_code::interrupted) << output();
  EXPECT_THAT(output(), HasSubstr("site-2  FAILED"));
  EXPECT_TRUE(fs::exists(ws / "site-2" / "aborted")) << output();
  expect_no_trainer_left();
}

TEST_P(JobE2E, AResultWithWrongTensorNamesIsRejectedNamingTheTensor) {
  auto run = simulate(write_job({.mode = "wrong-names", .bad_site = "site-1"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("rejected: tensor 'w_renamed' was not in the task"));
  EXPECT_THAT(run.out, HasSubstr("tensor 'w' is missing"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, AResultWithWrongShapesIsRejectedNamingBothShapes) {
  auto run = simulate(write_job({.mode = "wrong-shapes", .bad_site = "site-2"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("tensor 'w' has shape [2, 2], the task sent [4]"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, ATrainerThatDoesNotDeclareTheJobsConverterFailsAtSessionStart) {
  auto run = simulate(write_job({.mode = "no-converters", .bad_site = "site-2", .converter = true}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("site-2: could not start"));
  EXPECT_THAT(run.out, HasSubstr("the trainer does not speak converter.identity (HELLO declared: none)"));
  EXPECT_THAT(run.out, HasSubstr("1/2 sites ready"));
  // The trainer was told why, in HELLO_REJECTED, and ended by itself (exit code 1, not a signal).
  EXPECT_THAT(read_text(dir_.path() / "ws" / "site-2" / "init-error.txt"),
              HasSubstr("the job rejected our HELLO: the trainer does not speak converter.identity"));
  EXPECT_THAT(run.out, HasSubstr("[trainer exited with code 1]"));
  expect_no_trainer_left();
}

TEST_P(JobE2E, ATrainerWithAWrongTokenIsReportedAsRefused) {
  auto run = simulate(write_job({.mode = "wrong-token", .bad_site = "site-2"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("site-2: could not start"));
  EXPECT_THAT(run.out, HasSubstr("wrong token"));
  EXPECT_THAT(run.out, Not(HasSubstr("before HELLO")));
  if (GetParam() == "pipe.file") {
    // No connection to drop: the HELLO arrives, and HELLO_REJECTED reaches the trainer before it is stopped.
    EXPECT_THAT(read_text(dir_.path() / "ws" / "site-2" / "init-error.txt"),
                HasSubstr("the job rejected our HELLO: wrong token"));
  }
  expect_no_trainer_left();
}

TEST_P(JobE2E, TwoSitesGivenOnePipeAddressAreRefusedNamingIt) {
  if (GetParam() == "pipe.cell") {
    GTEST_SKIP() << "pipe.cell has no shared address: each job end listens on a port of its own";
  }
  auto address = GetParam() == "pipe.socket" ? "unix:" + (dir_.path() / "shared.sock").string()
                                             : (dir_.path() / "shared-pipe").string();
  auto run = simulate(write_job({.launch = "5s", .address = address}));
  EXPECT_THAT(run.out + run.err, HasSubstr("another job end"));
  EXPECT_THAT(run.out + run.err, HasSubstr(GetParam() == "pipe.socket" ? address : "dir:" + address));
  EXPECT_THAT(run.out, HasSubstr("1/2 sites ready"));
}

TEST_P(JobE2E, ASiteOutOfTimeIsAbortedAndItsTrainerSeesTheAbortFlag) {
  auto run = simulate(write_job({.mode = "poll-abort", .bad_site = "site-2", .round_timeout = "2s"}));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("site-2  FAILED"));
  EXPECT_TRUE(fs::exists(dir_.path() / "ws" / "site-2" / "aborted")) << run.out << run.err;
  expect_no_trainer_left();
}

// Whether `pid` has ended: gone, or a zombie its stopped parent has not reaped yet.
bool ended(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  return text.empty() || (paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] == 'Z');
}

TEST_P(JobE2E, ATrainerWhoseJobIsFrozenEndsSoonAfterPeerGone) {
  // The whole job end stopped (SIGSTOP) while its trainer trains and logs: the trainer must notice
  // (heartbeat_timeout, 3 s) and end, not wait for a pipe's stream_idle (60 s) first.
  auto job = write_job(
      {.mode = "chatter", .bad_site = "site-1", .from_round = 0, .rounds = 1, .stream_idle = "60s"});
  auto out = dir_.path() / "simulate.out";
  std::vector<std::string> args = {(test::build_root() / "kernel" / "ember").string(),
                                   "simulate",
                                   job.string(),
                                   "--clients",
                                   "1",
                                   "--workspace",
                                   (dir_.path() / "ws").string(),
                                   "--job-id",
                                   "e2e-frozen"};
  std::vector<char*> argv;
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  pid_t ember = -1;
  ASSERT_EQ(posix_spawn(&ember, argv[0], &files, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&files);
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      ::kill(pid, SIGKILL);
      ::kill(pid, SIGCONT);
      int status = 0;
      ::waitpid(pid, &status, 0);
    }
  } reaper{ember};
  auto chatting = dir_.path() / "ws" / "site-1" / "chatting";
  for (int i = 0; i < 600 && !fs::exists(chatting); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(fs::exists(chatting)) << read_text(out);
  pid_t trainer = 0;
  std::ifstream(dir_.path() / "ws" / "site-1" / "trainer.pid") >> trainer;
  ASSERT_GT(trainer, 0);
  ASSERT_EQ(::kill(ember, SIGSTOP), 0);
  auto stopped = std::chrono::steady_clock::now();
  while (!ended(trainer) && std::chrono::steady_clock::now() - stopped < std::chrono::seconds(40)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto took = std::chrono::steady_clock::now() - stopped;
  EXPECT_TRUE(ended(trainer)) << "the trainer outlived its frozen job by 40 s";
  // heartbeat_timeout (3 s) plus the trainer's shutdown, with a generous margin; stream_idle is 60 s.
  EXPECT_LT(took, std::chrono::seconds(20));
}

TEST_P(JobE2E, EverySiteFailingFailsTheJob) {
  auto run = simulate(write_job({.mode = "exit3", .bad_site = "site-1", .from_round = 0}), 1);
  EXPECT_EQ(run.exit_code, kernel::exit_code::job_failed) << run.out << run.err;
  expect_no_trainer_left(1);
}

#ifdef EMBER_TEST_HELLO_TRAINER
// The README's job: the LibTorch trainer over each pipe; the final model must beat the first round's clearly.
class HelloJob : public ::testing::TestWithParam<std::string> {
 protected:
  test::TempDir dir_;
};

double accuracy_of_row(const std::string& out, const std::string& row) {
  // Summary rows: "<row> <clients> <seconds> <train_loss> <val_accuracy> <val_loss>".
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream cells(line);
    std::vector<std::string> c{std::istream_iterator<std::string>(cells),
                               std::istream_iterator<std::string>()};
    if (c.size() == 6 && c[0] == row) {
      return std::stod(c[4]);
    }
  }
  return -1;
}

TEST_P(HelloJob, FederatedRoundsImproveTheGlobalModel) {
  auto job = test::source_root() / "configs" / "jobs" / "hello-fedavg" / GetParam();
  auto run = test::run_program({(test::build_root() / "kernel" / "ember").string(), "simulate", job.string(),
                                "--clients", "2", "--workspace", (dir_.path() / "ws").string(), "--quiet"},
                               300);
  ASSERT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("val_accuracy"));
  double first = accuracy_of_row(run.out, "1");
  double last = accuracy_of_row(run.out, "final");
  ASSERT_GT(first, 0) << run.out;
  EXPECT_GT(last, first + 0.2) << run.out;
  EXPECT_TRUE(fs::exists(dir_.path() / "ws" / "server" / "model.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Pipes, HelloJob, ::testing::Values("job.toml", "file-pipe.toml"),
                         [](const auto& p) { return p.param == "job.toml" ? "socket" : "file"; });
#endif

INSTANTIATE_TEST_SUITE_P(Pipes, JobE2E, ::testing::Values("pipe.socket", "pipe.file", "pipe.cell"),
                         [](const auto& p) { return p.param.substr(5); });

}  // namespace
}  // namespace ember
