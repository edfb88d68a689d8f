// The relay in one process: a server session sends to the relay's upstream session, which forwards the
// payload chunk by chunk to a trainer over a second session, holding no more than its window; with frames
// dropped and duplicated on both links, and with the upstream transfer broken off midway.

#include "session/relay.hpp"

#include <future>

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

Settings fast() {
  Settings s;
  s.launch = 5s;
  s.heartbeat_interval = 50ms;
  s.heartbeat_timeout = 2s;
  s.stream_idle = 5s;
  s.close_bound = 200ms;
  s.max_resends = 30;
  s.chunk_size = 64 * 1024;
  return s;
}

class CollectSink final : public PayloadSink {
 public:
  CollectSink(std::vector<std::byte>& into, std::atomic<int>& finished) : into_(into), finished_(finished) {}
  Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) override {
    if (offset != into_.size()) {
      return fail(Errc::internal,
                  "out of order: " + std::to_string(offset) + " after " + std::to_string(into_.size()));
    }
    into_.insert(into_.end(), bytes.begin(), bytes.end());
    return ok();
  }
  void reset() override { into_.clear(); }
  Result<void> finish() override {
    ++finished_;
    return ok();
  }

 private:
  std::vector<std::byte>& into_;
  std::atomic<int>& finished_;
};

// A server, a relay (its upstream and downstream sessions) and a trainer, over two memory pipes.
class RelayChain : public ::testing::Test {
 protected:
  struct Link {
    std::shared_ptr<Pipe> pipe;
    test::FaultyEndpoint* job_faults = nullptr;
    test::FaultyEndpoint* trainer_faults = nullptr;
    std::unique_ptr<Session> job;
    std::unique_ptr<Session> trainer;
  };

  Link link(const std::string& name, const Settings& settings, std::optional<test::FaultPolicy> faults) {
    Link l;
    Options options;
    options.set("capacity", std::int64_t{256});
    l.pipe = *kernel_->registry().create_as<Pipe>("pipe.memory", options, name);
    std::unique_ptr<PipeEndpoint> job_end = std::move(*l.pipe->open(PipeSide::job, 1s));
    std::unique_ptr<PipeEndpoint> trainer_end = std::move(*l.pipe->open(PipeSide::trainer, 1s));
    if (faults) {
      auto a = std::make_unique<test::FaultyEndpoint>(std::move(job_end), *faults);
      l.job_faults = a.get();
      job_end = std::move(a);
      auto b_policy = *faults;
      b_policy.seed += 1000;
      auto b = std::make_unique<test::FaultyEndpoint>(std::move(trainer_end), b_policy);
      l.trainer_faults = b.get();
      trainer_end = std::move(b);
    }
    l.job = std::make_unique<Session>(Role::job, std::move(job_end), settings,
                                      kernel_->logs().get(name + ".job"));
    l.trainer = std::make_unique<Session>(Role::trainer, std::move(trainer_end), settings,
                                          kernel_->logs().get(name + ".trainer"));
    auto accepted = std::async(std::launch::async, [&] { return l.job->accept("tok"); });
    auto hello = l.trainer->hello("tok");
    EXPECT_TRUE(hello) << hello.error().message;
    auto peer = accepted.get();
    EXPECT_TRUE(peer) << peer.error().message;
    return l;
  }

  // The server is the job end of `up_`; the relay's upstream is its trainer end and its downstream the job
  // end of `down_`, whose trainer end is the trainer.
  void open(Settings settings = fast(), std::optional<test::FaultPolicy> faults = {},
            Relay::Options options = {}, std::optional<test::FaultPolicy> up_faults = {}) {
    up_ = link("up", settings, up_faults ? up_faults : faults);
    down_ = link("down", settings, faults);
    relay_ = std::make_unique<Relay>(
        *down_.job,
        [](const Message& m) -> std::optional<std::uint64_t> {
          if (m.op == Op::task_ready) {
            return 0;
          }
          return std::nullopt;
        },
        options);
    up_.trainer->set_sink_factory(relay_->sink_factory());
    down_.trainer->set_sink_factory([this](const Message&) -> std::unique_ptr<PayloadSink> {
      arrived_.clear();
      return std::make_unique<CollectSink>(arrived_, finished_);
    });
  }

  Session& server() { return *up_.job; }
  Session& upstream() { return *up_.trainer; }
  Session& downstream() { return *down_.job; }
  Session& trainer() { return *down_.trainer; }

  // The server sends `data` as a TASK_READY; the relay forwards it; the trainer receives it.
  void relay_one(const std::vector<std::byte>& data) {
    auto sent = std::async(std::launch::async, [&] {
      return server().send(Op::task_ready, "train", {{"round", "2"}}, std::make_shared<BytesSource>(data));
    });
    auto got = upstream().receive(30s);
    ASSERT_TRUE(got && *got) << (got ? "nothing arrived" : got.error().message);
    if (data.size() > fast().chunk_size) {
      EXPECT_TRUE((*got)->payload.empty()) << "the relay's upstream kept the payload";
    }
    auto forwarded = relay_->forward(**got);
    ASSERT_TRUE(forwarded) << forwarded.error().message;
    auto at_trainer = trainer().receive(30s);
    ASSERT_TRUE(at_trainer && *at_trainer);
    EXPECT_EQ((*at_trainer)->op, Op::task_ready);
    EXPECT_EQ((*at_trainer)->topic, "train");
    EXPECT_EQ((*at_trainer)->payload_size, data.size());
    EXPECT_EQ((*at_trainer)->headers, (wire::Headers{{"round", "2"}}));
    const auto& bytes = (*at_trainer)->payload.empty() ? arrived_ : (*at_trainer)->payload;
    EXPECT_EQ(bytes.size(), data.size());
    EXPECT_TRUE(bytes == data) << "the relayed payload differs";
    auto result = sent.get();
    EXPECT_TRUE(result) << result.error().message;
  }

  std::unique_ptr<kernel::Kernel> kernel_ = test::static_kernel();
  Link up_;
  Link down_;
  std::unique_ptr<Relay> relay_;
  std::vector<std::byte> arrived_;
  std::atomic<int> finished_{0};
};

TEST_F(RelayChain, ALargePayloadArrivesByteExactWithinTheWindow) {
  Relay::Options options;
  options.window = 1u << 20;  // 16 chunks
  open(fast(), {}, options);
  auto data = pattern(48u << 20, 3);
  relay_one(data);
  EXPECT_EQ(finished_, 1);
  EXPECT_GT(relay_->peak_held(), 0u);
  EXPECT_LE(relay_->peak_held(), options.window);
  // The next message reuses nothing of the last one's state.
  relay_one(pattern(3u << 20, 4));
  EXPECT_EQ(finished_, 2);
}

TEST_F(RelayChain, SmallMessagesAndUnroutedOnesTakeTheirOwnWays) {
  open();
  // A one-frame TASK_READY has its payload in memory by the time receive() returns: forward() sends it.
  relay_one(pattern(1000, 5));
  EXPECT_EQ(finished_, 0) << "a one-frame payload went through a sink";
  // A message the route keeps stays upstream, and forward() refuses it.
  ASSERT_TRUE(server().send(Op::log, "loss", {}, std::make_shared<BytesSource>(pattern(100, 6))));
  auto got = upstream().receive(5s);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->payload, pattern(100, 6));
  auto refused = relay_->forward(**got);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::invalid_argument);
  EXPECT_THAT(refused.error().message, HasSubstr("not one this relay forwards"));
}

TEST_F(RelayChain, DroppedAndDuplicatedFramesOnBothLinksStillArriveOnceByteExact) {
  Relay::Options options;
  options.window = 2u << 20;
  open(fast(), test::FaultPolicy{0.03, 0.03, 0, 0ms, 11}, options);
  auto data = pattern(12u << 20, 7);
  relay_one(data);
  EXPECT_EQ(finished_, 1);
  EXPECT_LE(relay_->peak_held(), options.window);
  EXPECT_GT(up_.job_faults->dropped() + down_.job_faults->dropped(), 0u);
  EXPECT_GT(up_.job_faults->duplicated() + down_.job_faults->duplicated(), 0u);
  auto nothing = trainer().receive(300ms);
  ASSERT_TRUE(nothing);
  EXPECT_FALSE(nothing->has_value()) << "a duplicate reached the trainer";
}

TEST_F(RelayChain, AnUpstreamThatBreaksOffFailsTheDownstreamCopyAndTheSessionGoesOn) {
  Relay::Options options;
  options.window = 1u << 20;
  auto settings = fast();
  settings.heartbeat_timeout = 300ms;
  open(settings, {}, options, test::FaultPolicy{});
  // The server sends part of a large payload, then falls silent (a hung or killed process): the upstream
  // session gives it up as PEER_GONE, which cuts off the partial message and its sink.
  auto data = pattern(32u << 20, 8);
  auto sent = std::async(std::launch::async, [&] {
    return server().send(Op::task_ready, "train", {}, std::make_shared<BytesSource>(data));
  });
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (relay_->peak_held() < (256u << 10) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_GE(relay_->peak_held(), 256u << 10) << "the transfer never started";
  up_.job_faults->set_silent(true);
  auto gone = upstream().receive(5s);
  ASSERT_FALSE(gone) << "the broken message reached the relay's application";
  EXPECT_EQ(gone.error().code, Errc::peer_gone) << gone.error().message;
  EXPECT_EQ(upstream().state(), State::peer_gone);
  auto broken = sent.get();
  EXPECT_FALSE(broken) << "the server's send was acknowledged";
  // The trainer never sees the broken copy finish, and the downstream session still carries messages.
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(finished_, 0);
  EXPECT_EQ(downstream().state(), State::ready);
  ASSERT_TRUE(
      downstream().send(Op::task_ready, "evaluate", {}, std::make_shared<BytesSource>(pattern(10, 9))));
  for (;;) {
    auto next = trainer().receive(5s);
    ASSERT_TRUE(next && *next) << "the downstream session stopped carrying messages";
    if ((*next)->topic == "evaluate") {
      EXPECT_EQ((*next)->payload, pattern(10, 9));
      break;
    }
  }
  EXPECT_EQ(finished_, 0);
}

}  // namespace
}  // namespace ember::session
