// The session protocol between processes, over each real pipe: the job end here, ember-test-peer as the
// trainer in its own process. Faults are real: SIGKILL mid-transfer, SIGSTOP, a stranger with a wrong token.

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <fstream>
#include <future>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pattern.hpp"
#include "support.hpp"

extern char** environ;

namespace ember {
namespace {

using namespace std::chrono_literals;

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using wire::Op;

// A child process that is always reaped: killed with SIGKILL if it is still running at the end.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    std::vector<char*> args;
    for (const auto& a : argv) {
      args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], nullptr, nullptr, args.data(), environ) != 0) {
      pid_ = -1;
    }
  }
  ~Child() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      kill(pid_, SIGCONT);
      wait_for(10s);
    }
  }
  pid_t pid() const { return pid_; }
  /// The wait status once it has ended within `timeout`.
  std::optional<int> wait_for(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (!status_) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        status_ = status;
        break;
      }
      if (Clock::now() > deadline) {
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    return status_;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

struct PipeCase {
  std::string name;
  std::string type;
  std::string address;  // "{ws}" stands for the workspace
};

class SessionE2E : public ::testing::TestWithParam<PipeCase> {
 protected:
  void SetUp() override {
    kernel_ = test::kernel_with_paths({test::build_root() / "plugins"}, ws_.path());
    if (!kernel_->registry().contains(GetParam().type)) {
      GTEST_SKIP() << GetParam().type << " is not built";
    }
    std::string address = GetParam().address;
    if (auto at = address.find("{ws}"); at != std::string::npos) {
      address.replace(at, 4, ws_.path().string());
    }
    Options options;
    options.set("address", address);
    auto pipe = kernel_->registry().create_as<Pipe>(GetParam().type, options, "e2e");
    ASSERT_TRUE(pipe) << pipe.error().message;
    pipe_ = *pipe;
    token_file_ = ws_.write("bootstrap.token", token_);
    chmod(token_file_.c_str(), 0600);
  }

  session::Settings settings() {
    session::Settings s;
    s.launch = 20s;
    s.heartbeat_interval = 100ms;
    s.heartbeat_timeout = 1000ms;
    s.stream_idle = 20s;
    return s;
  }

  // Opens the job end, starts the peer in `mode`, and completes the handshake.
  void start(const std::string& mode, std::vector<std::string> extra = {}, bool handshake = true) {
    auto end = pipe_->open(PipeSide::job, 5s, session::admit_hello(token_));
    ASSERT_TRUE(end) << end.error().message;
    peer_ = spawn_peer(mode, extra);
    ASSERT_GT(peer_->pid(), 0);
    job_ = std::make_unique<session::Session>(session::Role::job, std::move(*end), settings(),
                                              kernel_->logs().get("e2e.job"), &kernel_->events());
    if (handshake) {
      auto hello = job_->accept(token_);
      ASSERT_TRUE(hello) << hello.error().message;
    }
  }

  std::unique_ptr<Child> spawn_peer(const std::string& mode, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {EMBER_TEST_PEER,
                                     "--plugins",
                                     (test::build_root() / "plugins").string(),
                                     "--pipe",
                                     GetParam().type,
                                     "--address",
                                     pipe_->address(),
                                     "--token-file",
                                     token_file_.string(),
                                     "--mode",
                                     mode,
                                     "--hb-interval",
                                     "100",
                                     "--hb-timeout",
                                     "1000"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Child>(argv);
  }

  // Waits for the next message of `op`, skipping others.
  Result<session::Message> expect(Op op, std::chrono::milliseconds timeout = 30s) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto got = job_->receive(100ms);
      if (!got) {
        return fail(std::move(got.error()));
      }
      if (*got && (*got)->op == op) {
        return std::move(**got);
      }
    }
    return fail(Errc::timeout, "no " + std::string(wire::to_string(op)));
  }

  test::TempDir ws_;
  std::string token_ = "e2e-token-7f3a";
  std::filesystem::path token_file_;
  std::unique_ptr<kernel::Kernel> kernel_;
  std::shared_ptr<Pipe> pipe_;
  std::unique_ptr<Child> peer_;
  std::unique_ptr<session::Session> job_;
};

TEST_P(SessionE2E, TaskAndResultCrossProcessesByteExact) {
  start("echo", {"--reply-bytes", std::to_string(3u << 20)});
  // Once admitted, the peer is described as what it is (a socket learns that only at admission).
  EXPECT_THAT(job_->peer(), ::testing::Not(HasSubstr("no peer yet")));
  if (GetParam().name == "socket_unix") {
    EXPECT_THAT(job_->peer(), HasSubstr("peer pid " + std::to_string(peer_->pid())));
  }
  std::uint64_t size = (5u << 20) + 123;
  test::DigestSink digest;
  job_->set_sink_factory([&](const session::Message&) {
    digest.reset();
    return std::make_unique<test::ForwardSink>(digest);
  });
  auto sent = job_->send(Op::task_ready, "train/round-1", {}, std::make_shared<test::PatternSource>(size, 1));
  ASSERT_TRUE(sent) << sent.error().message;
  auto accepted = expect(Op::task_accepted);
  ASSERT_TRUE(accepted) << accepted.error().message;
  EXPECT_EQ(accepted->req_id, *sent);
  auto result = expect(Op::result_ready);
  ASSERT_TRUE(result) << result.error().message;
  EXPECT_EQ(*result->header("bytes"), std::to_string(size));
  EXPECT_EQ(*result->header("crc"), std::to_string(test::pattern_crc(size, 1)));
  EXPECT_EQ(digest.count(), 3u << 20);
  EXPECT_EQ(digest.crc(), test::pattern_crc(3u << 20, 2));
  job_->close(Op::shutdown, "done");
  auto status = peer_->wait_for(10s);
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
}

TEST_P(SessionE2E, PeerKilledMidTransferIsPeerGoneWithinHeartbeatTimeout) {
  start("die", {"--kill-after", std::to_string(4u << 20)});
  auto started = Clock::now();
  auto sent = job_->send(Op::task_ready, "train", {}, std::make_shared<test::PatternSource>(256u << 20, 1));
  ASSERT_FALSE(sent) << "the send to a killed peer succeeded";
  auto status = peer_->wait_for(5s);
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL);
  EXPECT_EQ(job_->state(), session::State::peer_gone);
  EXPECT_EQ(sent.error().code, Errc::peer_gone) << sent.error().message;
  // heartbeat_timeout (1 s) + one interval (100 ms), with room for a loaded machine; a socket sees the
  // end of the stream at once.
  EXPECT_LT(Clock::now() - started, 1000ms + 100ms + 2s);
}

TEST_P(SessionE2E, HungPeerIsPeerGoneWithinHeartbeatTimeout) {
  start("hang");
  ASSERT_TRUE(job_->post(Op::log, "hang"));  // the peer stops itself when this arrives
  auto started = Clock::now();
  Result<std::optional<session::Message>> got = std::optional<session::Message>();
  while (got && Clock::now() - started < 10s) {
    got = job_->receive(50ms);
  }
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::peer_gone);
  EXPECT_THAT(got.error().message, HasSubstr("heartbeat_timeout"));
  EXPECT_LT(Clock::now() - started, 1000ms + 100ms + 2s);
}

TEST_P(SessionE2E, StrangerWithAWrongTokenIsTurnedAway) {
  start("wrong-token", {}, false);
  if (GetParam().type == "pipe.socket" || GetParam().type == "pipe.cell") {
    // A pipe that screens its peers never admits the stranger (the socket pipe drops its connection, the
    // cell pipe its frames): it gives up, and the real trainer that comes next is admitted.
    auto status = peer_->wait_for(15s);
    ASSERT_TRUE(status);
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 3) << *status;
    auto trainer = spawn_peer("echo");
    auto hello = job_->accept(token_);
    ASSERT_TRUE(hello) << hello.error().message;
    ASSERT_TRUE(job_->send(Op::task_ready, "after-stranger"));
    EXPECT_TRUE(expect(Op::result_ready));
  } else {
    // A folder has no connections to screen: the stranger's HELLO arrives and the session rejects it.
    auto hello = job_->accept(token_);
    ASSERT_FALSE(hello);
    EXPECT_EQ(hello.error().code, Errc::rejected);
  }
}

INSTANTIATE_TEST_SUITE_P(Pipes, SessionE2E,
                         ::testing::Values(PipeCase{"socket_unix", "pipe.socket", "unix:{ws}/e2e.sock"},
                                           PipeCase{"socket_tcp", "pipe.socket", "tcp:127.0.0.1:0"},
                                           PipeCase{"file", "pipe.file", "{ws}/pipe"},
                                           PipeCase{"cell", "pipe.cell", ""}),
                         [](const auto& param_info) { return param_info.param.name; });

// Over 2 GiB through each pipe, byte-exact (the slow suite).
class SessionHuge : public SessionE2E {};

TEST_P(SessionHuge, MoreThanTwoGibibytesArriveByteExact) {
  start("echo");
  std::uint64_t size = (std::uint64_t{2} << 30) + (3u << 20) + 7;
  auto sent = job_->send(Op::task_ready, "big", {}, std::make_shared<test::PatternSource>(size, 5));
  ASSERT_TRUE(sent) << sent.error().message;
  auto result = expect(Op::result_ready, 120s);
  ASSERT_TRUE(result) << result.error().message;
  EXPECT_EQ(*result->header("bytes"), std::to_string(size));
  EXPECT_EQ(*result->header("crc"), std::to_string(test::pattern_crc(size, 5)));
  job_->close();
}

INSTANTIATE_TEST_SUITE_P(Pipes, SessionHuge,
                         ::testing::Values(PipeCase{"socket_unix", "pipe.socket", "unix:{ws}/e2e.sock"},
                                           PipeCase{"file", "pipe.file", "{ws}/pipe"}),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace ember
