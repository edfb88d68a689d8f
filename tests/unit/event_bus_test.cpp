#include "event_bus.hpp"

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

namespace ember::kernel {
namespace {

TEST(EventBus, DeliversByPatternUntilUnsubscribed) {
  LocalEventBus bus;
  std::vector<std::string> seen;
  auto all = bus.subscribe("*", [&](const Event& e) { seen.push_back("all:" + e.topic); });
  auto rounds = bus.subscribe("round.*", [&](const Event& e) { seen.push_back("round:" + e.topic); });
  bus.publish({"round.done", "test", {{"round", "1"}}});
  bus.publish({"session.ready", "test", {}});
  rounds.reset();
  bus.publish({"round.done", "test", {}});
  EXPECT_EQ(seen, (std::vector<std::string>{"all:round.done", "round:round.done", "all:session.ready",
                                            "all:round.done"}));
}

TEST(EventBus, HandlersMayUnsubscribeThemselvesAndPublish) {
  LocalEventBus bus;
  int calls = 0;
  Subscription self;
  self = bus.subscribe("a", [&](const Event&) {
    ++calls;
    self.reset();
    bus.publish({"b", "test", {}});
  });
  int b_calls = 0;
  auto b = bus.subscribe("b", [&](const Event&) { ++b_calls; });
  bus.publish({"a", "test", {}});
  bus.publish({"a", "test", {}});
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(b_calls, 1);
}

TEST(EventBus, ThrowingHandlerDoesNotStopOthers) {
  LocalEventBus bus;
  bool second = false;
  auto first = bus.subscribe("x", [](const Event&) { throw std::runtime_error("boom"); });
  auto other = bus.subscribe("x", [&](const Event&) { second = true; });
  bus.publish({"x", "test", {}});
  EXPECT_TRUE(second);
}

TEST(EventBus, PublishFromManyThreads) {
  LocalEventBus bus;
  std::atomic<int> count{0};
  auto sub = bus.subscribe("t", [&](const Event&) { count.fetch_add(1); });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        bus.publish({"t", "test", {}});
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(count.load(), 4000);
}

}  // namespace
}  // namespace ember::kernel
