// pipe.socket, black box: the shared module from the build tree, loaded by a kernel, with real sockets in a
// temporary workspace and, where a peer must be another process, a forked child writing raw bytes.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <optional>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/pipe.hpp>

#include "support.hpp"

// The largest single allocation made through operator new since the last reset, in this process and in
// the plugins it loaded: proves that a hostile length prefix allocates nothing of its size.
namespace {
std::atomic<std::size_t> largest_allocation{0};

void* counted_allocation(std::size_t size) {
  std::size_t seen = largest_allocation.load(std::memory_order_relaxed);
  while (size > seen && !largest_allocation.compare_exchange_weak(seen, size, std::memory_order_relaxed)) {
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) {
    return p;
  }
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t size) {
  return counted_allocation(size);
}
void* operator new[](std::size_t size) {
  return counted_allocation(size);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}

namespace ember {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using Frame = std::vector<std::byte>;

Frame text(std::string_view s) {
  Frame out;
  for (char c : s) {
    out.push_back(static_cast<std::byte>(c));
  }
  return out;
}

Frame pattern(std::size_t size, unsigned seed) {
  Frame out(size);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : out) {
    x = x * 1103515245u + 12345u;
    b = static_cast<std::byte>(x >> 24);
  }
  return out;
}

Frame prefixed(std::uint32_t length, const Frame& body = {}) {
  Frame out = {static_cast<std::byte>(length & 0xff), static_cast<std::byte>((length >> 8) & 0xff),
               static_cast<std::byte>((length >> 16) & 0xff), static_cast<std::byte>(length >> 24)};
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

long long millis_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// A raw Unix-socket client: what a stranger, or a misbehaving trainer, writes.
class RawClient {
 public:
  explicit RawClient(const std::filesystem::path& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  }
  ~RawClient() { close(); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }
  bool write(const Frame& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  // Whether the other side closed this connection within `timeout` (reads and drops what arrives).
  bool closed_by_peer(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    char scratch[4096];
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 10) == 1) {
        ssize_t n = ::recv(fd_, scratch, sizeof scratch, 0);
        if (n <= 0) {
          return true;
        }
      }
    }
    return false;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

// A forked child; SIGKILLed and reaped by the destructor whatever the test did.
class Child {
 public:
  explicit Child(pid_t pid) : pid_(pid) {}
  ~Child() { kill(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  pid_t pid() const { return pid_; }
  // Exit status as waitpid() reports it, or -1.
  int kill() {
    if (pid_ <= 0) {
      return status_;
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    pid_ = -1;
    return status_;
  }
  // The child's exit code once it has exited by itself (100 + signal if a signal ended it), else nullopt.
  std::optional<int> exited() {
    if (pid_ > 0 && ::waitpid(pid_, &status_, WNOHANG) == pid_) {
      pid_ = -1;
      exit_code_ = WIFEXITED(status_) ? WEXITSTATUS(status_) : 100 + WTERMSIG(status_);
    }
    return exit_code_;
  }

 private:
  pid_t pid_;
  int status_ = -1;
  std::optional<int> exit_code_;
};

// Waits for one byte on `fd` (a child's "ready" signal), at most `timeout`.
bool wait_byte(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  char c = 0;
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1 && ::read(fd, &c, 1) == 1;
}

class SocketPipeTest : public ::testing::Test {
 protected:
  Result<std::shared_ptr<Pipe>> try_make(const Options& options) {
    return kernel_->registry().create_as<Pipe>("pipe.socket", options, "t");
  }

  std::shared_ptr<Pipe> make(Options options = {}) {
    auto pipe = try_make(options);
    EXPECT_TRUE(pipe) << pipe.error().message;
    return pipe ? *pipe : nullptr;
  }

  std::shared_ptr<Pipe> make_at(const std::string& address) {
    Options options;
    options.set("address", address);
    return make(options);
  }

  std::filesystem::path socket_path() const { return dir_.path() / "ember-pipe.sock"; }

  std::unique_ptr<PipeEndpoint> open_job(Pipe& pipe, const PeerAdmission& admit = {}) {
    auto job = pipe.open(PipeSide::job, 1s, admit);
    EXPECT_TRUE(job) << job.error().message;
    return job ? std::move(*job) : nullptr;
  }

  // A trainer end as a trainer process makes it: a second component given the job end's address.
  std::unique_ptr<PipeEndpoint> open_trainer(const std::string& address,
                                             std::chrono::milliseconds timeout = 5s) {
    auto pipe = make_at(address);
    if (!pipe) {
      return nullptr;
    }
    auto trainer = pipe->open(PipeSide::trainer, timeout);
    EXPECT_TRUE(trainer) << trainer.error().message;
    return trainer ? std::move(*trainer) : nullptr;
  }

  std::string log_text() const {
    std::ifstream in(dir_.path() / "test.log");
    std::stringstream all;
    all << in.rdbuf();
    return all.str();
  }

  // Sends `frames` from one end in a thread while the other receives them, and checks them.
  static void stream(PipeEndpoint& from, PipeEndpoint& to, const std::vector<Frame>& frames) {
    std::thread sender([&] {
      for (const auto& frame : frames) {
        auto sent = from.send(frame, 10s);
        ASSERT_TRUE(sent) << sent.error().message;
      }
    });
    for (std::size_t i = 0; i < frames.size(); ++i) {
      auto got = to.receive(10s);
      ASSERT_TRUE(got) << got.error().message;
      ASSERT_TRUE(got->has_value()) << "frame " << i << " did not arrive";
      ASSERT_EQ((*got)->size(), frames[i].size()) << "frame " << i;
      EXPECT_TRUE(**got == frames[i]) << "frame " << i << " differs";
    }
    sender.join();
  }

  static std::vector<Frame> frames_of_many_sizes() {
    std::vector<Frame> frames;
    unsigned seed = 0;
    for (std::size_t size :
         {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{4}, std::size_t{5}, std::size_t{4095},
          std::size_t{65535}, std::size_t{65536}, std::size_t{65537}, std::size_t{1} << 20,
          (std::size_t{1} << 20) + 7, std::size_t{32} << 20, std::size_t{2}}) {
      frames.push_back(pattern(size, ++seed));
    }
    return frames;
  }

  test::TempDir dir_;
  std::unique_ptr<kernel::Kernel> kernel_ = [this] {
    auto k = test::kernel_with_paths({test::build_root() / "plugins"}, dir_.path());
    EXPECT_TRUE(k->logs().add_file(dir_.path() / "test.log"));
    return k;
  }();
};

// --- round trips ---

TEST_F(SocketPipeTest, UnixRoundTripsFramesOfManySizesBothWays) {
  auto pipe = make();
  auto job = open_job(*pipe);
  EXPECT_EQ(pipe->address(), "unix:" + socket_path().string());
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  auto frames = frames_of_many_sizes();
  stream(*job, *trainer, frames);
  stream(*trainer, *job, frames);
  EXPECT_THAT(job->describe(), HasSubstr("unix:" + socket_path().string() + " peer pid " +
                                         std::to_string(::getpid()) + " uid " + std::to_string(::geteuid())));
  EXPECT_THAT(trainer->describe(), HasSubstr("peer pid " + std::to_string(::getpid())));
}

TEST_F(SocketPipeTest, TcpOnAnEphemeralPortRoundTrips) {
  auto pipe = make_at("tcp:127.0.0.1:0");
  EXPECT_EQ(pipe->address(), "tcp:127.0.0.1:0");
  auto job = open_job(*pipe);
  ASSERT_TRUE(job);
  std::string address = pipe->address();
  ASSERT_THAT(address, ::testing::StartsWith("tcp:127.0.0.1:"));
  EXPECT_NE(address, "tcp:127.0.0.1:0");
  auto trainer = open_trainer(address);
  ASSERT_TRUE(trainer);
  auto frames = frames_of_many_sizes();
  stream(*job, *trainer, frames);
  stream(*trainer, *job, frames);
  EXPECT_THAT(job->describe(), HasSubstr(address + " peer 127.0.0.1:"));
  EXPECT_THAT(trainer->describe(), HasSubstr(address + " from 127.0.0.1:"));
}

TEST_F(SocketPipeTest, TcpOverIpv6Loopback) {
  auto pipe = make_at("tcp:[::1]:0");
  auto job = pipe->open(PipeSide::job, 1s);
  if (!job) {
    GTEST_SKIP() << "no IPv6 loopback here: " << job.error().message;
  }
  ASSERT_THAT(pipe->address(), ::testing::StartsWith("tcp:[::1]:"));
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(trainer);
  stream(**job, *trainer, {text("six"), pattern(100000, 6)});
  EXPECT_THAT((*job)->describe(), HasSubstr("peer [::1]:"));
}

TEST_F(SocketPipeTest, ManySmallFramesArriveInOrder) {
  auto pipe = make();
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  std::vector<Frame> frames;
  for (unsigned i = 0; i < 20000; ++i) {
    frames.push_back(pattern(i % 301, i));
  }
  stream(*trainer, *job, frames);
}

TEST_F(SocketPipeTest, GatherSendsAndReusedReceiveBuffersCarryBigAndSmallFramesAlternately) {
  auto pipe = make();
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  // Frames of 8 MiB, 1 MiB + 3 and a few bytes in turn, each sent in parts (empty ones among them, and
  // more parts than one sendmsg takes), received into one vector whose memory the pipe may reuse.
  std::vector<Frame> frames;
  for (unsigned i = 0; i < 24; ++i) {
    std::size_t size = i % 3 == 0 ? (std::size_t{8} << 20) : i % 3 == 1 ? (std::size_t{1} << 20) + 3 : 17;
    frames.push_back(pattern(size, 100 + i));
  }
  std::thread sender([&] {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      std::span<const std::byte> all(frames[i]);
      std::vector<std::span<const std::byte>> parts;
      const std::size_t piece = i % 2 == 0 ? 4096 : all.size() / 5 + 1;
      for (std::size_t at = 0; at < all.size(); at += piece) {
        parts.push_back(all.subspan(at, std::min(piece, all.size() - at)));
        if (at % (7 * piece) == 0) {
          parts.push_back({});
        }
      }
      auto sent = trainer->send_parts(parts, 10s);
      ASSERT_TRUE(sent) << "frame " << i << ": " << sent.error().message;
    }
  });
  std::vector<std::byte> into;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    Result<bool> got = false;
    for (int tries = 0; tries < 100 && got && !*got; ++tries) {
      got = job->receive_into(into, 100ms);
    }
    ASSERT_TRUE(got) << got.error().message;
    ASSERT_TRUE(*got) << "frame " << i << " did not arrive";
    ASSERT_EQ(into.size(), frames[i].size()) << "frame " << i;
    EXPECT_TRUE(into == frames[i]) << "frame " << i << " differs";
  }
  sender.join();
}

TEST_F(SocketPipeTest, SeveralFramesSentInOneCallArriveAsThoseFramesInOrder) {
  auto pipe = make();
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  // Batches of small frames (a message and its receipts), one batch with an empty frame, and one with a
  // frame larger than the socket buffers, so part of the batch waits for the background writer while the
  // next batch is held back behind it.
  std::vector<std::vector<Frame>> batches;
  for (unsigned b = 0; b < 200; ++b) {
    std::vector<Frame> batch;
    for (unsigned f = 0; f < 1 + b % 4; ++f) {
      batch.push_back(pattern(b == 7 && f == 1 ? 0 : 40 + (b * 7 + f) % 90, b * 10 + f));
    }
    if (b == 50) {
      batch.insert(batch.begin() + 1, pattern(std::size_t{6} << 20, 5000));
    }
    batches.push_back(std::move(batch));
  }
  std::thread sender([&] {
    for (std::size_t b = 0; b < batches.size(); ++b) {
      // Each frame in two parts (the second empty for short frames), as the session lays out a frame.
      std::vector<std::vector<std::span<const std::byte>>> parts;
      for (const auto& frame : batches[b]) {
        std::span<const std::byte> all(frame);
        const std::size_t half = all.size() / 2;
        parts.push_back({all.first(half), all.subspan(half)});
      }
      std::vector<std::span<const std::span<const std::byte>>> frames(parts.begin(), parts.end());
      auto sent = trainer->send_frames(frames, 10s);
      ASSERT_TRUE(sent) << "batch " << b << ": " << sent.error().message;
    }
  });
  std::vector<std::byte> into;
  for (std::size_t b = 0; b < batches.size(); ++b) {
    for (std::size_t f = 0; f < batches[b].size(); ++f) {
      Result<bool> got = false;
      for (int tries = 0; tries < 100 && got && !*got; ++tries) {
        got = job->receive_into(into, 100ms);
      }
      ASSERT_TRUE(got) << got.error().message;
      ASSERT_TRUE(*got) << "batch " << b << " frame " << f << " did not arrive";
      ASSERT_TRUE(into == batches[b][f]) << "batch " << b << " frame " << f << " differs";
    }
  }
  sender.join();
  auto nothing = job->receive(50ms);
  ASSERT_TRUE(nothing) << nothing.error().message;
  EXPECT_FALSE(nothing->has_value());
}

TEST_F(SocketPipeTest, PartialFramesSurviveReceiveTimeouts) {
  auto pipe = make();
  auto job = open_job(*pipe);
  RawClient peer(socket_path());
  ASSERT_TRUE(peer.connected());
  Frame body = pattern(1000, 3);
  Frame whole = prefixed(1000, body);
  ASSERT_TRUE(peer.write(Frame(whole.begin(), whole.begin() + 2)));  // half the length prefix
  auto nothing = job->receive(30ms);
  ASSERT_TRUE(nothing) << nothing.error().message;
  EXPECT_FALSE(nothing->has_value());
  ASSERT_TRUE(peer.write(Frame(whole.begin() + 2, whole.begin() + 500)));  // the rest of it, half the body
  nothing = job->receive(30ms);
  ASSERT_TRUE(nothing) << nothing.error().message;
  EXPECT_FALSE(nothing->has_value());
  Frame rest(whole.begin() + 500, whole.end());
  auto next = prefixed(3, text("abc"));
  rest.insert(rest.end(), next.begin(), next.end());
  ASSERT_TRUE(peer.write(rest));
  auto got = job->receive(1s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, body);
  got = job->receive(1s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, text("abc"));
}

// --- admission ---

TEST_F(SocketPipeTest, AdmissionRefusesAStrangerAndAdmitsThePeer) {
  auto pipe = make();
  std::atomic<int> checks{0};
  auto job = open_job(*pipe, [&](std::span<const std::byte> first) {
    ++checks;
    return Frame(first.begin(), first.end()) == text("HELLO good");
  });
  ASSERT_TRUE(job);
  auto stranger = open_trainer(pipe->address());
  ASSERT_TRUE(stranger);
  ASSERT_TRUE(stranger->send(text("HELLO bad"), 1s));
  auto nothing = job->receive(200ms);
  ASSERT_TRUE(nothing) << nothing.error().message;
  EXPECT_FALSE(nothing->has_value());
  EXPECT_EQ(checks.load(), 1);
  // The stranger's connection was closed: it sees the end of the stream.
  auto refused = stranger->receive(5s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::closed);
  EXPECT_THAT(log_text(), HasSubstr("refused peer pid " + std::to_string(::getpid()) + " uid " +
                                    std::to_string(::geteuid()) + ": the admission check rejected"));

  auto good = open_trainer(pipe->address());
  ASSERT_TRUE(good);
  ASSERT_TRUE(good->send(text("HELLO good"), 1s));
  ASSERT_TRUE(good->send(text("second"), 1s));
  auto first = job->receive(5s);
  ASSERT_TRUE(first && first->has_value()) << (first ? "timeout" : first.error().message);
  EXPECT_EQ(**first, text("HELLO good"));
  auto second = job->receive(5s);
  ASSERT_TRUE(second && second->has_value());
  EXPECT_EQ(**second, text("second"));
  ASSERT_TRUE(job->send(text("HELLO_ACCEPTED"), 1s));
  auto answer = good->receive(5s);
  ASSERT_TRUE(answer && answer->has_value());
  EXPECT_EQ(**answer, text("HELLO_ACCEPTED"));
  // One peer per endpoint: the listener and its socket file are gone.
  EXPECT_FALSE(std::filesystem::exists(socket_path()));
  EXPECT_FALSE(RawClient(socket_path()).connected());
}

TEST_F(SocketPipeTest, AdmissionContinuesAcrossTimeoutsAndDropsSilentQuitters) {
  auto pipe = make();
  auto job = open_job(*pipe, [](std::span<const std::byte> first) { return first.size() == 5; });
  ASSERT_TRUE(job);
  {
    RawClient quitter(socket_path());  // connects, then leaves without a word
    ASSERT_TRUE(quitter.connected());
    auto nothing = job->receive(50ms);
    ASSERT_TRUE(nothing && !nothing->has_value());
  }
  RawClient slow(socket_path());
  ASSERT_TRUE(slow.connected());
  ASSERT_TRUE(slow.write(Frame{std::byte{5}, std::byte{0}}));  // half a length prefix
  for (int i = 0; i < 3; ++i) {
    auto nothing = job->receive(20ms);
    ASSERT_TRUE(nothing && !nothing->has_value());
  }
  ASSERT_TRUE(slow.write(Frame{std::byte{0}, std::byte{0}, std::byte{'h'}, std::byte{'e'}}));
  auto nothing = job->receive(20ms);
  ASSERT_TRUE(nothing && !nothing->has_value());
  ASSERT_TRUE(slow.write(text("llo")));
  auto hello = job->receive(2s);
  ASSERT_TRUE(hello && hello->has_value());
  EXPECT_EQ(**hello, text("hello"));
  EXPECT_THAT(log_text(), HasSubstr("before admission: the peer closed the connection"));
}

TEST_F(SocketPipeTest, IdleStrangersDoNotStarveTheRealPeersAdmission) {
  auto pipe = make();
  auto job = open_job(*pipe, [](std::span<const std::byte> first) {
    return Frame(first.begin(), first.end()) == text("HELLO good");
  });
  ASSERT_TRUE(job);
  // 64 connections that never say a word, while the job end drives admission; then the real trainer.
  std::atomic<bool> done{false};
  std::thread admission([&] {
    while (!done) {
      auto got = job->receive(20ms);
      if (!got || got->has_value()) {
        done = true;
      }
    }
  });
  std::vector<std::unique_ptr<RawClient>> strangers;
  for (int i = 0; i < 64; ++i) {
    for (int attempt = 0; attempt < 200; ++attempt) {  // a full listen backlog refuses for a moment
      auto stranger = std::make_unique<RawClient>(socket_path());
      if (stranger->connected()) {
        strangers.push_back(std::move(stranger));
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
  }
  EXPECT_EQ(strangers.size(), 64u);
  done = true;
  admission.join();
  auto started = Clock::now();
  auto good = open_trainer(pipe->address(), 20s);
  ASSERT_TRUE(good);
  ASSERT_TRUE(good->send(text("HELLO good"), 20s));
  auto first = job->receive(30s);
  ASSERT_TRUE(first && first->has_value()) << (first ? "not admitted" : first.error().message);
  EXPECT_EQ(**first, text("HELLO good"));
  // Each stranger may hold a slot for 3 s; 64 of them, 16 at a time, held it for 12 s or more before.
  EXPECT_LT(millis_since(started), 8000);
  EXPECT_THAT(log_text(), HasSubstr("connections wait for admission (the oldest goes first)"));
}

TEST_F(SocketPipeTest, AnOversizedFirstFrameIsRefusedBeforeAdmission) {
  auto pipe = make();
  auto job = open_job(*pipe, [](std::span<const std::byte>) { return true; });
  ASSERT_TRUE(job);
  RawClient hostile(socket_path());
  ASSERT_TRUE(hostile.write(prefixed(50u << 20)));  // within max_frame_bytes, above the first-frame bound
  auto nothing = job->receive(100ms);
  ASSERT_TRUE(nothing && !nothing->has_value());
  EXPECT_TRUE(hostile.closed_by_peer(2s));
  EXPECT_THAT(log_text(), HasSubstr("frame length 52428800 exceeds the first-frame bound 1048576"));
}

TEST_F(SocketPipeTest, SendOnTheJobEndWaitsForThePeer) {
  auto pipe = make();
  auto job = open_job(*pipe);
  ASSERT_TRUE(job);
  auto start = Clock::now();
  auto alone = job->send(text("anyone?"), 50ms);
  ASSERT_FALSE(alone);
  EXPECT_EQ(alone.error().code, Errc::timeout);
  EXPECT_THAT(alone.error().message, HasSubstr("no peer attached within 50 ms"));
  EXPECT_GE(millis_since(start), 49);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(trainer);
  ASSERT_TRUE(job->send(text("welcome"), 1s));
  auto got = trainer->receive(1s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, text("welcome"));
}

TEST_F(SocketPipeTest, WithAnAdmissionCheckSendWaitsForTheFirstFrame) {
  auto pipe = make();
  auto job = open_job(*pipe, [](std::span<const std::byte> first) { return !first.empty(); });
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  std::thread hello([&] {
    std::this_thread::sleep_for(50ms);
    EXPECT_TRUE(trainer->send(text("HELLO"), 1s));
  });
  ASSERT_TRUE(job->send(text("ACCEPTED"), 5s));
  hello.join();
  auto first = job->receive(1s);
  ASSERT_TRUE(first && first->has_value());
  EXPECT_EQ(**first, text("HELLO"));
  auto answer = trainer->receive(1s);
  ASSERT_TRUE(answer && answer->has_value());
  EXPECT_EQ(**answer, text("ACCEPTED"));
}

TEST_F(SocketPipeTest, APeerWithAnotherUidIsRefused) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root, to connect as another uid";
  }
  auto pipe = make();
  auto job = open_job(*pipe);
  ASSERT_TRUE(job);
  // Let uid 65534 reach the socket, so that only the credentials check stands in its way.
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0711), 0);
  ASSERT_EQ(::chmod(socket_path().c_str(), 0666), 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path().c_str(), sizeof address.sun_path - 1);
  const Frame hello = prefixed(2, text("hi"));
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: async-signal-safe calls only. Exit 0 when the job end closes our connection.
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) {
      ::_exit(3);
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      ::_exit(2);
    }
    if (::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(hello.size())) {
      ::_exit(errno == EPIPE || errno == ECONNRESET ? 0 : 4);  // already refused and closed
    }
    pollfd p{fd, POLLIN, 0};
    char c;
    ::_exit(::poll(&p, 1, 5000) == 1 && ::read(fd, &c, 1) <= 0 ? 0 : 1);
  }
  Child child(pid);
  for (int i = 0; i < 250 && !child.exited(); ++i) {
    auto nothing = job->receive(20ms);
    ASSERT_TRUE(nothing && !nothing->has_value());
  }
  EXPECT_EQ(child.exited(), 0);
  EXPECT_THAT(log_text(), HasSubstr("refused peer pid " + std::to_string(pid) + " uid 65534: not our uid"));
  // Still listening for the real peer.
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(trainer);
  ASSERT_TRUE(trainer->send(text("me"), 1s));
  auto got = job->receive(2s);
  ASSERT_TRUE(got && got->has_value());
}

// --- malformed input and ends of streams ---

TEST_F(SocketPipeTest, AnOverlongLengthIsMalformedAndAllocatesNothingOfItsSize) {
  auto pipe = make();
  auto job = open_job(*pipe);
  RawClient peer(socket_path());
  ASSERT_TRUE(peer.write(prefixed(0xfffffff0u, text("junk"))));
  largest_allocation = 0;
  auto got = job->receive(2s);
  std::size_t largest = largest_allocation;
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::malformed);
  EXPECT_THAT(got.error().message, HasSubstr("frame length 4294967280 exceeds max_frame_bytes 68157440"));
  EXPECT_LT(largest, std::size_t{1} << 20);
  EXPECT_TRUE(peer.closed_by_peer(2s));
  auto after = job->receive(10ms);
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, Errc::closed);
  EXPECT_THAT(after.error().message, HasSubstr("exceeds max_frame_bytes"));  // the reason it closed

  // The tracker does see the plugin's allocations: a real 2 MiB frame shows up.
  auto pipe2 = make_at("unix:" + (dir_.path() / "b.sock").string());
  auto job2 = open_job(*pipe2);
  RawClient peer2(dir_.path() / "b.sock");
  std::thread writer([&] { EXPECT_TRUE(peer2.write(prefixed(2u << 20, pattern(2u << 20, 1)))); });
  largest_allocation = 0;
  auto big = job2->receive(5s);
  writer.join();
  ASSERT_TRUE(big && big->has_value());
  EXPECT_GE(largest_allocation.load(), std::size_t{2} << 20);
}

TEST_F(SocketPipeTest, ATruncatedFrameIsMalformed) {
  auto pipe = make();
  auto job = open_job(*pipe);
  {
    RawClient peer(socket_path());
    ASSERT_TRUE(peer.write(prefixed(1000, pattern(500, 1))));
  }
  auto got = job->receive(2s);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::malformed);
  EXPECT_THAT(got.error().message, HasSubstr("truncated frame: 500 of 1000 bytes"));
  EXPECT_EQ(job->send(text("x"), 10ms).error().code, Errc::closed);
}

TEST_F(SocketPipeTest, OrderlyCloseIsReportedAfterEveryFrameWasReceived) {
  auto pipe = make();
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  ASSERT_TRUE(trainer->send(text("one"), 1s));
  ASSERT_TRUE(
      trainer->send(pattern(3 << 20, 2), 1s));  // more than the socket buffer: finished in the background
  std::thread reader([&] {
    EXPECT_EQ(**job->receive(5s), text("one"));
    EXPECT_EQ(**job->receive(5s), pattern(3 << 20, 2));
    EXPECT_EQ(**job->receive(5s), text("three"));
    auto end = job->receive(5s);
    ASSERT_FALSE(end);
    EXPECT_EQ(end.error().code, Errc::closed);
    EXPECT_THAT(end.error().message, HasSubstr("the peer closed the connection"));
  });
  ASSERT_TRUE(trainer->send(text("three"), 5s));  // after the big frame's last byte went out
  trainer->close();
  trainer->close();
  reader.join();
  auto send = job->send(text("late"), 10ms);
  ASSERT_FALSE(send);
  EXPECT_EQ(send.error().code, Errc::closed);
  EXPECT_EQ(trainer->send(text("after close"), 10ms).error().code, Errc::closed);
  EXPECT_EQ(trainer->receive(10ms).error().code, Errc::closed);
}

TEST_F(SocketPipeTest, SendFailsFastOnceThePeerIsGone) {
  auto pipe = make();
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  ASSERT_TRUE(trainer->send(text("hi"), 1s));
  ASSERT_TRUE(job->receive(1s));
  trainer.reset();
  auto start = Clock::now();
  auto sent = job->send(text("anyone?"), 5s);
  ASSERT_FALSE(sent);
  EXPECT_EQ(sent.error().code, Errc::closed);
  EXPECT_LT(millis_since(start), 1000);
}

TEST_F(SocketPipeTest, OversizedFramesAndBatchesAreRefusedOnSendAndTheEndStaysUsable) {
  Options options;
  options.set("max_frame_bytes", std::int64_t{16});
  auto pipe = make(options);
  auto job = open_job(*pipe);
  Options trainer_options = options;
  trainer_options.set("address", pipe->address());
  auto trainer_pipe = make(trainer_options);
  auto trainer = std::move(*trainer_pipe->open(PipeSide::trainer, 1s));
  auto refused = trainer->send(pattern(17, 1), 1s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::invalid_argument);
  EXPECT_THAT(refused.error().message, HasSubstr("frame of 17 bytes exceeds max_frame_bytes 16"));
  // A batch with one frame too large is refused whole: the frame that fits is not sent either.
  const Frame fits = pattern(16, 2), too_big = pattern(17, 3);
  const std::span<const std::byte> fits_parts[1] = {fits}, too_big_parts[1] = {too_big};
  const std::span<const std::span<const std::byte>> batch[2] = {fits_parts, too_big_parts};
  refused = trainer->send_frames(batch, 1s);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("frame of 17 bytes exceeds max_frame_bytes 16"));
  ASSERT_TRUE(trainer->send(pattern(16, 1), 1s));
  EXPECT_EQ(**job->receive(1s), pattern(16, 1)) << "a frame of the refused batch was sent";
}

TEST_F(SocketPipeTest, AFrameWaitingForTheBackgroundWriterHoldsBackTheNextWithoutBreakingTheStream) {
  Options options;
  options.set("socket_buffer_bytes", std::int64_t{65536});
  auto pipe = make(options);
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  ASSERT_TRUE(trainer->send(text("hi"), 1s));
  ASSERT_TRUE(job->receive(1s));
  Frame big = pattern(8 << 20, 3);
  auto start = Clock::now();
  ASSERT_TRUE(job->send(big, 5s));  // the trainer is not reading: the rest is written in the background
  EXPECT_LT(millis_since(start), 1000);
  auto held = job->send(text("next"), 50ms);
  ASSERT_FALSE(held);
  EXPECT_EQ(held.error().code, Errc::timeout);
  EXPECT_THAT(held.error().message, HasSubstr("nothing of this frame was sent"));
  std::thread reader([&] {
    auto got = trainer->receive(10s);
    ASSERT_TRUE(got && got->has_value());
    EXPECT_TRUE(**got == big);
    got = trainer->receive(10s);
    ASSERT_TRUE(got && got->has_value());
    EXPECT_EQ(**got, text("after"));
  });
  ASSERT_TRUE(job->send(text("after"), 10s));
  reader.join();
}

// --- close ---

TEST_F(SocketPipeTest, CloseFromAnotherThreadWakesAReceiveWaitingForAPeer) {
  auto pipe = make();
  auto job = open_job(*pipe);
  ASSERT_TRUE(job);
  Clock::time_point closed_at;
  std::thread closer([&] {
    std::this_thread::sleep_for(50ms);
    closed_at = Clock::now();
    job->close();
  });
  auto got = job->receive(10s);
  auto woke = Clock::now();
  closer.join();
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::closed);
  EXPECT_LT(test::ms_between(closed_at, woke), test::kWakeBound.count());
  EXPECT_FALSE(std::filesystem::exists(socket_path()));
}

TEST_F(SocketPipeTest, CloseFromAnotherThreadWakesAReceiveBlockedInTheSocket) {
  for (std::string address : {"unix:" + socket_path().string(), std::string("tcp:127.0.0.1:0")}) {
    auto pipe = make_at(address);
    auto job = open_job(*pipe);
    auto trainer = open_trainer(pipe->address());
    ASSERT_TRUE(job && trainer);
    Clock::time_point closed_at;
    std::thread closer([&] {
      std::this_thread::sleep_for(50ms);
      closed_at = Clock::now();
      trainer->close();
    });
    auto got = trainer->receive(10s);
    auto woke = Clock::now();
    closer.join();
    ASSERT_FALSE(got) << address;
    EXPECT_EQ(got.error().code, Errc::closed) << address;
    EXPECT_THAT(got.error().message, HasSubstr("this end is closed")) << address;
    EXPECT_LT(test::ms_between(closed_at, woke), test::kWakeBound.count()) << address;
    // The job end sees the end of the stream.
    auto end = job->receive(5s);
    ASSERT_FALSE(end) << address;
    EXPECT_EQ(end.error().code, Errc::closed) << address;
  }
}

TEST_F(SocketPipeTest, CloseFromAnotherThreadWakesABlockedReceiveAndSend) {
  auto pipe = make();
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  ASSERT_TRUE(trainer->send(text("hi"), 1s));
  ASSERT_TRUE(job->receive(1s));
  ASSERT_TRUE(job->send(pattern(16 << 20, 1), 1s));  // the trainer does not read: the next send must wait
  Clock::time_point closed_at;
  std::thread closer([&] {
    std::this_thread::sleep_for(50ms);
    closed_at = Clock::now();
    job->close();
  });
  Result<void> sent;
  Clock::time_point send_woke;
  std::thread sender([&] {
    sent = job->send(text("blocked"), 10s);
    send_woke = Clock::now();
  });
  auto got = job->receive(10s);
  auto receive_woke = Clock::now();
  closer.join();
  sender.join();
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::closed);
  ASSERT_FALSE(sent);
  EXPECT_EQ(sent.error().code, Errc::closed);
  EXPECT_LT(test::ms_between(closed_at, receive_woke), test::kWakeBound.count());
  EXPECT_LT(test::ms_between(closed_at, send_woke), test::kWakeBound.count());
  // The trainer sees the end: the big frame was cut short by the close.
  auto end = trainer->receive(5s);
  ASSERT_FALSE(end);
  EXPECT_TRUE(end.error().code == Errc::malformed || end.error().code == Errc::closed) << end.error().message;
}

// --- the socket file ---

TEST_F(SocketPipeTest, TheSocketFileIsPrivateAndRemovedWhenTheJobEndClosesBeforeAPeer) {
  auto path = dir_.path() / "not" / "yet" / "there.sock";
  auto pipe = make_at("unix:" + path.string());
  auto job = open_job(*pipe);
  ASSERT_TRUE(job);
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  job->close();
  EXPECT_FALSE(std::filesystem::exists(path));
  job.reset();
  // And the path can be used again.
  auto again = open_job(*pipe);
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST_F(SocketPipeTest, AStaleSocketFileIsReplaced) {
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket_path().c_str(), sizeof address.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ::close(fd);  // the file stays, with no one listening
  }
  auto pipe = make();
  auto job = open_job(*pipe);
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(job && trainer);
  ASSERT_TRUE(trainer->send(text("fresh"), 1s));
  EXPECT_EQ(**job->receive(1s), text("fresh"));
}

TEST_F(SocketPipeTest, APathAnotherJobEndListensOnIsRefusedNotTakenOver) {
  auto pipe = make();
  // As every job end has: an admission check (the other's probe must not become the peer).
  auto first = open_job(*pipe, [](std::span<const std::byte> frame) {
    return Frame(frame.begin(), frame.end()) == text("still mine");
  });
  ASSERT_TRUE(first);
  auto other = make();  // a second site given the same address
  auto second = other->open(PipeSide::job, 1s);
  ASSERT_FALSE(second);
  EXPECT_THAT(second.error().message, HasSubstr("unix:" + socket_path().string()));
  EXPECT_THAT(second.error().message, HasSubstr("another job end listens on this path"));
  // The first one's socket is still the one at the path, and still answers.
  auto trainer = open_trainer(pipe->address());
  ASSERT_TRUE(trainer);
  ASSERT_TRUE(trainer->send(text("still mine"), 1s));
  auto got = first->receive(5s);
  ASSERT_TRUE(got && got->has_value()) << (got ? "nothing arrived" : got.error().message);
  EXPECT_EQ(**got, text("still mine"));
}

TEST_F(SocketPipeTest, ARegularFileAtThePathIsNeverReplaced) {
  dir_.write("ember-pipe.sock", "precious");
  auto pipe = make();
  auto job = pipe->open(PipeSide::job, 1s);
  ASSERT_FALSE(job);
  EXPECT_THAT(job.error().message, HasSubstr("exists and is not a socket"));
  EXPECT_THAT(job.error().message, HasSubstr(socket_path().string()));
  std::ifstream in(socket_path());
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

// --- the trainer end ---

TEST_F(SocketPipeTest, TheTrainerEndTimesOutNamingTheAddress) {
  auto pipe = make_at("unix:" + (dir_.path() / "nobody.sock").string());
  auto start = Clock::now();
  auto trainer = pipe->open(PipeSide::trainer, 100ms);
  auto took = millis_since(start);
  ASSERT_FALSE(trainer);
  EXPECT_EQ(trainer.error().code, Errc::timeout);
  EXPECT_THAT(trainer.error().message,
              HasSubstr("no job end at unix:" + (dir_.path() / "nobody.sock").string()));
  EXPECT_GE(took, 99);
  EXPECT_LT(took, 2000);
}

TEST_F(SocketPipeTest, TheTrainerEndRetriesUntilTheJobEndListens) {
  auto pipe = make();
  std::unique_ptr<PipeEndpoint> job;
  std::thread opener([&] {
    std::this_thread::sleep_for(100ms);
    job = open_job(*pipe);
  });
  auto trainer = open_trainer(pipe->address(), 5s);
  opener.join();
  ASSERT_TRUE(job && trainer);
  ASSERT_TRUE(trainer->send(text("late but there"), 1s));
  EXPECT_EQ(**job->receive(1s), text("late but there"));
}

// --- options ---

TEST_F(SocketPipeTest, TheDefaultAddressIsInTheWorkspace) {
  EXPECT_EQ(make()->address(), "unix:" + socket_path().string());
}

TEST_F(SocketPipeTest, OptionsAreCheckedAtCreate) {
  auto refused = [&](Options options, std::string_view why) {
    auto pipe = try_make(options);
    ASSERT_FALSE(pipe) << why;
    EXPECT_EQ(pipe.error().code, Errc::invalid_option);
    EXPECT_THAT(pipe.error().message, HasSubstr(std::string(why)));
  };
  Options remote;
  remote.set("address", std::string("tcp:10.1.2.3:5000"));
  refused(remote, "tcp:10.1.2.3:5000 is not a loopback address");
  refused(remote, "allow_remote = true");
  remote.set("allow_remote", true);
  EXPECT_TRUE(try_make(remote));
  Options any;
  any.set("address", std::string("tcp:0.0.0.0:0"));
  refused(any, "not a loopback address");

  Options address;
  address.set("address", std::string("tcp:localhost:1"));
  refused(address, "option 'address'");
  // The schema's choices and range refuse these before the pipe's own checks see them.
  address.set("address", std::string("tcp:127.0.0.1:99999"));
  refused(address, "\"tcp:127.0.0.1:99999\" is not one of: unix:<any>, tcp:<any>:<0-65535>");
  address.set("address", std::string("pipe:somewhere"));
  refused(address, "\"pipe:somewhere\" is not one of");

  Options frame;
  frame.set("max_frame_bytes", std::int64_t{0});
  refused(frame, "option 'max_frame_bytes': 0 is below the minimum 1");
  frame.set("max_frame_bytes", std::int64_t{1} << 32);
  refused(frame, "is above the maximum 4294967295");
  Options buffer;
  buffer.set("socket_buffer_bytes", std::int64_t{-1});
  refused(buffer, "option 'socket_buffer_bytes'");
}

// --- a peer in another process ---

// Forks a child that connects to `path`, writes `bytes`, signals on `ready` and waits to be killed.
pid_t fork_writer(const std::filesystem::path& path, const Frame& bytes, int ready) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      ::_exit(2);
    }
    std::size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
      if (n <= 0) {
        ::_exit(3);
      }
      off += static_cast<std::size_t>(n);
    }
    char c = 'r';
    [[maybe_unused]] auto w = ::write(ready, &c, 1);
    for (;;) {
      ::pause();
    }
  }
  return pid;
}

TEST_F(SocketPipeTest, APeerProcessKilledMidFrameIsAnErrorNotAHang) {
  auto pipe = make();
  auto job = open_job(*pipe);
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  Frame half = prefixed(1 << 20, pattern(100000, 4));  // announces 1 MiB, sends 100000 bytes of it
  Child child(fork_writer(socket_path(), half, ready[1]));
  ASSERT_GT(child.pid(), 0);
  ::close(ready[1]);
  // Receive while the child writes (the job end admits it at its first receive).
  std::optional<Frame> early;
  bool signalled = false;
  for (int i = 0; i < 250 && !signalled; ++i) {
    auto got = job->receive(20ms);
    ASSERT_TRUE(got) << got.error().message;
    ASSERT_FALSE(got->has_value());
    signalled = wait_byte(ready[0], 0ms);
  }
  ::close(ready[0]);
  ASSERT_TRUE(signalled);
  EXPECT_THAT(job->describe(), HasSubstr("peer pid " + std::to_string(child.pid())));
  child.kill();
  auto start = Clock::now();
  auto got = job->receive(10s);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::malformed);
  EXPECT_THAT(got.error().message, HasSubstr("truncated frame: 100000 of 1048576 bytes"));
  EXPECT_LT(millis_since(start), 1000);
}

TEST_F(SocketPipeTest, APeerProcessKilledBetweenFramesIsClosedAfterItsFrames) {
  auto pipe = make();
  auto job = open_job(*pipe);
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  Frame whole = prefixed(5, text("whole"));
  Child child(fork_writer(socket_path(), whole, ready[1]));
  ASSERT_GT(child.pid(), 0);
  ::close(ready[1]);
  bool signalled = wait_byte(ready[0], 5000ms);
  ::close(ready[0]);
  ASSERT_TRUE(signalled);
  child.kill();
  auto got = job->receive(5s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, text("whole"));
  auto start = Clock::now();
  auto end = job->receive(10s);
  ASSERT_FALSE(end);
  EXPECT_EQ(end.error().code, Errc::closed);
  EXPECT_LT(millis_since(start), 1000);
}

}  // namespace
}  // namespace ember
