// pipe.file, loaded as the kernel loads it (the shared module from the build tree), in a private workspace.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/pipe.hpp>

#include "support.hpp"

namespace ember {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using Frame = std::vector<std::byte>;

Frame bytes(std::string_view s) {
  Frame out;
  for (char c : s) {
    out.push_back(static_cast<std::byte>(c));
  }
  return out;
}

// A frame whose every byte depends on its number and size, so a mixed-up or torn frame shows; it starts
// with its number.
Frame patterned(std::uint64_t number, std::size_t size) {
  Frame frame(size);
  std::uint64_t x = number * 0x9e3779b97f4a7c15ULL + size + 1;
  for (std::size_t i = 0; i < size; i += sizeof x) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(frame.data() + i, &x, std::min(sizeof x, size - i));
  }
  if (size >= sizeof number) {
    std::memcpy(frame.data(), &number, sizeof number);
  }
  return frame;
}

std::uint64_t number_of(const Frame& frame) {
  std::uint64_t number = 0;
  std::memcpy(&number, frame.data(), sizeof number);
  return number;
}

unsigned mode_of(const fs::path& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string hex(std::uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

long long ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

class FilePipeTest : public ::testing::Test {
 protected:
  std::shared_ptr<Pipe> make(Options options = {}) {
    auto pipe = kernel_->registry().create_as<Pipe>("pipe.file", options, "t");
    EXPECT_TRUE(pipe) << pipe.error().message;
    return pipe ? *pipe : nullptr;
  }
  // The trainer's component, as a trainer process would make it: from the job end's address.
  std::shared_ptr<Pipe> make_trainer(const Pipe& job, Options options = {}) {
    options.set("address", job.address());
    return make(std::move(options));
  }
  // Opens the job end and a trainer end attached to it.
  void open_both(Options job_options = {}, Options trainer_options = {}) {
    job_pipe_ = make(std::move(job_options));
    ASSERT_TRUE(job_pipe_);
    auto job = job_pipe_->open(PipeSide::job, 1s);
    ASSERT_TRUE(job) << job.error().message;
    trainer_pipe_ = make_trainer(*job_pipe_, std::move(trainer_options));
    ASSERT_TRUE(trainer_pipe_);
    auto trainer = trainer_pipe_->open(PipeSide::trainer, 5s);
    ASSERT_TRUE(trainer) << trainer.error().message;
    job_ = std::move(*job);
    trainer_ = std::move(*trainer);
  }
  fs::path root() const { return workspace_.path() / "pipe"; }
  std::string epoch() const {
    auto text = read_text(root() / "session");
    return text.substr(0, 16);
  }
  static Options with(std::string_view name, OptionValue value, Options options = {}) {
    options.set(std::string(name), std::move(value));
    return options;
  }
  // Sends `frame` from the trainer and expects the job end to receive exactly it.
  void expect_passes(const Frame& frame) {
    ASSERT_TRUE(trainer_->send(frame, 5s));
    auto got = job_->receive(5s);
    ASSERT_TRUE(got) << got.error().message;
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ(**got, frame);
  }
  // Expects the job end's next receive() to refuse a file, naming it.
  void expect_refused(const std::string& name_in_message, const std::string& why) {
    auto got = job_->receive(5s);
    ASSERT_FALSE(got) << "a frame was delivered instead of a refusal";
    EXPECT_EQ(got.error().code, Errc::malformed);
    EXPECT_THAT(got.error().message, HasSubstr((root() / "to_job").string() + "/" + name_in_message));
    EXPECT_THAT(got.error().message, HasSubstr(why));
  }

  test::TempDir workspace_;
  std::unique_ptr<kernel::Kernel> kernel_ =
      test::kernel_with_paths({test::build_root() / "plugins"}, workspace_.path());
  std::shared_ptr<Pipe> job_pipe_;
  std::shared_ptr<Pipe> trainer_pipe_;
  std::unique_ptr<PipeEndpoint> job_;
  std::unique_ptr<PipeEndpoint> trainer_;
};

TEST_F(FilePipeTest, AddressIsTheAbsoluteRootAndDescribeNamesThePeer) {
  open_both();
  EXPECT_EQ(job_pipe_->address(), root().string());
  EXPECT_EQ(job_->describe(), "dir:" + root().string() + " (trainer end)");
  EXPECT_EQ(trainer_->describe(), "dir:" + root().string() + " (job end)");
  // The "dir:" form is accepted as an address too.
  auto again = make(with("address", "dir:" + root().string()));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->address(), root().string());
}

TEST_F(FilePipeTest, RoundTripsFramesOfSeveralSizesBothWays) {
  open_both();
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{4095}, std::size_t{65536},
                           (std::size_t{1} << 20) + 3, std::size_t{32} << 20}) {
    auto frame = patterned(size, size);
    ASSERT_TRUE(job_->send(frame, 5s)) << size;
    auto got = trainer_->receive(5s);
    ASSERT_TRUE(got && got->has_value()) << size;
    EXPECT_TRUE(**got == frame) << size;
    ASSERT_TRUE(trainer_->send(frame, 5s)) << size;
    auto back = job_->receive(5s);
    ASSERT_TRUE(back && back->has_value()) << size;
    EXPECT_TRUE(**back == frame) << size;
  }
  // Every frame file was removed once read, and nothing is left half-written.
  EXPECT_TRUE(fs::is_empty(root() / "to_job"));
  EXPECT_TRUE(fs::is_empty(root() / "to_trainer"));
  EXPECT_TRUE(fs::is_empty(root() / "tmp"));
}

TEST_F(FilePipeTest, DeliversManyFramesInOrderExactlyOnce) {
  open_both(with("capacity", std::int64_t{16}));
  constexpr std::uint64_t count = 5000;
  auto sender = std::async(std::launch::async, [&] {
    for (std::uint64_t i = 0; i < count; ++i) {
      auto sent = trainer_->send(patterned(i, 16 + i % 200), 10s);
      if (!sent) {
        return sent;
      }
    }
    return ok();
  });
  for (std::uint64_t i = 0; i < count; ++i) {
    auto got = job_->receive(10s);
    ASSERT_TRUE(got && got->has_value()) << i;
    ASSERT_EQ(number_of(**got), i);
    ASSERT_TRUE(**got == patterned(i, 16 + i % 200)) << i;
  }
  auto sent = sender.get();
  ASSERT_TRUE(sent) << sent.error().message;
  auto extra = job_->receive(50ms);
  ASSERT_TRUE(extra);
  EXPECT_FALSE(extra->has_value());
  EXPECT_TRUE(fs::is_empty(root() / "to_job"));
}

TEST_F(FilePipeTest, SendWaitsForRoomThenTimesOutAndResumesWhenThePeerReads) {
  open_both(with("capacity", std::int64_t{3}));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(job_->send(patterned(i, 100), 1s));
  }
  auto start = Clock::now();
  auto full = job_->send(patterned(3, 100), 150ms);
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code, Errc::timeout);
  EXPECT_THAT(full.error().message, HasSubstr("trainer end has not consumed"));
  EXPECT_GE(ms_since(start), 140);
  // A send blocked on a full inbox goes through as soon as the trainer takes one frame.
  auto blocked = std::async(std::launch::async, [&] {
    auto sent = job_->send(patterned(3, 100), 10s);
    return std::pair(sent.has_value(), Clock::now());
  });
  std::this_thread::sleep_for(100ms);
  ASSERT_EQ(blocked.wait_for(0s), std::future_status::timeout) << "send did not wait for room";
  auto taken_at = Clock::now();
  auto got = trainer_->receive(1s);
  ASSERT_TRUE(got && got->has_value());
  auto [sent, sent_at] = blocked.get();
  EXPECT_TRUE(sent);
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(sent_at - taken_at).count(), 500);
  for (std::uint64_t i = 1; i < 4; ++i) {
    auto next = trainer_->receive(1s);
    ASSERT_TRUE(next && next->has_value());
    EXPECT_EQ(number_of(**next), i);
  }
}

TEST_F(FilePipeTest, StaleFramesOfAnEarlierSessionAreNeverDelivered) {
  // An earlier session whose job end ended while its trainer still had frames to read, and frames of it
  // that turned up in the job's inbox afterwards (a sender that outlived it).
  open_both();
  const auto old_epoch = epoch();
  ASSERT_TRUE(job_->send(bytes("old for trainer"), 1s));
  job_.reset();
  ASSERT_TRUE(fs::exists(root() / "to_trainer"));  // left for the trainer to read
  for (const char* seq : {"0000000000000000", "0000000000000001"}) {
    write_text(root() / "tmp" / "x", "old");
    fs::rename(root() / "tmp" / "x", root() / "to_job" / (old_epoch + "-" + seq + ".frame"));
  }
  write_text(root() / "tmp" / "trainer-half-written.part", "half");

  // A new job end on the same folder: it wipes them and starts a new session.
  auto new_pipe = make();
  auto new_job = new_pipe->open(PipeSide::job, 1s);
  ASSERT_TRUE(new_job) << new_job.error().message;
  ASSERT_NE(epoch(), old_epoch);
  EXPECT_TRUE(fs::is_empty(root() / "to_job"));
  EXPECT_TRUE(fs::is_empty(root() / "to_trainer"));
  EXPECT_TRUE(fs::is_empty(root() / "tmp"));
  // The old trainer learns its session is over.
  auto late = trainer_->send(bytes("old 2"), 1s);
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code, Errc::closed);

  // A stale file that turns up later is removed, not delivered, and is no error.
  write_text(root() / "tmp" / "x", "old 3");
  fs::rename(root() / "tmp" / "x", root() / "to_job" / (old_epoch + "-0000000000000003.frame"));
  auto got = (*new_job)->receive(200ms);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_FALSE(got->has_value());
  EXPECT_TRUE(fs::is_empty(root() / "to_job"));

  // The new session works, from frame 0.
  auto new_trainer_pipe = make_trainer(*new_pipe);
  auto new_trainer = new_trainer_pipe->open(PipeSide::trainer, 1s);
  ASSERT_TRUE(new_trainer) << new_trainer.error().message;
  ASSERT_TRUE((*new_trainer)->send(bytes("new 0"), 1s));
  auto fresh = (*new_job)->receive(1s);
  ASSERT_TRUE(fresh && fresh->has_value());
  EXPECT_EQ(**fresh, bytes("new 0"));
  // The old component, going now, leaves the new session's folder alone.
  job_pipe_.reset();
  EXPECT_TRUE(fs::exists(root() / "session"));
  ASSERT_TRUE((*new_job)->send(bytes("still here"), 1s));
  auto still = (*new_trainer)->receive(1s);
  ASSERT_TRUE(still && still->has_value());
}

TEST_F(FilePipeTest, ASecondJobEndOnAFolderInUseIsRefusedAndTouchesNothing) {
  open_both();
  const auto first_epoch = epoch();
  ASSERT_TRUE(trainer_->send(bytes("for the first job end"), 1s));
  auto other = make();  // a second site given the same folder
  auto second = other->open(PipeSide::job, 1s);
  ASSERT_FALSE(second);
  EXPECT_THAT(second.error().message, HasSubstr("dir:" + root().string()));
  EXPECT_THAT(second.error().message, HasSubstr("another job end uses this folder"));
  EXPECT_EQ(epoch(), first_epoch);
  auto got = job_->receive(1s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, bytes("for the first job end"));
  expect_passes(bytes("the session goes on"));
  // Once the first job end is gone, the folder is free again.
  job_.reset();
  auto later = other->open(PipeSide::job, 1s);
  EXPECT_TRUE(later) << later.error().message;
}

TEST_F(FilePipeTest, RefusesForeignFilesAndGoesOn) {
  open_both();
  const fs::path inbox = root() / "to_job";
  expect_passes(bytes("first"));

  write_text(inbox / "notes.txt", "not a frame");
  expect_refused("notes.txt", "not named like a frame file");
  EXPECT_FALSE(fs::exists(inbox / "notes.txt"));
  expect_passes(bytes("after a foreign file"));

  write_text(inbox / "..x", "dots");
  expect_refused("..x", "not named like a frame file");
  write_text(inbox / "a\nb", "newline");
  expect_refused("a\\x0ab", "not named like a frame file");
  fs::create_directory(inbox / "sub");
  write_text(inbox / "sub" / "inner", "in a folder");
  expect_refused("sub", "is a folder, not named like a frame file");
  EXPECT_FALSE(fs::exists(inbox / "sub"));
  expect_passes(bytes("after odd names"));

  // Valid names, wrong kinds of file: never opened as frames, and what they point at is untouched.
  const std::string ahead = epoch() + "-00000000000f0000.frame";
  write_text(workspace_.path() / "secret", "outside the pipe");
  fs::create_symlink(workspace_.path() / "secret", inbox / ahead);
  expect_refused(ahead, "a symlink");
  EXPECT_FALSE(fs::exists(fs::symlink_status(inbox / ahead)));
  EXPECT_EQ(read_text(workspace_.path() / "secret"), "outside the pipe");
  expect_passes(bytes("after a symlink"));

  const std::string ahead2 = epoch() + "-00000000000f0001.frame";
  ASSERT_EQ(mkfifo((inbox / ahead2).c_str(), 0600), 0);
  expect_refused(ahead2, "a fifo");
  expect_passes(bytes("after a fifo"));

  const std::string ahead3 = epoch() + "-00000000000f0002.frame";
  fs::create_hard_link(workspace_.path() / "secret", inbox / ahead3);
  expect_refused(ahead3, "hard links");
  EXPECT_EQ(read_text(workspace_.path() / "secret"), "outside the pipe");
  expect_passes(bytes("after a hard link"));
}

TEST_F(FilePipeTest, RefusesAnOversizedFrameAndDeliversTheNextOne) {
  // The trainer may send what the job end will not take: the file is refused, counted as consumed, and
  // the frame after it is not held back.
  open_both(with("max_frame_bytes", std::int64_t{1024}), with("max_frame_bytes", std::int64_t{1} << 20));
  ASSERT_TRUE(trainer_->send(patterned(0, 2048), 1s));
  ASSERT_TRUE(trainer_->send(bytes("next"), 1s));
  expect_refused(epoch() + "-0000000000000000.frame", "2048 bytes, more than max_frame_bytes 1024");
  auto got = job_->receive(1s);
  ASSERT_TRUE(got && got->has_value()) << (got ? "nothing" : got.error().message);
  EXPECT_EQ(**got, bytes("next"));
  // A frame the sender's own limit forbids is refused before anything is written.
  auto too_big = job_->send(patterned(1, 1025), 1s);
  ASSERT_FALSE(too_big);
  EXPECT_EQ(too_big.error().code, Errc::invalid_argument);
  EXPECT_THAT(too_big.error().message, HasSubstr("1025 bytes exceeds max_frame_bytes 1024"));
}

TEST_F(FilePipeTest, AGapIsWaitedForNotSkipped) {
  open_both();
  // Frame 1 is here, frame 0 is not (yet): nothing is delivered out of order.
  write_text(root() / "tmp" / "x", "one");
  fs::rename(root() / "tmp" / "x", root() / "to_job" / (epoch() + "-0000000000000001.frame"));
  auto got = job_->receive(100ms);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_FALSE(got->has_value());
  write_text(root() / "tmp" / "x", "zero");
  fs::rename(root() / "tmp" / "x", root() / "to_job" / (epoch() + "-0000000000000000.frame"));
  auto first = job_->receive(1s);
  ASSERT_TRUE(first && first->has_value());
  EXPECT_EQ(**first, bytes("zero"));
  auto second = job_->receive(1s);
  ASSERT_TRUE(second && second->has_value());
  EXPECT_EQ(**second, bytes("one"));
}

TEST_F(FilePipeTest, TrainerProcessKilledMidStreamNeverHangsOrTearsAFrame) {
  job_pipe_ = make(with("capacity", std::int64_t{4}));
  auto job = job_pipe_->open(PipeSide::job, 1s);
  ASSERT_TRUE(job) << job.error().message;
  job_ = std::move(*job);
  trainer_pipe_ = make_trainer(*job_pipe_, with("capacity", std::int64_t{4}));
  ASSERT_TRUE(trainer_pipe_);
  constexpr std::size_t frame_size = 16 << 20;

  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The trainer: sends large frames as fast as the job end takes them, until it is killed.
    alarm(60);  // never outlives a broken test run
    auto trainer = trainer_pipe_->open(PipeSide::trainer, 5s);
    if (!trainer) {
      _exit(2);
    }
    for (std::uint64_t i = 0; i < 100000; ++i) {
      if (!(*trainer)->send(patterned(i, frame_size), 10s)) {
        _exit(3);
      }
    }
    _exit(0);
  }

  std::uint64_t received = 0;
  auto take_one = [&](std::chrono::milliseconds timeout) {
    auto got = job_->receive(timeout);
    EXPECT_TRUE(got) << got.error().message;
    if (!got || !got->has_value()) {
      return false;
    }
    EXPECT_EQ(number_of(**got), received);
    EXPECT_TRUE(**got == patterned(received, frame_size)) << "frame " << received << " is torn";
    ++received;
    return true;
  };
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(take_one(10s)) << i;
  }
  // Make room for one more frame and kill the trainer as soon as it creates that frame in tmp/: while it
  // writes it, or at the latest before it renames it (a 16 MiB write takes milliseconds).
  int tmp_watch = inotify_init1(IN_CLOEXEC);
  ASSERT_GE(tmp_watch, 0);
  ASSERT_GE(inotify_add_watch(tmp_watch, (root() / "tmp").c_str(), IN_CREATE), 0);
  ASSERT_TRUE(take_one(10s));
  std::string caught;
  while (caught.empty()) {
    pollfd ready{tmp_watch, POLLIN, 0};
    ASSERT_EQ(poll(&ready, 1, 10000), 1) << "the trainer did not start another frame";
    alignas(inotify_event) char events[4096];
    auto n = read(tmp_watch, events, sizeof events);
    for (decltype(n) at = 0; at < n;) {
      const auto* event = reinterpret_cast<const inotify_event*>(events + at);
      if (event->len > 0 && std::string_view(event->name).starts_with("trainer-")) {
        caught = event->name;
      }
      at += static_cast<decltype(n)>(sizeof(inotify_event) + event->len);
    }
  }
  ASSERT_EQ(kill(child, SIGKILL), 0);
  close(tmp_watch);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

  // What was renamed before the kill arrives whole; then nothing, and no error: a peer that dies without
  // closing is the session layer's to notice.
  auto start = Clock::now();
  while (take_one(300ms)) {
  }
  EXPECT_LT(ms_since(start), 5000);
  // "trainer-<epoch>-<seq>.part": a frame never renamed into the inbox is never delivered.
  if (fs::exists(root() / "tmp" / caught)) {
    auto seq = std::stoull(caught.substr(std::string("trainer-").size() + 17, 16), nullptr, 16);
    EXPECT_LE(received, seq);
  }
  auto after = job_->receive(200ms);
  ASSERT_TRUE(after) << after.error().message;
  EXPECT_FALSE(after->has_value());

  // The same for a complete-looking frame file planted in tmp/ with the next seq.
  write_text(root() / "tmp" / ("trainer-" + epoch() + "-" + hex(received) + ".part"), "never renamed");
  auto planted = job_->receive(200ms);
  ASSERT_TRUE(planted) << planted.error().message;
  EXPECT_FALSE(planted->has_value());
}

TEST_F(FilePipeTest, CloseIsSeenByThePeerOnlyAfterItDrained) {
  open_both();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(job_->send(patterned(i, 10), 1s));
  }
  job_->close();
  job_->close();
  EXPECT_TRUE(fs::exists(root() / "closed.job"));
  EXPECT_EQ(mode_of(root() / "closed.job"), 0600u);
  for (std::uint64_t i = 0; i < 3; ++i) {
    auto got = trainer_->receive(1s);
    ASSERT_TRUE(got && got->has_value()) << i;
    EXPECT_EQ(number_of(**got), i);
  }
  auto closed = trainer_->receive(1s);
  ASSERT_FALSE(closed);
  EXPECT_EQ(closed.error().code, Errc::closed);
  EXPECT_THAT(closed.error().message, HasSubstr("job end closed after sending 3 frames"));
  auto send = trainer_->send(bytes("x"), 1s);
  ASSERT_FALSE(send);
  EXPECT_EQ(send.error().code, Errc::closed);
  // Calls on a closed end fail at once.
  EXPECT_EQ(job_->send(bytes("x"), 1s).error().code, Errc::closed);
  EXPECT_EQ(job_->receive(1s).error().code, Errc::closed);
  // The job end left the folder for the trainer; its component removes it.
  trainer_->close();
  EXPECT_TRUE(fs::exists(root()));
  trainer_.reset();
  job_.reset();
  job_pipe_.reset();
  EXPECT_FALSE(fs::exists(root()));
}

TEST_F(FilePipeTest, TrainerCloseIsSeenAfterDrainingAndTheJobEndRemovesTheFolder) {
  open_both();
  ASSERT_TRUE(trainer_->send(bytes("result"), 1s));
  write_text(root() / "tmp" / "trainer-leftover.part", "x");
  trainer_->close();
  EXPECT_FALSE(fs::exists(root() / "tmp" / "trainer-leftover.part"));
  EXPECT_TRUE(fs::exists(root() / "closed.trainer"));
  auto got = job_->receive(1s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, bytes("result"));
  auto closed = job_->receive(1s);
  ASSERT_FALSE(closed);
  EXPECT_EQ(closed.error().code, Errc::closed);
  job_->close();
  EXPECT_FALSE(fs::exists(root()));
}

TEST_F(FilePipeTest, JobEndWithNothingPendingRemovesTheFolderAndTheTrainerSeesIt) {
  open_both();
  auto waiting = std::async(std::launch::async, [&] { return trainer_->receive(10s); });
  std::this_thread::sleep_for(50ms);
  auto start = Clock::now();
  job_->close();
  EXPECT_FALSE(fs::exists(root()));
  auto got = waiting.get();
  EXPECT_LT(ms_since(start), 100);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::closed);
  EXPECT_THAT(got.error().message, HasSubstr("was removed"));
}

TEST_F(FilePipeTest, CloseFromAnotherThreadWakesBlockedCallsAtOnce) {
  open_both({}, with("capacity", std::int64_t{1}));
  ASSERT_TRUE(trainer_->send(bytes("fills the window"), 1s));
  auto receiving = std::async(std::launch::async, [&] {
    auto got = trainer_->receive(10s);
    return std::pair(std::move(got), Clock::now());
  });
  auto sending = std::async(std::launch::async, [&] {
    auto sent = trainer_->send(bytes("waits for room"), 10s);
    return std::pair(std::move(sent), Clock::now());
  });
  std::this_thread::sleep_for(100ms);
  auto closed_at = Clock::now();
  trainer_->close();
  auto [got, received_at] = receiving.get();
  auto [sent, sent_at] = sending.get();
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::closed);
  ASSERT_FALSE(sent);
  EXPECT_EQ(sent.error().code, Errc::closed);
  EXPECT_LT(test::ms_between(closed_at, received_at), test::kWakeBound.count());
  EXPECT_LT(test::ms_between(closed_at, sent_at), test::kWakeBound.count());
}

TEST_F(FilePipeTest, StoppingTheJobWakesBlockedCallsWithCancelled) {
  open_both();
  auto waiting = std::async(std::launch::async, [&] {
    auto got = trainer_->receive(10s);
    return std::pair(std::move(got), Clock::now());
  });
  std::this_thread::sleep_for(50ms);
  auto stopped_at = Clock::now();
  kernel_->registry().request_stop();
  auto [got, returned_at] = waiting.get();
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::cancelled);
  EXPECT_LT(test::ms_between(stopped_at, returned_at), test::kWakeBound.count());
  EXPECT_EQ(job_->send(bytes("x"), 1s).error().code, Errc::cancelled);
}

TEST_F(FilePipeTest, FoldersAre0700AndFiles0600) {
  open_both();
  EXPECT_EQ(mode_of(root()), 0700u);
  for (const char* folder : {"to_job", "to_trainer", "tmp"}) {
    EXPECT_EQ(mode_of(root() / folder), 0700u) << folder;
  }
  EXPECT_EQ(mode_of(root() / "session"), 0600u);
  EXPECT_EQ(mode_of(root() / "attached.trainer"), 0600u);
  ASSERT_TRUE(job_->send(bytes("unread"), 1s));
  auto frame = root() / "to_trainer" / (epoch() + "-0000000000000000.frame");
  ASSERT_TRUE(fs::exists(frame));
  EXPECT_EQ(mode_of(frame), 0600u);
  EXPECT_EQ(read_text(frame), "unread");
}

TEST_F(FilePipeTest, ExistingLooseFolderIsTightenedAndSymlinksAreRefused) {
  fs::create_directories(root());
  fs::permissions(root(), fs::perms::all);
  auto pipe = make();
  auto job = pipe->open(PipeSide::job, 1s);
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(mode_of(root()), 0700u);
  (*job)->close();

  // The root as a symlink.
  fs::create_directories(workspace_.path() / "elsewhere");
  fs::create_directory_symlink(workspace_.path() / "elsewhere", workspace_.path() / "linked");
  auto linked = make(with("address", (workspace_.path() / "linked").string()));
  auto refused = linked->open(PipeSide::job, 1s);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("a symlink"));

  // A folder inside it as a symlink, or as a file.
  fs::create_directories(workspace_.path() / "p2");
  fs::create_directory_symlink(workspace_.path() / "elsewhere", workspace_.path() / "p2" / "to_job");
  auto inner = make(with("address", (workspace_.path() / "p2").string()))->open(PipeSide::job, 1s);
  ASSERT_FALSE(inner);
  EXPECT_THAT(inner.error().message,
              HasSubstr((workspace_.path() / "p2" / "to_job").string() + "' is a symlink"));
  fs::create_directories(workspace_.path() / "p3");
  write_text(workspace_.path() / "p3" / "tmp", "a file");
  auto file = make(with("address", (workspace_.path() / "p3").string()))->open(PipeSide::job, 1s);
  ASSERT_FALSE(file);
  EXPECT_THAT(file.error().message, HasSubstr("is a regular file, not a folder"));
  EXPECT_TRUE(fs::is_empty(workspace_.path() / "elsewhere"));
}

TEST_F(FilePipeTest, TrainerWaitsForTheJobEndBoundedly) {
  auto job_pipe = make();
  auto trainer_pipe = make_trainer(*job_pipe);
  auto start = Clock::now();
  auto none = trainer_pipe->open(PipeSide::trainer, 150ms);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, Errc::timeout);
  EXPECT_GE(ms_since(start), 140);
  EXPECT_LT(ms_since(start), 2000);

  // A trainer that starts first attaches as soon as the job end opens.
  auto attaching = std::async(std::launch::async, [&] { return trainer_pipe->open(PipeSide::trainer, 10s); });
  std::this_thread::sleep_for(100ms);
  auto job = job_pipe->open(PipeSide::job, 1s);
  ASSERT_TRUE(job) << job.error().message;
  auto opened_at = Clock::now();
  auto trainer = attaching.get();
  ASSERT_TRUE(trainer) << trainer.error().message;
  EXPECT_LT(ms_since(opened_at), 500);
  ASSERT_TRUE((*job)->send(bytes("hello"), 1s));
  auto got = (*trainer)->receive(1s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, bytes("hello"));
}

TEST_F(FilePipeTest, OneTrainerPerSessionAndEachEndOpensOnce) {
  open_both();
  auto second = make_trainer(*job_pipe_)->open(PipeSide::trainer, 1s);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, Errc::rejected);
  EXPECT_THAT(second.error().message, HasSubstr("already attached"));
  auto again = job_pipe_->open(PipeSide::job, 1s);
  ASSERT_FALSE(again);
  EXPECT_THAT(again.error().message, HasSubstr("the job end is already open"));
}

TEST_F(FilePipeTest, RejectsBadOptions) {
  for (auto [name, value] : {std::pair<std::string, OptionValue>{"capacity", std::int64_t{0}},
                             {"capacity", std::int64_t{65537}},
                             {"max_frame_bytes", std::int64_t{0}},
                             {"address", std::string()},
                             {"address", std::string("/")},
                             {"address", std::string("dir:")}}) {
    auto made = kernel_->registry().create("pipe.file", with(name, value));
    ASSERT_FALSE(made) << name;
    EXPECT_EQ(made.error().code, Errc::invalid_option) << name;
    EXPECT_THAT(made.error().message, HasSubstr("'" + name + "'"));
  }
}

}  // namespace
}  // namespace ember
