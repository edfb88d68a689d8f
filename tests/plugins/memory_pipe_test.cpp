#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/pipe.hpp>

#include "support.hpp"

namespace ember {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

std::vector<std::byte> bytes(std::string_view s) {
  std::vector<std::byte> out;
  for (char c : s) {
    out.push_back(static_cast<std::byte>(c));
  }
  return out;
}

class MemoryPipeTest : public ::testing::Test {
 protected:
  std::shared_ptr<Pipe> make(std::int64_t capacity = 2, std::int64_t max_frame = 16) {
    Options options;
    options.set("capacity", capacity);
    options.set("max_frame_bytes", max_frame);
    auto pipe = kernel_->registry().create_as<Pipe>("pipe.memory", options, "t");
    EXPECT_TRUE(pipe) << pipe.error().message;
    return *pipe;
  }
  std::unique_ptr<kernel::Kernel> kernel_ = test::static_kernel();
};

TEST_F(MemoryPipeTest, FramesFlowBothWaysInOrder) {
  auto pipe = make();
  auto job = std::move(*pipe->open(PipeSide::job, 10ms));
  auto trainer = std::move(*pipe->open(PipeSide::trainer, 10ms));
  ASSERT_TRUE(job->send(bytes("one"), 10ms));
  ASSERT_TRUE(job->send(bytes("two"), 10ms));
  EXPECT_EQ(**trainer->receive(10ms), bytes("one"));
  EXPECT_EQ(**trainer->receive(10ms), bytes("two"));
  ASSERT_TRUE(trainer->send(bytes("back"), 10ms));
  EXPECT_EQ(**job->receive(10ms), bytes("back"));
}

TEST_F(MemoryPipeTest, FullQueueTimesOutAndEmptyQueueReturnsNothing) {
  auto pipe = make(1);
  auto job = std::move(*pipe->open(PipeSide::job, 10ms));
  auto trainer = std::move(*pipe->open(PipeSide::trainer, 10ms));
  auto nothing = trainer->receive(20ms);
  ASSERT_TRUE(nothing);
  EXPECT_FALSE(nothing->has_value());
  ASSERT_TRUE(job->send(bytes("a"), 10ms));
  auto full = job->send(bytes("b"), 20ms);
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code, Errc::timeout);
}

TEST_F(MemoryPipeTest, OversizedFrameIsRefused) {
  auto pipe = make(2, 4);
  auto job = std::move(*pipe->open(PipeSide::job, 10ms));
  auto sent = job->send(bytes("12345"), 10ms);
  ASSERT_FALSE(sent);
  EXPECT_THAT(sent.error().message, HasSubstr("5 bytes exceeds max_frame_bytes 4"));
}

TEST_F(MemoryPipeTest, EachEndOpensOnce) {
  auto pipe = make();
  ASSERT_TRUE(pipe->open(PipeSide::job, 10ms));
  auto again = pipe->open(PipeSide::job, 10ms);
  ASSERT_FALSE(again);
  EXPECT_THAT(again.error().message, HasSubstr("the job end is already open"));
}

TEST_F(MemoryPipeTest, CloseDrainsThenReportsClosedAndWakesWaiters) {
  auto pipe = make();
  auto job = std::move(*pipe->open(PipeSide::job, 10ms));
  auto trainer = std::move(*pipe->open(PipeSide::trainer, 10ms));
  ASSERT_TRUE(job->send(bytes("last"), 10ms));
  std::thread closer([&] {
    std::this_thread::sleep_for(20ms);
    job->close();
  });
  EXPECT_EQ(**trainer->receive(1s), bytes("last"));
  auto closed = trainer->receive(5s);  // woken by close, long before 5 s
  closer.join();
  ASSERT_FALSE(closed);
  EXPECT_EQ(closed.error().code, Errc::closed);
  EXPECT_EQ(trainer->send(bytes("x"), 10ms).error().code, Errc::closed);
}

TEST_F(MemoryPipeTest, RejectsBadCapacity) {
  Options options;
  options.set("capacity", std::int64_t{0});
  auto pipe = kernel_->registry().create("pipe.memory", options);
  ASSERT_FALSE(pipe);
  EXPECT_EQ(pipe.error().code, Errc::invalid_option);
}

}  // namespace
}  // namespace ember
