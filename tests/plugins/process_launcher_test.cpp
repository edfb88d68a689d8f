// launcher.process against real processes. Every test that starts one checks, at its end, that neither the
// process nor its group is left behind.

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/launcher.hpp>
#include <ember/plugin.hpp>

#include "support.hpp"

EMBER_DECLARE_STATIC_PLUGIN(process_launcher);

extern char** environ;

namespace ember {
namespace {

using namespace std::chrono_literals;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// Keeps every line logged, so tests can check what the child printed.
class CapturingLogger final : public Logger {
 public:
  struct Line {
    LogLevel level;
    std::string text;
    friend bool operator==(const Line&, const Line&) = default;
  };

  void log(LogLevel level, std::string_view message) noexcept override {
    std::lock_guard lock(mutex_);
    lines_.push_back({level, std::string(message)});
  }
  bool enabled(LogLevel) const noexcept override { return true; }
  std::string_view name() const noexcept override { return "plugin.launcher.process"; }

  std::vector<Line> lines() const {
    std::lock_guard lock(mutex_);
    return lines_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<Line> lines_;
};

void PrintTo(const CapturingLogger::Line& line, std::ostream* os) {
  *os << "level " << static_cast<int>(line.level) << " '" << line.text << "'";
}

// Alive and not a zombie (a zombie has ended; it only waits to be reaped, perhaps by an uncaring init).
bool alive(pid_t pid) {
  if (kill(pid, 0) != 0) {
    return false;
  }
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  return close == std::string::npos || close + 2 >= text.size() || text[close + 2] != 'Z';
}

// The parent pid from /proc (0 once the process is gone).
pid_t parent_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  if (close == std::string::npos) {
    return 0;
  }
  std::istringstream fields(text.substr(close + 2));
  std::string state;
  pid_t parent = 0;
  fields >> state >> parent;
  return parent;
}

bool group_exists(pid_t pgid) {
  return kill(-pgid, 0) == 0 || errno != ESRCH;
}

// The first line of a file another process writes, once it is there (bounded: 20 s).
std::string wait_for_line(const std::filesystem::path& file) {
  for (int i = 0; i < 2000; ++i) {
    std::ifstream in(file);
    std::string line;
    if (in && std::getline(in, line) && !line.empty()) {
      return line;
    }
    std::this_thread::sleep_for(10ms);
  }
  return {};
}

std::vector<std::string> read_lines(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

pid_t pid_of(const LaunchHandle& handle) {
  return static_cast<pid_t>(std::stol(handle.id()));
}

class ProcessLauncherTest : public ::testing::Test {
 protected:
  ProcessLauncherTest() {
    auto added = kernel_->add_static(ember_plugin_descriptor_process_launcher(), "<static>");
    EXPECT_TRUE(added) << added.error().message;
  }

  // Creates the launcher the way the registry does, but with a logger the test can read.
  std::unique_ptr<Launcher> make(const Options& given = {}) {
    auto& registry = kernel_->registry();
    const auto* info = registry.find("launcher.process");
    EXPECT_NE(info, nullptr);
    if (info == nullptr) {
      return nullptr;
    }
    auto options = registry.resolve_options(*info, given, registry.substitutions());
    EXPECT_TRUE(options) << options.error().message;
    if (!options) {
      return nullptr;
    }
    ComponentContext context("launcher.process", "test", logger_, *options, workspace_.path(),
                             kernel_->events(), registry, std::stop_token());
    auto made = info->factory(context);
    EXPECT_TRUE(made) << made.error().message;
    if (!made) {
      return nullptr;
    }
    return std::unique_ptr<Launcher>(dynamic_cast<Launcher*>(made->release()));
  }

  std::unique_ptr<LaunchHandle> launch(Launcher& launcher, LaunchSpec spec) {
    auto handle = launcher.launch(spec);
    EXPECT_TRUE(handle) << handle.error().message;
    if (handle) {
      launched_.push_back(pid_of(**handle));
      return std::move(*handle);
    }
    return nullptr;
  }

  static LaunchSpec shell(std::string script) {
    return LaunchSpec{"job-a", {"/bin/sh", "-c", std::move(script)}, {}, {}, {}};
  }

  ExitStatus finish(LaunchHandle& handle) {
    auto status = handle.wait(60s);
    EXPECT_TRUE(status) << status.error().message;
    EXPECT_TRUE(status && status->has_value());
    return status && status->has_value() ? **status : ExitStatus{ExitStatus::How::exited, -1};
  }

  void TearDown() override {
    // Whatever a test did, nothing it launched may survive it: handles are gone by now, and stopped their
    // groups when they went.
    for (pid_t pid : launched_) {
      EXPECT_FALSE(alive(pid)) << "pid " << pid;
      EXPECT_FALSE(group_exists(pid)) << "process group " << pid;
    }
  }

  std::unique_ptr<kernel::Kernel> kernel_ = test::static_kernel();
  std::shared_ptr<CapturingLogger> logger_ = std::make_shared<CapturingLogger>();
  test::TempDir workspace_;
  test::TempDir scratch_;
  std::vector<pid_t> launched_;
};

TEST_F(ProcessLauncherTest, KeepsTheExitCodeExactly) {
  auto launcher = make();
  auto handle = launch(*launcher, shell("exit 7"));
  ASSERT_TRUE(handle);
  EXPECT_EQ(finish(*handle), (ExitStatus{ExitStatus::How::exited, 7}));
  EXPECT_EQ(handle->state(), RunState::failed);
  auto stopped = handle->stop(1s);
  ASSERT_TRUE(stopped) << stopped.error().message;
  EXPECT_EQ(*stopped, (ExitStatus{ExitStatus::How::exited, 7}));  // stop after the end keeps the status
  EXPECT_FALSE(group_exists(pid_of(*handle)));
}

TEST_F(ProcessLauncherTest, ASuccessfulExitIsStopped) {
  auto launcher = make();
  auto handle = launch(*launcher, shell("exit 0"));
  ASSERT_TRUE(handle);
  EXPECT_EQ(finish(*handle), (ExitStatus{ExitStatus::How::exited, 0}));
  EXPECT_EQ(handle->state(), RunState::stopped);
}

TEST_F(ProcessLauncherTest, KeepsTheSignalExactly) {
  auto launcher = make();
  auto handle = launch(*launcher, shell("kill -USR1 $$"));
  ASSERT_TRUE(handle);
  EXPECT_EQ(finish(*handle), (ExitStatus{ExitStatus::How::signaled, SIGUSR1}));
  EXPECT_EQ(handle->state(), RunState::failed);
}

TEST_F(ProcessLauncherTest, LogsStdoutAndStderrLineByLineWithAPrefix) {
  auto launcher = make();
  auto handle = launch(*launcher, shell("echo out-1; echo err-1 >&2; echo; echo out-2; printf 'no newline'"));
  ASSERT_TRUE(handle);
  EXPECT_TRUE(finish(*handle).success());
  std::string prefix = "[job-a pid " + handle->id() + "] ";
  handle.reset();  // joins the reader: every line is logged after this
  auto lines = logger_->lines();
  using Line = CapturingLogger::Line;
  EXPECT_THAT(lines, Contains(Line{LogLevel::info, prefix + "out-1"}));
  EXPECT_THAT(lines, Contains(Line{LogLevel::warn, prefix + "err-1"}));
  EXPECT_THAT(lines, Contains(Line{LogLevel::info, prefix}));  // an empty line is a line
  EXPECT_THAT(lines, Contains(Line{LogLevel::info, prefix + "out-2"}));
  EXPECT_THAT(lines, Contains(Line{LogLevel::info, prefix + "no newline"}));
  // Stdout keeps its order.
  std::vector<std::string> out;
  for (const auto& line : lines) {
    if (line.level == LogLevel::info && line.text.starts_with(prefix)) {
      out.push_back(line.text.substr(prefix.size()));
    }
  }
  EXPECT_EQ(out, (std::vector<std::string>{"out-1", "", "out-2", "no newline"}));
}

TEST_F(ProcessLauncherTest, LevelsAndLineLengthAreOptions) {
  Options options;
  options.set("stdout_level", std::string("debug"));
  options.set("stderr_level", std::string("error"));
  options.set("max_line_bytes", std::int64_t{4});
  auto launcher = make(options);
  auto handle = launch(*launcher, shell("echo abcdefghij; echo abcd; echo xy >&2"));
  ASSERT_TRUE(handle);
  EXPECT_TRUE(finish(*handle).success());
  std::string prefix = "[job-a pid " + handle->id() + "] ";
  handle.reset();
  std::vector<std::string> debug;
  std::vector<std::string> error;
  for (const auto& line : logger_->lines()) {
    if (line.level == LogLevel::debug) {
      debug.push_back(line.text);
    } else if (line.level == LogLevel::error) {
      error.push_back(line.text);
    }
  }
  EXPECT_EQ(debug,
            (std::vector<std::string>{prefix + "abcd", prefix + "efgh", prefix + "ij", prefix + "abcd"}));
  EXPECT_EQ(error, (std::vector<std::string>{prefix + "xy"}));
}

TEST_F(ProcessLauncherTest, EnvironmentCwdAndGpusReachTheChild) {
  ASSERT_EQ(setenv("EMBER_PROBE_PARENT", "inherited", 1), 0);
  Options options;
  options.set("env", std::vector<std::string>{"FROM_OPTION=a=b", "OVERRIDDEN=option"});
  auto launcher = make(options);
  std::filesystem::create_directories(scratch_.path() / "sub dir");
  auto spec = shell("env > \"$OUT/env\"; pwd > \"$OUT/pwd\"");
  spec.env = {{"OUT", scratch_.path().string()}, {"OVERRIDDEN", "spec"}};
  spec.cwd = scratch_.path() / "sub dir";
  spec.gpus = {"0", "2"};
  auto handle = launch(*launcher, spec);
  ASSERT_TRUE(handle);
  EXPECT_TRUE(finish(*handle).success());
  auto env = read_lines(scratch_.path() / "env");
  EXPECT_THAT(env, Contains("EMBER_PROBE_PARENT=inherited"));
  EXPECT_THAT(env, Contains("FROM_OPTION=a=b"));
  EXPECT_THAT(env, Contains("OVERRIDDEN=spec"));
  EXPECT_THAT(env, Contains("CUDA_VISIBLE_DEVICES=0,2"));
  EXPECT_EQ(read_lines(scratch_.path() / "pwd"),
            (std::vector<std::string>{std::filesystem::canonical(scratch_.path() / "sub dir").string()}));
  unsetenv("EMBER_PROBE_PARENT");
}

TEST_F(ProcessLauncherTest, WithoutInheritEnvTheChildGetsAMinimalEnvironment) {
  ASSERT_EQ(setenv("EMBER_PROBE_PARENT", "inherited", 1), 0);
  Options options;
  options.set("inherit_env", false);
  auto launcher = make(options);
  auto spec = shell("env > \"$OUT/env\"");
  spec.env = {{"OUT", scratch_.path().string()}};
  auto handle = launch(*launcher, spec);
  ASSERT_TRUE(handle);
  EXPECT_TRUE(finish(*handle).success());
  auto env = read_lines(scratch_.path() / "env");
  ASSERT_NE(std::getenv("PATH"), nullptr);
  ASSERT_NE(std::getenv("HOME"), nullptr);
  EXPECT_THAT(env, Not(Contains("EMBER_PROBE_PARENT=inherited")));
  EXPECT_THAT(env, Not(Contains(HasSubstr("CUDA_VISIBLE_DEVICES"))));
  EXPECT_THAT(env, Contains(std::string("PATH=") + std::getenv("PATH")));
  EXPECT_THAT(env, Contains(std::string("HOME=") + std::getenv("HOME")));
  for (const auto& line : env) {
    auto name = line.substr(0, line.find('='));
    // What the minimal set allows, plus OUT and what sh itself sets (PWD, and SHLVL in some shells).
    EXPECT_THAT(
        (std::vector<std::string>{"PATH", "HOME", "LANG", "TMPDIR", "USER", "OUT", "PWD", "SHLVL", "_"}),
        Contains(name));
  }
  unsetenv("EMBER_PROBE_PARENT");
}

TEST_F(ProcessLauncherTest, AnEmptyCwdIsTheWorkspace) {
  auto launcher = make();
  auto spec = shell("pwd > \"$OUT/pwd\"");
  spec.env = {{"OUT", scratch_.path().string()}};
  auto handle = launch(*launcher, spec);
  ASSERT_TRUE(handle);
  EXPECT_TRUE(finish(*handle).success());
  EXPECT_EQ(read_lines(scratch_.path() / "pwd"),
            (std::vector<std::string>{std::filesystem::canonical(workspace_.path()).string()}));
}

TEST_F(ProcessLauncherTest, BadOptionsAreCreateErrors) {
  Options env;
  env.set("env", std::vector<std::string>{"GOOD=1", "NOT VALID=1"});
  auto made = kernel_->registry().create("launcher.process", env);
  ASSERT_FALSE(made);
  EXPECT_EQ(made.error().code, Errc::invalid_option);
  EXPECT_THAT(made.error().message, HasSubstr("\"NOT VALID=1\" is not one of: <name>=<any>"));
  Options no_equals;
  no_equals.set("env", std::vector<std::string>{"JUSTANAME"});
  made = kernel_->registry().create("launcher.process", no_equals);
  ASSERT_FALSE(made);
  EXPECT_THAT(made.error().message, HasSubstr("\"JUSTANAME\" is not one of"));
  Options level;
  level.set("stderr_level", std::string("loud"));
  made = kernel_->registry().create("launcher.process", level);
  ASSERT_FALSE(made);
  EXPECT_THAT(made.error().message, HasSubstr("stderr_level"));
  Options length;
  length.set("max_line_bytes", std::int64_t{0});
  made = kernel_->registry().create("launcher.process", length);
  ASSERT_FALSE(made);
  EXPECT_THAT(made.error().message, HasSubstr("max_line_bytes"));
}

TEST_F(ProcessLauncherTest, AProgramThatCannotStartIsALaunchError) {
  auto launcher = make();
  auto missing = launcher->launch(LaunchSpec{"job-a", {"ember-no-such-program"}, {}, {}, {}});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::not_found);
  EXPECT_THAT(missing.error().message,
              HasSubstr("cannot start 'ember-no-such-program': No such file or directory"));
  EXPECT_THAT(missing.error().message, HasSubstr("job-a"));

  auto not_executable = scratch_.write("script.sh", "#!/bin/sh\nexit 0\n");
  auto denied = launcher->launch(LaunchSpec{"job-a", {not_executable.string()}, {}, {}, {}});
  ASSERT_FALSE(denied);
  EXPECT_THAT(denied.error().message,
              HasSubstr("cannot start '" + not_executable.string() + "': Permission denied"));

  auto no_dir = launcher->launch(LaunchSpec{"job-a", {"/bin/true"}, {}, scratch_.path() / "nowhere", {}});
  ASSERT_FALSE(no_dir);
  EXPECT_THAT(no_dir.error().message, HasSubstr("cannot change to directory"));
  EXPECT_THAT(no_dir.error().message, HasSubstr("nowhere"));

  auto bad_env = launcher->launch(LaunchSpec{"job-a", {"/bin/true"}, {{"A=B", "1"}}, {}, {}});
  ASSERT_FALSE(bad_env);
  EXPECT_EQ(bad_env.error().code, Errc::invalid_argument);
}

TEST_F(ProcessLauncherTest, WaitReturnsNothingWhileItRuns) {
  auto launcher = make();
  auto handle = launch(*launcher, LaunchSpec{"job-a", {"sleep", "300"}, {}, {}, {}});
  ASSERT_TRUE(handle);
  auto early = handle->wait(10ms);
  ASSERT_TRUE(early) << early.error().message;
  EXPECT_FALSE(early->has_value());
  EXPECT_EQ(handle->state(), RunState::started);
  EXPECT_TRUE(alive(pid_of(*handle)));
}

TEST_F(ProcessLauncherTest, StopEndsAProgramThatHonoursSigterm) {
  auto launcher = make();
  auto handle = launch(*launcher, LaunchSpec{"job-a", {"sleep", "300"}, {}, {}, {}});
  ASSERT_TRUE(handle);
  auto stopped = handle->stop(30s);
  ASSERT_TRUE(stopped) << stopped.error().message;
  EXPECT_EQ(*stopped, (ExitStatus{ExitStatus::How::signaled, SIGTERM}));
  EXPECT_EQ(handle->state(), RunState::stopped);
  EXPECT_EQ(*handle->stop(30s), *stopped);  // idempotent
  auto waited = handle->wait(0ms);
  ASSERT_TRUE(waited && waited->has_value());
  EXPECT_EQ(**waited, *stopped);
  EXPECT_FALSE(group_exists(pid_of(*handle)));
}

TEST_F(ProcessLauncherTest, StopKillsAGroupWhoseMembersIgnoreSigterm) {
  auto launcher = make();
  // The subshell exits at once: its sleep is orphaned inside the group and must come to this process
  // (a subreaper), which reaps it after the SIGKILL.
  auto spec = shell(
      "trap '' TERM; (sleep 300 & echo $! > \"$OUT/grandchild.tmp\"; mv \"$OUT/grandchild.tmp\" "
      "\"$OUT/grandchild\"); "
      "sleep 300");
  spec.env = {{"OUT", scratch_.path().string()}};
  auto handle = launch(*launcher, spec);
  ASSERT_TRUE(handle);
  auto line = wait_for_line(scratch_.path() / "grandchild");
  ASSERT_FALSE(line.empty());
  pid_t grandchild = static_cast<pid_t>(std::stol(line));
  EXPECT_TRUE(alive(grandchild));
  for (int i = 0; i < 2000 && parent_of(grandchild) != getpid(); ++i) {
    std::this_thread::sleep_for(10ms);  // the subshell may not have exited yet
  }
  EXPECT_EQ(parent_of(grandchild), getpid());
  auto stopped = handle->stop(100ms);
  ASSERT_TRUE(stopped) << stopped.error().message;
  EXPECT_EQ(*stopped, (ExitStatus{ExitStatus::How::signaled, SIGKILL}));
  EXPECT_EQ(handle->state(), RunState::stopped);
  EXPECT_FALSE(alive(grandchild));
  EXPECT_EQ(kill(grandchild, 0), -1);  // reaped, not left as a zombie
  EXPECT_FALSE(group_exists(pid_of(*handle)));
}

TEST_F(ProcessLauncherTest, WaitAndStopFromTwoThreads) {
  auto launcher = make();
  auto handle = launch(*launcher, LaunchSpec{"job-a", {"sleep", "300"}, {}, {}, {}});
  ASSERT_TRUE(handle);
  Result<std::optional<ExitStatus>> waited = std::optional<ExitStatus>();
  std::thread waiter([&] { waited = handle->wait(60s); });
  auto stopped = handle->stop(30s);
  waiter.join();
  ASSERT_TRUE(stopped) << stopped.error().message;
  ASSERT_TRUE(waited) << waited.error().message;
  ASSERT_TRUE(waited->has_value());
  EXPECT_EQ(**waited, *stopped);
}

TEST_F(ProcessLauncherTest, AChildOutlivesTheThreadThatLaunchedIt) {
  auto launcher = make();
  std::unique_ptr<LaunchHandle> handle;
  std::thread([&] { handle = launch(*launcher, LaunchSpec{"job-a", {"sleep", "300"}, {}, {}, {}}); }).join();
  ASSERT_TRUE(handle);
  auto early = handle->wait(200ms);
  ASSERT_TRUE(early);
  EXPECT_FALSE(early->has_value());
  // Had the launching thread's end killed it (PR_SET_PDEATHSIG), it would have died of SIGKILL, not of the
  // SIGTERM sent now.
  auto stopped = handle->stop(30s);
  ASSERT_TRUE(stopped) << stopped.error().message;
  EXPECT_EQ(*stopped, (ExitStatus{ExitStatus::How::signaled, SIGTERM}));
}

TEST_F(ProcessLauncherTest, DestroyingTheHandleStopsTheGroup) {
  auto launcher = make();
  auto handle = launch(*launcher, shell("sleep 300 & sleep 300"));
  ASSERT_TRUE(handle);
  pid_t pid = pid_of(*handle);
  handle.reset();
  EXPECT_FALSE(alive(pid));
  EXPECT_FALSE(group_exists(pid));
}

TEST_F(ProcessLauncherTest, TheChildDiesWhenTheLauncherProcessDies) {
  auto pid_file = scratch_.path() / "orphan.pid";
  std::string helper = EMBER_PROCESS_LAUNCHER_HELPER;
  std::vector<char*> argv = {helper.data(), const_cast<char*>(pid_file.c_str()), nullptr};
  pid_t launcher_process = 0;
  ASSERT_EQ(posix_spawn(&launcher_process, helper.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  auto line = wait_for_line(pid_file);
  if (line.empty()) {
    kill(launcher_process, SIGKILL);
    waitpid(launcher_process, nullptr, 0);
    FAIL() << "the helper did not launch its child";
  }
  pid_t orphan = static_cast<pid_t>(std::stol(line));
  EXPECT_TRUE(alive(orphan));
  kill(launcher_process, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(launcher_process, &status, 0), launcher_process);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // The death signal is asynchronous: poll, bounded.
  for (int i = 0; i < 1000 && alive(orphan); ++i) {
    std::this_thread::sleep_for(10ms);
  }
  bool survived = alive(orphan);
  EXPECT_FALSE(survived);
  if (survived) {
    kill(-orphan, SIGKILL);
  }
  // This process may be a subreaper (earlier tests made it one): collect the orphan if it came here.
  waitpid(orphan, nullptr, WNOHANG);
}

}  // namespace
}  // namespace ember
