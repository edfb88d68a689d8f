// The session protocol in one process, over the memory pipe, with a fault-injecting wrapper where a test
// needs frames dropped, duplicated, corrupted, delayed or swallowed.

#include "session/session.hpp"

#include <future>
#include <numeric>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "expect_error.hpp"
#include "fault_proxy.hpp"
#include "support.hpp"

namespace ember::session {
namespace {

using namespace std::chrono_literals;
using test::pattern;

using ::testing::HasSubstr;
using wire::Op;
using Clock = std::chrono::steady_clock;

Settings fast() {
  Settings s;
  s.launch = 5s;
  s.heartbeat_interval = 50ms;
  s.heartbeat_timeout = 400ms;
  s.stream_idle = 5s;
  s.close_bound = 200ms;
  s.max_resends = 8;
  s.chunk_size = 64 * 1024;
  return s;
}

class SessionPair : public ::testing::Test {
 protected:
  // Opens both ends of a memory pipe holding `capacity` frames each way; `job_faults` / `trainer_faults`
  // wrap what each end sends.
  void open(Settings settings = fast(), std::optional<test::FaultPolicy> job_faults = {},
            std::optional<test::FaultPolicy> trainer_faults = {}, std::int64_t capacity = 256) {
    Options options;
    options.set("capacity", capacity);
    pipe_ = *kernel_->registry().create_as<Pipe>("pipe.memory", options, "s");
    std::unique_ptr<PipeEndpoint> job_end = std::move(*pipe_->open(PipeSide::job, 1s));
    std::unique_ptr<PipeEndpoint> trainer_end = std::move(*pipe_->open(PipeSide::trainer, 1s));
    if (job_faults) {
      auto faulty = std::make_unique<test::FaultyEndpoint>(std::move(job_end), *job_faults);
      job_faults_ = faulty.get();
      job_end = std::move(faulty);
    }
    if (trainer_faults) {
      auto faulty = std::make_unique<test::FaultyEndpoint>(std::move(trainer_end), *trainer_faults);
      trainer_faults_ = faulty.get();
      trainer_end = std::move(faulty);
    }
    job_ = std::make_unique<Session>(Role::job, std::move(job_end), settings, kernel_->logs().get("test.job"),
                                     &kernel_->events());
    trainer_ = std::make_unique<Session>(Role::trainer, std::move(trainer_end), settings,
                                         kernel_->logs().get("test.trainer"));
  }

  void handshake(const std::string& token = "s3cret") {
    auto accepted = std::async(std::launch::async, [&] {
      return job_->accept("s3cret", {{"heartbeat", "50ms"}});
    });
    auto hello = trainer_->hello(token, {{"converters", "wire"}});
    ASSERT_TRUE(hello) << hello.error().message;
    auto peer = accepted.get();
    ASSERT_TRUE(peer) << peer.error().message;
    EXPECT_EQ(job_->state(), State::ready);
    EXPECT_EQ(trainer_->state(), State::ready);
  }

  std::unique_ptr<kernel::Kernel> kernel_ = test::static_kernel();
  std::shared_ptr<Pipe> pipe_;
  test::FaultyEndpoint* job_faults_ = nullptr;
  test::FaultyEndpoint* trainer_faults_ = nullptr;
  std::unique_ptr<Session> job_;
  std::unique_ptr<Session> trainer_;
};

TEST_F(SessionPair, HandshakeExchangesHeaders) {
  open();
  auto accepted = std::async(std::launch::async, [&] {
    return job_->accept("tok", {{"heartbeat", "50ms"}});
  });
  auto answer = trainer_->hello("tok", {{"converters", "wire,torch"}});
  ASSERT_TRUE(answer) << answer.error().message;
  auto peer = accepted.get();
  ASSERT_TRUE(peer);
  bool saw = false;
  for (const auto& [k, v] : peer->headers) {
    saw = saw || (k == "converters" && v == "wire,torch");
  }
  EXPECT_TRUE(saw);
  ASSERT_EQ(answer->size(), 1u);
  EXPECT_EQ((*answer)[0].second, "50ms");
}

TEST_F(SessionPair, WrongTokenIsRejectedOnBothEnds) {
  open();
  auto accepted = std::async(std::launch::async, [&] { return job_->accept("right"); });
  auto answer = trainer_->hello("wrong");
  ASSERT_FALSE(answer);
  EXPECT_EQ(answer.error().code, Errc::rejected);
  EXPECT_THAT(answer.error().message, HasSubstr("the job rejected our HELLO: wrong token"));
  auto peer = accepted.get();
  ASSERT_FALSE(peer);
  EXPECT_EQ(peer.error().code, Errc::rejected);
  EXPECT_THAT(peer.error().message, HasSubstr("wrong token"));
}

TEST_F(SessionPair, AHelloTheJobRefusesGetsHelloRejectedWithTheReason) {
  open();
  auto accepted = std::async(std::launch::async, [&] {
    return job_->accept("tok", {}, [](const PeerHello& hello) -> std::optional<std::string> {
      for (const auto& [key, value] : hello.headers) {
        if (key == "converters" && value == "converter.torch") {
          return std::nullopt;
        }
      }
      return "the trainer does not speak converter.torch";
    });
  });
  auto answer = trainer_->hello("tok", {{"converters", "converter.identity"}});
  ASSERT_FALSE(answer);
  EXPECT_EQ(answer.error().code, Errc::rejected);
  EXPECT_THAT(answer.error().message, HasSubstr("the job rejected our HELLO: the trainer does not speak"));
  auto peer = accepted.get();
  ASSERT_FALSE(peer);
  EXPECT_EQ(peer.error().code, Errc::rejected);
  EXPECT_THAT(peer.error().message, HasSubstr("rejected: the trainer does not speak converter.torch"));
}

TEST_F(SessionPair, ManyThreadsClosingAtOnceAllReturn) {
  // A stop and an early trainer exit may close one session from two threads at the same moment: each call
  // must return (one joins the session's threads, the others wait for it), and the session ends closed.
  open();
  handshake();
  for (int round = 0; round < 20; ++round) {
    std::vector<std::future<void>> closers;
    for (int i = 0; i < 4; ++i) {
      closers.push_back(std::async(std::launch::async, [&] { job_->close(Op::abort, "closed by test"); }));
    }
    for (auto& c : closers) {
      ASSERT_EQ(c.wait_for(10s), std::future_status::ready) << "a concurrent close() did not return";
    }
    EXPECT_EQ(job_->state(), State::closed);
    trainer_->close(Op::shutdown, "");
    open();
    handshake();
  }
}

TEST_F(SessionPair, NoHelloWithinLaunchTimesOut) {
  auto settings = fast();
  settings.launch = 150ms;
  open(settings);
  auto started = Clock::now();
  auto peer = job_->accept("tok");
  ASSERT_FALSE(peer);
  EXPECT_EQ(peer.error().code, Errc::timeout);
  EXPECT_THAT(peer.error().message, HasSubstr("no HELLO"));
  EXPECT_LT(Clock::now() - started, 2s);
  // Before HELLO, silence is not PEER_GONE: the launch timeout rules.
  EXPECT_EQ(job_->state(), State::handshake);
}

TEST_F(SessionPair, MessagesArriveInOrderWithTopicsAndHeaders) {
  open();
  handshake();
  ASSERT_TRUE(job_->send(Op::task_ready, "train/ä-1.b", {{"round", "3"}},
                         std::make_shared<BytesSource>(pattern(10))));
  auto got = trainer_->receive(2s);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->op, Op::task_ready);
  EXPECT_EQ((*got)->topic, "train/ä-1.b");
  EXPECT_EQ(*(*got)->header("round"), "3");
  EXPECT_EQ((*got)->payload, pattern(10));
  ASSERT_TRUE(trainer_->send(Op::task_accepted, "train/ä-1.b", {}, nullptr, (*got)->msg_id));
  auto reply = job_->receive(2s);
  ASSERT_TRUE(reply && *reply);
  EXPECT_EQ((*reply)->req_id, (*got)->msg_id);
  EXPECT_EQ((*reply)->type, wire::MessageType::reply);
}

TEST_F(SessionPair, ManyPostedMessagesAreDeliveredOnceEach) {
  open();
  handshake();
  constexpr int n = 5000;
  auto sender = std::async(std::launch::async, [&] {
    std::vector<std::shared_ptr<Session::Ticket>> tickets;
    for (int i = 0; i < n; ++i) {
      auto t = trainer_->post(Op::log, "m" + std::to_string(i));
      if (!t) {
        return false;
      }
      tickets.push_back(*t);
    }
    for (auto& t : tickets) {
      if (!trainer_->wait(t)) {
        return false;
      }
    }
    return true;
  });
  for (int i = 0; i < n; ++i) {
    auto got = job_->receive(5s);
    ASSERT_TRUE(got && *got) << i;
    ASSERT_EQ((*got)->topic, "m" + std::to_string(i));
  }
  EXPECT_TRUE(sender.get());
}

class CollectSink : public PayloadSink {
 public:
  explicit CollectSink(std::vector<std::byte>& into) : into_(into) {}
  Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) override {
    if (offset != into_.size()) {
      return fail(Errc::internal, "out of order");
    }
    into_.insert(into_.end(), bytes.begin(), bytes.end());
    return ok();
  }
  void reset() override {
    into_.clear();
    ++resets;
  }
  Result<void> finish() override { return ok(); }
  int resets = 0;

 private:
  std::vector<std::byte>& into_;
};

TEST_F(SessionPair, LargePayloadStreamsIntoASinkByteExact) {
  open();
  handshake();
  std::vector<std::byte> received;
  trainer_->set_sink_factory([&](const Message& m) -> std::unique_ptr<PayloadSink> {
    EXPECT_EQ(m.payload_size, 8u << 20);
    return std::make_unique<CollectSink>(received);
  });
  auto data = pattern(8u << 20);
  ASSERT_TRUE(job_->send(Op::task_ready, "train", {}, std::make_shared<BytesSource>(data)));
  auto got = trainer_->receive(5s);
  ASSERT_TRUE(got && *got);
  EXPECT_TRUE((*got)->payload.empty());
  EXPECT_EQ((*got)->payload_size, data.size());
  EXPECT_EQ(received, data);
}

TEST_F(SessionPair, ALogOvertakesALargeResultOnTheControlLane) {
  // A pipe of 4 frames each way: the result's 256 chunks wait for room, and a metric logged meanwhile goes
  // before the next chunk instead of after the last.
  open(fast(), {}, {}, 4);
  handshake();
  auto result =
      trainer_->post(Op::result_ready, "train", {}, std::make_shared<BytesSource>(pattern(16u << 20)));
  ASSERT_TRUE(result);
  auto log = trainer_->post(Op::log, "log", {{"kind", "metric"}, {"key", "loss"}, {"value", "0.5"}});
  ASSERT_TRUE(log);
  auto first = job_->receive(10s);
  ASSERT_TRUE(first && *first);
  EXPECT_EQ((*first)->op, Op::log);
  auto second = job_->receive(10s);
  ASSERT_TRUE(second && *second);
  EXPECT_EQ((*second)->op, Op::result_ready);
  EXPECT_EQ((*second)->payload_size, 16u << 20);
}

TEST_F(SessionPair, DroppedDuplicatedAndCorruptFramesStillDeliverExactlyOnce) {
  test::FaultPolicy lossy{0.10, 0.05, 0.02, 0ms, 42};
  auto settings = fast();
  settings.max_resends = 30;
  open(settings, lossy, lossy);
  // The handshake itself crosses the lossy link.
  handshake();
  constexpr int n = 300;
  auto sender = std::async(std::launch::async, [&] {
    for (int i = 0; i < n; ++i) {
      auto sent = trainer_->send(Op::log, "r" + std::to_string(i), {},
                                 std::make_shared<BytesSource>(pattern(100, i)));
      if (!sent) {
        return sent.error().message;
      }
    }
    return std::string();
  });
  for (int i = 0; i < n; ++i) {
    auto got = job_->receive(10s);
    ASSERT_TRUE(got && *got) << i;
    EXPECT_EQ((*got)->topic, "r" + std::to_string(i));
    EXPECT_EQ((*got)->payload, pattern(100, i));
  }
  EXPECT_EQ(sender.get(), "");
  // A large message over a link that only drops and duplicates arrives whole: lost chunks are resent from
  // where the receiver's receipts say it stopped, not from the start.
  job_faults_->set_policy(test::FaultPolicy{0.03, 0.03, 0, 0ms, 7});
  trainer_faults_->set_policy(test::FaultPolicy{0.03, 0.03, 0, 0ms, 8});
  auto big = pattern(2u << 20, 99);
  std::vector<std::byte> received;
  job_->set_sink_factory([&](const Message&) { return std::make_unique<CollectSink>(received); });
  auto big_sent = trainer_->send(Op::result_ready, "train", {}, std::make_shared<BytesSource>(big));
  ASSERT_TRUE(big_sent) << big_sent.error().message;
  auto got = job_->receive(10s);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ(received, big);
  auto nothing = job_->receive(300ms);
  ASSERT_TRUE(nothing);
  EXPECT_FALSE(nothing->has_value()) << "a duplicate reached the application";
  EXPECT_GT(trainer_faults_->dropped() + job_faults_->dropped(), 0u);
  EXPECT_GT(trainer_faults_->duplicated(), 0u);
  EXPECT_GT(job_->stats().duplicates_dropped + job_->stats().frames_rejected, 0u);
}

TEST_F(SessionPair, ResendBudgetCountsLossesWithoutProgressNotLossesPerMessage) {
  // The default budget (3 resends) against a 16 MiB message of 256 chunks on a link that loses every 32nd
  // chunk it carries: eight different chunks are lost, each resent, and the message still arrives, because
  // every resend that gets through renews the budget. The pipe holds only a few frames, so the sender is
  // never far ahead of the receiver and each loss is repaired before the next one happens (a go-back from
  // a far-ahead sender would repair several at once and the budget would not be put to the test).
  auto settings = fast();
  settings.max_resends = 3;
  test::FaultPolicy every_32nd_chunk;
  every_32nd_chunk.drop_every_large = 32;
  open(settings, every_32nd_chunk, test::FaultPolicy{}, 4);
  handshake();
  auto big = pattern(16u << 20, 5);
  std::vector<std::byte> received;
  trainer_->set_sink_factory([&](const Message&) { return std::make_unique<CollectSink>(received); });
  auto sent = job_->send(Op::task_ready, "train", {}, std::make_shared<BytesSource>(big));
  ASSERT_TRUE(sent) << sent.error().message;
  auto got = trainer_->receive(10s);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ(received, big);
  EXPECT_GE(job_faults_->dropped(), 8u);
  EXPECT_GT(job_->stats().resends, static_cast<std::uint64_t>(settings.max_resends))
      << "the losses were repaired in fewer resends than the budget: the test shows nothing";
}

TEST_F(SessionPair, SilentPeerBecomesPeerGoneWithinHeartbeatTimeout) {
  open(fast(), std::nullopt, test::FaultPolicy{});
  handshake();
  std::vector<std::string> events;
  auto sub = kernel_->events().subscribe("session.*", [&](const Event& e) { events.push_back(e.topic); });
  trainer_faults_->set_silent(true);  // the trainer hangs: nothing more reaches the job
  auto started = Clock::now();
  Result<std::optional<Message>> got = std::optional<Message>();
  while (got && Clock::now() - started < 5s) {
    got = job_->receive(50ms);
  }
  auto took = Clock::now() - started;
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::peer_gone);
  EXPECT_THAT(got.error().message, HasSubstr("heartbeat_timeout 400 ms"));
  EXPECT_EQ(job_->state(), State::peer_gone);
  // Bound: heartbeat_timeout plus one interval and the reader's poll (test slack for a loaded machine).
  EXPECT_LT(took, 400ms + 50ms + 1s);
  // The event is published by the session's reader thread right after the state changes.
  for (int i = 0; i < 100 && events.empty(); ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(events, std::vector<std::string>{"session.peer_gone"});
  // Sends fail at once after PEER_GONE.
  EXPECT_EQ(job_->send(Op::log, "x").error().code, Errc::peer_gone);
}

TEST_F(SessionPair, HeartbeatsKeepASlowTransferAlive) {
  // Every frame the job sends is delayed 20 ms: a 40-chunk transfer takes ~800 ms, twice heartbeat_timeout.
  open(fast(), test::FaultPolicy{0, 0, 0, 20ms, 1}, std::nullopt);
  handshake();
  auto data = pattern(40 * 64 * 1024);
  auto started = Clock::now();
  auto sent = job_->send(Op::task_ready, "train", {}, std::make_shared<BytesSource>(data));
  ASSERT_TRUE(sent) << sent.error().message;
  EXPECT_GT(Clock::now() - started, 400ms);
  auto got = trainer_->receive(2s);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->payload, data);
  EXPECT_EQ(trainer_->state(), State::ready);
  EXPECT_EQ(job_->state(), State::ready);
}

TEST_F(SessionPair, ShutdownEndsBothEndsCleanly) {
  open();
  handshake();
  ASSERT_TRUE(job_->send(Op::log, "last words"));
  job_->close(Op::shutdown, "job done");
  auto first = trainer_->receive(2s);
  ASSERT_TRUE(first && *first);
  EXPECT_EQ((*first)->topic, "last words");
  auto bye = trainer_->receive(2s);
  ASSERT_TRUE(bye && *bye);
  EXPECT_EQ((*bye)->op, Op::shutdown);
  EXPECT_EQ(*(*bye)->header("reason"), "job done");
  auto after = trainer_->receive(2s);
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, Errc::closed);
  EXPECT_EQ(trainer_->state(), State::closed);
}

TEST_F(SessionPair, CloseNeverBlocksOnADeadPeer) {
  auto settings = fast();
  settings.heartbeat_timeout = 30s;  // so only close() ends it
  open(settings, test::FaultPolicy{}, std::nullopt);
  handshake();
  job_faults_->set_silent(true);
  trainer_.reset();  // the trainer is gone without a word
  auto started = Clock::now();
  job_->close(Op::abort, "giving up");
  EXPECT_LT(Clock::now() - started, 2s);
  EXPECT_EQ(job_->state(), State::closed);
}

TEST_F(SessionPair, OversizedPayloadWithoutSinkFailsTheSendClearly) {
  auto settings = fast();
  settings.max_buffered_message = 1000;
  settings.max_resends = 1;
  open(settings);
  handshake();
  auto sent = job_->send(Op::task_ready, "train", {}, std::make_shared<BytesSource>(pattern(200 * 1024)));
  ASSERT_FALSE(sent);
  EXPECT_EQ(sent.error().code, Errc::timeout);
  EXPECT_THAT(sent.error().message, HasSubstr("after 2 sends"));
  EXPECT_EQ(job_->state(), State::ready);  // the session survives
  ASSERT_TRUE(job_->send(Op::log, "still here"));
}

// A job end stopped with SIGSTOP reads nothing: the trainer's frames fill the pipe, and a send waits for
// room. PEER_GONE (heartbeat_timeout) must end that wait too, not the pipe's stream_idle much later.
TEST(SessionEnd, PeerGoneEndsASendWaitingForRoomInThePipe) {
  auto kernel = test::static_kernel();
  Options options;
  options.set("capacity", std::int64_t{4});
  auto pipe = kernel->registry().create_as<Pipe>("pipe.memory", options, "frozen");
  ASSERT_TRUE(pipe) << pipe.error().message;
  auto job_end = (*pipe)->open(PipeSide::job, 1s);
  auto trainer_end = (*pipe)->open(PipeSide::trainer, 1s);
  ASSERT_TRUE(job_end && trainer_end);
  auto frozen = std::make_unique<test::FaultyEndpoint>(std::move(*job_end), test::FaultPolicy{});
  auto* job_faults = frozen.get();
  auto watched = std::make_unique<test::FaultyEndpoint>(std::move(*trainer_end), test::FaultPolicy{});
  auto* trainer_pipe = watched.get();
  auto job_settings = fast();
  job_settings.heartbeat_timeout = 60s;  // the frozen job must not end (and close the pipe) by itself
  auto trainer_settings = fast();
  trainer_settings.stream_idle = 30s;
  Session job(Role::job, std::move(frozen), job_settings, kernel->logs().get("test.job"));
  Session trainer(Role::trainer, std::move(watched), trainer_settings, kernel->logs().get("test.trainer"));
  auto accepted = std::async(std::launch::async, [&] { return job.accept("tok"); });
  auto hello = trainer.hello("tok");
  ASSERT_TRUE(hello) << hello.error().message;
  ASSERT_TRUE(accepted.get());

  job_faults->set_frozen(true);
  auto started = Clock::now();
  // More than the pipe holds: a send of the trainer's ends up waiting for room that never comes.
  for (int i = 0; i < 16; ++i) {
    (void)trainer.post(Op::log, "log " + std::to_string(i));
  }
  while (trainer.state() != State::peer_gone && Clock::now() - started < 20s) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(trainer.state(), State::peer_gone);
  while (trainer_pipe->sends_in_progress() > 0 && Clock::now() - started < 20s) {
    std::this_thread::sleep_for(10ms);
  }
  // heartbeat_timeout is 400 ms and stream_idle 30 s: PEER_GONE ended the wait, with a generous margin.
  EXPECT_EQ(trainer_pipe->sends_in_progress(), 0);
  EXPECT_LT(Clock::now() - started, 10s);
  auto got = trainer.receive(10ms);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::peer_gone);
  EXPECT_FALSE(trainer.post(Op::log, "after"));
}

TEST(Admission, SaysWhyItRefusesACandidate) {
  std::vector<std::string> reasons;
  auto admit = admit_hello("tok", [&](const std::string& why) { reasons.push_back(why); });
  std::vector<std::byte> frame;
  wire::FrameHeader h;
  h.op = Op::hello;
  ASSERT_TRUE(wire::encode_frame(frame, h, {}, {{"token", "tok"}}, {}));
  EXPECT_TRUE(admit(frame));
  ASSERT_TRUE(wire::encode_frame(frame, h, {}, {{"token", "nope"}}, {}));
  EXPECT_FALSE(admit(frame));
  ASSERT_TRUE(wire::encode_frame(frame, h, {}, {}, {}));
  EXPECT_FALSE(admit(frame));
  h.op = Op::log;
  ASSERT_TRUE(wire::encode_frame(frame, h, {}, {{"token", "tok"}}, {}));
  EXPECT_FALSE(admit(frame));
  EXPECT_FALSE(admit(std::vector<std::byte>(60, std::byte{0x45})));
  ASSERT_EQ(reasons.size(), 4u);
  EXPECT_EQ(reasons[0], "its HELLO carried a wrong token");
  EXPECT_EQ(reasons[1], "its HELLO carried no token");
  EXPECT_EQ(reasons[2], "its first frame is LOG, not HELLO");
  EXPECT_THAT(reasons[3], HasSubstr("its first frame is not a valid ember frame"));
}

TEST(Admission, AcceptsOnlyAHelloWithTheToken) {
  auto admit = admit_hello("tok");
  std::vector<std::byte> frame;
  wire::FrameHeader h;
  h.op = Op::hello;
  ASSERT_TRUE(wire::encode_frame(frame, h, {}, {{"token", "tok"}}, {}));
  EXPECT_TRUE(admit(frame));
  ASSERT_TRUE(wire::encode_frame(frame, h, {}, {{"token", "tok2"}}, {}));
  EXPECT_FALSE(admit(frame));
  h.op = Op::log;
  ASSERT_TRUE(wire::encode_frame(frame, h, {}, {{"token", "tok"}}, {}));
  EXPECT_FALSE(admit(frame));
  std::vector<std::byte> junk(60, std::byte{0x45});
  EXPECT_FALSE(admit(junk));
}

}  // namespace
}  // namespace ember::session
