// launcher.docker against a real engine: podman's Docker-compatible service, started for this run on a socket
// in a temporary folder (podman_engine.hpp), with a busybox image imported without a registry. Where podman
// cannot run here, the program says why and exits 77, which meson reports as a skip.
//
// Every test checks at its end that no container of its own is left (the labels say whose they are).

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/launcher.hpp>
#include <ember/plugin.hpp>

#include "exit_codes.hpp"
#include "podman_engine.hpp"
#include "support.hpp"

EMBER_DECLARE_STATIC_PLUGIN(docker_launcher);

namespace ember {
namespace {

using namespace std::chrono_literals;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
namespace fs = std::filesystem;

test::PodmanEngine* engine = nullptr;
const char* self_path = nullptr;

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Keeps every line logged, so tests can check what the container printed.
class CapturingLogger final : public Logger {
 public:
  struct Line {
    LogLevel level;
    std::string text;
  };

  void log(LogLevel level, std::string_view message) noexcept override {
    std::lock_guard lock(mutex_);
    lines_.push_back({level, std::string(message)});
  }
  bool enabled(LogLevel) const noexcept override { return true; }
  std::string_view name() const noexcept override { return "plugin.launcher.docker"; }

  std::vector<Line> lines() const {
    std::lock_guard lock(mutex_);
    return lines_;
  }
  bool has(LogLevel level, const std::string& part) const {
    for (const auto& line : lines()) {
      if (line.level == level && line.text.find(part) != std::string::npos) {
        return true;
      }
    }
    return false;
  }
  std::string all() const {
    std::string out;
    for (const auto& line : lines()) {
      out += line.text + "\n";
    }
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<Line> lines_;
};

// The options every launcher of these tests starts from: the test engine, its image allowed.
Options base_options() {
  Options options;
  options.set("socket", engine->socket().string());
  options.set("image", std::string(test::PodmanEngine::image));
  options.set("allowed_images", std::vector<std::string>{"localhost/ember-test/*"});
  return options;
}

class DockerLauncherTest : public ::testing::Test {
 protected:
  DockerLauncherTest() {
    auto added = kernel_->add_static(ember_plugin_descriptor_docker_launcher(), "<static>");
    EXPECT_TRUE(added) << added.error().message;
  }

  // Creates the launcher the way the registry does, but with a logger the test can read.
  std::unique_ptr<Launcher> make(const Options& given, std::stop_token stop = {}) {
    auto& registry = kernel_->registry();
    const auto* info = registry.find("launcher.docker");
    EXPECT_NE(info, nullptr);
    if (info == nullptr) {
      return nullptr;
    }
    auto options = registry.resolve_options(*info, given, registry.substitutions());
    EXPECT_TRUE(options) << options.error().message;
    if (!options) {
      return nullptr;
    }
    ComponentContext context("launcher.docker", "test", logger_, *options, workspace_.path(),
                             kernel_->events(), registry, std::move(stop));
    auto made = info->factory(context);
    EXPECT_TRUE(made) << made.error().message;
    if (!made) {
      return nullptr;
    }
    return std::unique_ptr<Launcher>(dynamic_cast<Launcher*>(made->release()));
  }

  static LaunchSpec shell(std::string script) {
    return LaunchSpec{"job-a", {"sh", "-c", std::move(script)}, {}, {}, {}};
  }

  static ExitStatus finish(LaunchHandle& handle) {
    auto status = handle.wait(120s);
    EXPECT_TRUE(status) << status.error().message;
    EXPECT_TRUE(status && status->has_value());
    return status && status->has_value() ? **status : ExitStatus{ExitStatus::How::exited, -1};
  }

  void TearDown() override {
    // Launchers of these tests label their containers ember.site=local (no job): none may be left.
    EXPECT_THAT(engine->containers_with_label("ember.site=local"), IsEmpty());
  }

  std::unique_ptr<kernel::Kernel> kernel_ = test::static_kernel();
  std::shared_ptr<CapturingLogger> logger_ = std::make_shared<CapturingLogger>();
  test::TempDir workspace_;
  test::TempDir elsewhere_;  // outside the workspace, which containers see
};

TEST_F(DockerLauncherTest, ExitCodesAreKeptExactly) {
  auto launcher = make(base_options());
  ASSERT_TRUE(launcher);
  auto zero = launcher->launch(shell("exit 0"));
  ASSERT_TRUE(zero) << zero.error().message;
  EXPECT_EQ(finish(**zero), (ExitStatus{ExitStatus::How::exited, 0}));
  EXPECT_EQ((*zero)->state(), RunState::stopped);

  auto seven = launcher->launch(shell("exit 7"));
  ASSERT_TRUE(seven) << seven.error().message;
  EXPECT_EQ(finish(**seven), (ExitStatus{ExitStatus::How::exited, 7}));
  EXPECT_EQ((*seven)->state(), RunState::failed);
  auto again = (*seven)->stop(1s);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, (ExitStatus{ExitStatus::How::exited, 7}));
  EXPECT_TRUE(logger_->has(LogLevel::warn, "exited with code 7")) << logger_->all();
}

TEST_F(DockerLauncherTest, StopKillsAContainerThatIgnoresSigtermAndSaysBySignal) {
  auto launcher = make(base_options());
  ASSERT_TRUE(launcher);
  // sleep is the container's PID 1, which the kernel shields from SIGTERM without a handler: SIGKILL ends it.
  auto handle = launcher->launch(LaunchSpec{"sleeper", {"sleep", "600"}, {}, {}, {}});
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_EQ((*handle)->state(), RunState::started);
  auto running = (*handle)->wait(100ms);
  ASSERT_TRUE(running);
  EXPECT_FALSE(running->has_value());
  auto stopped = (*handle)->stop(300ms);
  ASSERT_TRUE(stopped) << stopped.error().message;
  EXPECT_EQ(*stopped, (ExitStatus{ExitStatus::How::signaled, SIGKILL}));
  EXPECT_EQ((*handle)->state(), RunState::stopped);
  EXPECT_TRUE(logger_->has(LogLevel::warn, "was killed by signal 9 (SIGKILL)")) << logger_->all();
}

TEST_F(DockerLauncherTest, AProgramKilledBySignalIsReportedAsTheSignal) {
  auto launcher = make(base_options());
  ASSERT_TRUE(launcher);
  // A child of the container's init, killed by a signal, and the shell passes that on as 128 + n.
  auto handle = launcher->launch(shell("sh -c 'kill -TERM $$'; exit $?"));
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_EQ(finish(**handle), (ExitStatus{ExitStatus::How::signaled, SIGTERM}));
  EXPECT_EQ((*handle)->state(), RunState::failed);
}

TEST_F(DockerLauncherTest, OutputLinesReachTheJobLogWithTheirStream) {
  auto launcher = make(base_options());
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(
      LaunchSpec{"talker",
                 {"sh", "-c", "echo out-line; echo err-line >&2; echo \"$GREETING\"; printf no-newline"},
                 {{"GREETING", "hello from the spec"}},
                 {},
                 {}});
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_EQ(finish(**handle), (ExitStatus{ExitStatus::How::exited, 0}));
  EXPECT_TRUE(logger_->has(LogLevel::info, "] out-line")) << logger_->all();
  EXPECT_TRUE(logger_->has(LogLevel::warn, "] err-line")) << logger_->all();
  EXPECT_TRUE(logger_->has(LogLevel::info, "] hello from the spec")) << logger_->all();
  EXPECT_TRUE(logger_->has(LogLevel::info, "] no-newline")) << logger_->all();
  EXPECT_TRUE(logger_->has(LogLevel::info, "[talker container ")) << logger_->all();
}

TEST_F(DockerLauncherTest, DestroyingAHandleStopsAndRemovesItsContainer) {
  auto launcher = make(base_options());
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(LaunchSpec{"aborted", {"sleep", "600"}, {}, {}, {}});
  ASSERT_TRUE(handle) << handle.error().message;
  std::string id = (*handle)->id();
  EXPECT_THAT(engine->containers_with_label("ember.site=local"), Contains(id));
  handle->reset();
  EXPECT_THAT(engine->containers_with_label("ember.site=local"), IsEmpty());
}

TEST_F(DockerLauncherTest, TheWorkspaceIsWritableAndListedMountsReadOnly) {
  test::TempDir data;
  data.write("input.txt", "site data\n");
  auto options = base_options();
  options.set("allowed_mounts", std::vector<std::string>{data.path().string()});
  options.set("mounts", std::vector<std::string>{data.path().string() + ":/data"});
  auto launcher = make(options);
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(shell("cat /data/input.txt > out.txt && pwd >> out.txt && ! touch /data/x"));
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_EQ(finish(**handle), (ExitStatus{ExitStatus::How::exited, 0})) << logger_->all();
  EXPECT_EQ(read_text(workspace_.path() / "out.txt"), "site data\n" + workspace_.path().string() + "\n");
  EXPECT_FALSE(fs::exists(data.path() / "x"));
}

TEST_F(DockerLauncherTest, RefusesAnImageTheSiteDoesNotAllowBeforeTalkingToTheEngine) {
  auto options = base_options();
  options.set("socket", (elsewhere_.path() / "no-engine.sock").string());  // nothing may reach an engine
  options.set("image", std::string("docker.io/library/alpine:3"));
  auto launcher = make(options);
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(shell("exit 0"));
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, Errc::rejected);
  EXPECT_THAT(handle.error().message,
              AllOf(HasSubstr("job 'job', 'job-a'"), HasSubstr("the image 'docker.io/library/alpine:3'"),
                    HasSubstr("allowed_images: localhost/ember-test/*")));
}

TEST_F(DockerLauncherTest, RefusesMountsTheSiteDoesNotListBeforeTalkingToTheEngine) {
  test::TempDir data;
  struct Case {
    std::vector<std::string> allowed;
    std::vector<std::string> mounts;
    std::string why;
  };
  auto engine_dir = engine->socket().parent_path().string();
  std::vector<Case> cases = {
      {{}, {data.path().string()}, "is not inside a folder the site allows"},
      {{data.path().string()},
       {data.path().string() + ":rw"},
       "is not inside a folder the site allows to be written"},
      {{data.path().string()},
       {data.path().string() + "/../../etc"},
       "is not inside a folder the site allows"},
      {{engine_dir}, {engine_dir}, "would put the container engine's socket"},
      {{"/"}, {"/var/run"}, "would put the container engine's socket"},
      {{data.path().string()}, {data.path().string() + "/missing"}, "cannot be mounted"},
  };
  for (const auto& c : cases) {
    auto options = base_options();
    options.set("allowed_mounts", c.allowed);
    options.set("mounts", c.mounts);
    auto launcher = make(options);
    ASSERT_TRUE(launcher);
    auto handle = launcher->launch(shell("exit 0"));
    ASSERT_FALSE(handle) << c.mounts.front();
    EXPECT_THAT(handle.error().message, AllOf(HasSubstr("job 'job', 'job-a'"), HasSubstr(c.why)))
        << c.mounts.front();
  }
  // The launcher's own mounts may not hold the socket either: a workspace around it is refused.
  kernel_ = test::kernel_with_paths({}, engine->socket().parent_path());
  EXPECT_TRUE(kernel_->add_static(ember_plugin_descriptor_docker_launcher(), "<static>"));
  auto& registry = kernel_->registry();
  auto options =
      registry.resolve_options(*registry.find("launcher.docker"), base_options(), registry.substitutions());
  ASSERT_TRUE(options);
  ComponentContext context("launcher.docker", "test", logger_, *options, engine->socket().parent_path(),
                           kernel_->events(), registry, std::stop_token());
  auto made = registry.find("launcher.docker")->factory(context);
  ASSERT_TRUE(made);
  std::unique_ptr<Launcher> launcher(dynamic_cast<Launcher*>(made->release()));
  auto handle = launcher->launch(shell("exit 0"));
  ASSERT_FALSE(handle);
  EXPECT_THAT(handle.error().message, HasSubstr("would put the container engine's socket"));
}

TEST_F(DockerLauncherTest, AMissingEngineIsAClearError) {
  auto options = base_options();
  options.set("socket", "unix://" + (elsewhere_.path() / "no-engine.sock").string());
  auto launcher = make(options);
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(shell("exit 0"));
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, Errc::peer_gone);
  EXPECT_THAT(handle.error().message,
              AllOf(HasSubstr("job 'job', 'job-a'"), HasSubstr("cannot reach the container engine at '"),
                    HasSubstr("no-engine.sock")));
}

// An engine that takes connections and never answers.
class SilentEngine {
 public:
  explicit SilentEngine(const fs::path& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
    EXPECT_EQ(::listen(fd_, 8), 0);
  }
  ~SilentEngine() { ::close(fd_); }

 private:
  int fd_ = -1;  // connections wait in the backlog, their requests unread
};

TEST_F(DockerLauncherTest, ARequestTheEngineNeverAnswersEndsAtTheRequestTimeout) {
  SilentEngine silent(elsewhere_.path() / "silent.sock");
  auto options = base_options();
  options.set("socket", (elsewhere_.path() / "silent.sock").string());
  options.set("request_timeout", std::chrono::milliseconds(300));
  auto launcher = make(options);
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(shell("exit 0"));
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, Errc::timeout);
  EXPECT_THAT(handle.error().message, AllOf(HasSubstr("job 'job', 'job-a'"), HasSubstr("did not answer")));
}

TEST_F(DockerLauncherTest, AStopCutsAWaitOnTheEngine) {
  SilentEngine silent(elsewhere_.path() / "silent.sock");
  auto options = base_options();
  options.set("socket", (elsewhere_.path() / "silent.sock").string());
  options.set("request_timeout", std::chrono::milliseconds(600000));  // far beyond the test's own timeout
  std::stop_source stop;
  auto launcher = make(options, stop.get_token());
  ASSERT_TRUE(launcher);
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    stop.request_stop();
  });
  auto handle = launcher->launch(shell("exit 0"));
  stopper.join();
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, Errc::cancelled);
  EXPECT_THAT(handle.error().message, HasSubstr("cut by a stop"));
}

TEST_F(DockerLauncherTest, LimitsEnvironmentAndNetworkReachTheEngine) {
  auto options = base_options();
  options.set("cpus", 0.5);
  options.set("memory_bytes", std::int64_t{256} << 20);
  options.set("env", std::vector<std::string>{"SITE_SETTING=from-the-site", "SHARED=site"});
  auto launcher = make(options);
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(LaunchSpec{
      "limited", {"sh", "-c", "echo \"$SITE_SETTING $SHARED\"; sleep 600"}, {{"SHARED", "launch"}}, {}, {}});
  ASSERT_TRUE(handle) << handle.error().message;
  auto inspected =
      engine->podman({"inspect", "--format",
                      "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.NetworkMode}} "
                      "{{index .Config.Labels \"ember.site\"}}",
                      (*handle)->id()});
  EXPECT_EQ(inspected.exit_code, 0) << inspected.out;
  EXPECT_EQ(inspected.out, "500000000 268435456 none local\n");
  auto stopped = (*handle)->stop(200ms);
  ASSERT_TRUE(stopped) << stopped.error().message;
  EXPECT_TRUE(logger_->has(LogLevel::info, "] from-the-site launch")) << logger_->all();
}

TEST_F(DockerLauncherTest, DockerHostIsHonouredWhenTheSocketOptionIsEmpty) {
  auto options = base_options();
  options.set("socket", std::string());
  std::string saved = std::getenv("DOCKER_HOST") != nullptr ? std::getenv("DOCKER_HOST") : "";
  ::setenv("DOCKER_HOST", ("unix://" + engine->socket().string()).c_str(), 1);
  auto launcher = make(options);
  saved.empty() ? ::unsetenv("DOCKER_HOST") : ::setenv("DOCKER_HOST", saved.c_str(), 1);
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(shell("exit 3"));
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_EQ(finish(**handle), (ExitStatus{ExitStatus::How::exited, 3}));
}

TEST_F(DockerLauncherTest, AMissingImageIsAClearError) {
  auto options = base_options();
  options.set("image", std::string("localhost/ember-test/absent:1"));
  auto launcher = make(options);
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(shell("exit 0"));
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, Errc::not_found);
  EXPECT_THAT(handle.error().message,
              AllOf(HasSubstr("job 'job', 'job-a' (image 'localhost/ember-test/absent:1')"),
                    HasSubstr("cannot create the container"), HasSubstr("image")));
}

TEST_F(DockerLauncherTest, AProgramTheImageLacksIsAClearError) {
  auto launcher = make(base_options());
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(LaunchSpec{"ghost", {"/no/such/program"}, {}, {}, {}});
  ASSERT_FALSE(handle);
  EXPECT_THAT(handle.error().message,
              AllOf(HasSubstr("job 'job', 'ghost'"), HasSubstr("cannot start the container"),
                    HasSubstr("/no/such/program")));
}

TEST_F(DockerLauncherTest, ASecondLauncherReapsTheContainersADeadOneLeft) {
  // Another process launches a container and is killed with SIGKILL: its container runs on, orphaned.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  // Built before the fork: the child of a threaded process only makes async-signal-safe calls.
  std::string socket = engine->socket().string();
  std::string workspace = workspace_.path().string();
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives the test
    ::close(fds[0]);
    ::dup2(fds[1], 1);
    ::execl(self_path, self_path, "--leave-container", socket.c_str(), workspace.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string id;
  char buffer[256];
  ssize_t got = 0;
  while (id.find('\n') == std::string::npos && (got = ::read(fds[0], buffer, sizeof buffer)) > 0) {
    id.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(fds[0]);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_NE(id.find('\n'), std::string::npos) << "the helper printed no container id: " << id;
  id.pop_back();
  ASSERT_THAT(engine->containers_with_label("ember.site=local"), Contains(id));

  auto launcher = make(base_options());
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(shell("exit 0"));
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_EQ(finish(**handle), (ExitStatus{ExitStatus::How::exited, 0}));
  handle->reset();
  EXPECT_TRUE(logger_->has(LogLevel::warn, "reaped container " + id.substr(0, 12))) << logger_->all();
  EXPECT_THAT(engine->containers_with_label("ember.site=local"), IsEmpty());
}

TEST_F(DockerLauncherTest, ALiveLaunchersContainersAreNotReaped) {
  auto first = make(base_options());
  ASSERT_TRUE(first);
  auto running = first->launch(LaunchSpec{"kept", {"sleep", "600"}, {}, {}, {}});
  ASSERT_TRUE(running) << running.error().message;
  auto second = make(base_options());
  ASSERT_TRUE(second);
  auto handle = second->launch(shell("exit 0"));
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_EQ(finish(**handle), (ExitStatus{ExitStatus::How::exited, 0}));
  EXPECT_EQ((*running)->state(), RunState::started);
  EXPECT_FALSE(logger_->has(LogLevel::warn, "reaped")) << logger_->all();
}

// --- trainers in containers under `ember simulate` ---

class ContainerJob : public ::testing::Test {
 protected:
  // The sanitizers' settings of this run, for the trainers in containers (which get no host environment).
  static std::string sanitizer_env() {
    std::string env = "env = [";
    for (const char* name : {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"}) {
      if (const char* value = std::getenv(name)) {
        env += std::string("\"") + name + "=" + value + "\", ";
      }
    }
    return env + "]\n";
  }

  fs::path write_job(const std::string& mode, const std::string& bad_site, int min_clients) {
    auto build = test::build_root().string();
    std::string env = sanitizer_env();
    std::ostringstream toml;
    toml << "schema_version = 1\n[job]\nname = \"docker-e2e\"\n"
         << "[timeouts]\nlaunch = \"60s\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"10s\"\n"
         << "task_wait = \"30s\"\nresult_wait = \"5m\"\nshutdown_grace = \"2s\"\nstream_idle = \"10s\"\n"
         << "[components.fedavg]\ntype = \"workflow.fedavg\"\nrounds = 3\nmin_clients = " << min_clients
         << "\n"
         << "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [\"" EMBER_TEST_TRAINER
            "\", \"--mode\", \""
         << mode << "\", \"--bad-site\", \"" << bad_site << "\"]\n"
         << "[components.launcher]\ntype = \"launcher.docker\"\nsocket = \"" << engine->socket().string()
         << "\"\n"
         << "image = \"" << test::PodmanEngine::image << "\"\nallowed_images = [\""
         << test::PodmanEngine::image
         << "\"]\n"
         // The trainer is the build tree's program: the build tree and the host's libraries, read-only.
         << "allowed_mounts = [\"" << build << "\", \"/usr\"]\nmounts = [\"" << build << "\", \"/usr\"]\n"
         << env << "[components.pipe]\ntype = \"pipe.socket\"\n";
    return dir_.write("job/job.toml", toml.str());
  }

  test::RunResult simulate(const fs::path& job) {
    return test::run_program(
        {(test::build_root() / "kernel" / "ember").string(), "simulate", job.string(), "--clients", "2",
         "--workspace", (dir_.path() / "ws").string(), "--job-id", "docker-e2e"},
        300);
  }

  // The suite sets EMBER_LOG=warn; the sites' logs are checked for the launcher's info lines, so ember runs
  // with the job's own levels.
  void SetUp() override {
    if (const char* level = std::getenv("EMBER_LOG")) {
      saved_log_ = level;
    }
    ::unsetenv("EMBER_LOG");
  }

  void TearDown() override {
    if (saved_log_) {
      ::setenv("EMBER_LOG", saved_log_->c_str(), 1);
    }
    EXPECT_THAT(engine->containers_with_label("ember.job=docker-e2e"), IsEmpty());
  }

  std::optional<std::string> saved_log_;

  test::TempDir dir_;
};

TEST_F(ContainerJob, TrainersInContainersFinishTheRounds) {
  auto run = simulate(write_job("good", "", 2));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("2/2 sites ready"));
  EXPECT_TRUE(fs::exists(dir_.path() / "ws" / "server" / "model.safetensors"));
  // Each trainer was its container's first process.
  for (const char* site : {"site-1", "site-2"}) {
    EXPECT_EQ(read_text(dir_.path() / "ws" / site / "trainer.pid"), "1\n") << site;
  }
  EXPECT_THAT(read_text(dir_.path() / "ws" / "site-1" / "log.txt"), HasSubstr("as container ")) << run.out;
}

TEST_F(ContainerJob, ATrainersExitCodeReachesTheJobExactly) {
  auto run = simulate(write_job("exit3", "site-1", 1));
  EXPECT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out + run.err + read_text(dir_.path() / "ws" / "site-1" / "log.txt"),
              HasSubstr("exited with code 3"));
}

#ifdef EMBER_TEST_HELLO_TRAINER
// The shipped hello-fedavg job with its LibTorch trainers in containers
// (configs/jobs/hello-fedavg/docker.toml), its launcher pointed at the test engine and image, and the build
// tree added to the mounts it allows and asks for, since the trainer and plugins are the build tree's.
TEST_F(ContainerJob, TheHelloJobRunsWithItsTrainersInContainers) {
  std::ifstream in(test::source_root() / "configs" / "jobs" / "hello-fedavg" / "docker.toml");
  std::ostringstream toml;
  std::string line;
  const std::string build = "\"" + test::build_root().string() + "\", ";
  while (std::getline(in, line)) {
    if (line.starts_with("image = ")) {
      line = "image = \"" + std::string(test::PodmanEngine::image) + "\"";
    } else if (line.starts_with("allowed_images = ")) {
      line = "allowed_images = [\"" + std::string(test::PodmanEngine::image) + "\"]";
    } else if (line.starts_with("allowed_mounts = [") || line.starts_with("mounts = [")) {
      line.insert(line.find('[') + 1, build);
    } else if (line == "type = \"launcher.docker\"") {
      line += "\nsocket = \"" + engine->socket().string() + "\"\n" + sanitizer_env();
    }
    toml << line << "\n";
  }
  auto job = dir_.write("hello/job.toml", toml.str());
  auto run = test::run_program(
      {(test::build_root() / "kernel" / "ember").string(), "simulate", job.string(), "--clients", "2",
       "--workspace", (dir_.path() / "ws").string(), "--job-id", "docker-e2e", "--quiet"},
      600);
  ASSERT_EQ(run.exit_code, kernel::exit_code::ok) << run.out << run.err;
  EXPECT_THAT(run.out, HasSubstr("val_accuracy"));
  EXPECT_TRUE(fs::exists(dir_.path() / "ws" / "server" / "model.safetensors"));
  EXPECT_THAT(read_text(dir_.path() / "ws" / "site-2" / "log.txt"), HasSubstr("as container ")) << run.out;
}
#endif

}  // namespace

// The helper for ASecondLauncherReapsTheContainersADeadOneLeft: launches a sleeping container, prints its id
// and waits to be killed, leaving the container behind.
int leave_container(const std::string& socket, const std::string& workspace) {
  auto kernel = test::kernel_with_paths({}, workspace);
  if (!kernel->add_static(ember_plugin_descriptor_docker_launcher(), "<static>")) {
    return 1;
  }
  Options options;
  options.set("socket", socket);
  options.set("image", std::string(test::PodmanEngine::image));
  options.set("allowed_images", std::vector<std::string>{test::PodmanEngine::image});
  auto launcher = kernel->registry().create_as<Launcher>("launcher.docker", options);
  if (!launcher) {
    std::cerr << launcher.error().message << "\n";
    return 1;
  }
  auto handle = (*launcher)->launch(LaunchSpec{"left", {"sleep", "600"}, {}, {}, {}});
  if (!handle) {
    std::cerr << handle.error().message << "\n";
    return 1;
  }
  std::cout << (*handle)->id() << std::endl;
  while (true) {
    ::pause();
  }
}

}  // namespace ember

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--leave-container") == 0) {
    return ember::leave_container(argv[2], argv[3]);
  }
  ember::self_path = "/proc/self/exe";
  std::string why;
  auto engine = ember::test::PodmanEngine::start(why);
  if (!engine) {
    std::cout << "SKIP: no container engine for launcher.docker's tests: " << why << "\n";
    return 77;
  }
  ember::engine = engine.get();
  ::testing::InitGoogleTest(&argc, argv);
  int result = RUN_ALL_TESTS();
  ember::engine = nullptr;
  engine.reset();
  return result;
}
