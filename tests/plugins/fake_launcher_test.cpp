#include <csignal>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/launcher.hpp>

#include "support.hpp"

namespace ember {
namespace {

using namespace std::chrono_literals;

class FakeLauncherTest : public ::testing::Test {
 protected:
  std::shared_ptr<Launcher> make(Options options) {
    auto launcher = kernel_->registry().create_as<Launcher>("launcher.fake", options);
    EXPECT_TRUE(launcher) << launcher.error().message;
    return *launcher;
  }
  LaunchSpec spec() { return LaunchSpec{"site-1.trainer", {"train.py"}, {}, {}, {}}; }
  std::unique_ptr<kernel::Kernel> kernel_ = test::static_kernel();
};

TEST_F(FakeLauncherTest, ExitsWithTheConfiguredCodeAfterItsRunTime) {
  Options options;
  options.set("exit_code", std::int64_t{3});
  options.set("run_time", std::chrono::milliseconds(30));
  auto handle = std::move(*make(options)->launch(spec()));
  EXPECT_EQ(handle->state(), RunState::started);
  auto early = handle->wait(1ms);
  ASSERT_TRUE(early);
  EXPECT_FALSE(early->has_value());
  auto status = handle->wait(5s);
  ASSERT_TRUE(status && status->has_value());
  EXPECT_EQ(**status, (ExitStatus{ExitStatus::How::exited, 3}));
  EXPECT_EQ(handle->state(), RunState::failed);
  EXPECT_EQ(*handle->stop(1s), (ExitStatus{ExitStatus::How::exited, 3}));  // stop after exit keeps the status
}

TEST_F(FakeLauncherTest, StopEndsARunningProgramWithSigterm) {
  Options options;
  options.set("run_time", std::chrono::milliseconds(60'000));
  auto handle = std::move(*make(options)->launch(spec()));
  EXPECT_EQ(*handle->stop(1s), (ExitStatus{ExitStatus::How::signaled, SIGTERM}));
}

TEST_F(FakeLauncherTest, AProgramIgnoringSigtermIsKilledAfterTheGrace) {
  Options options;
  options.set("run_time", std::chrono::milliseconds(60'000));
  options.set("ignore_stop", true);
  auto handle = std::move(*make(options)->launch(spec()));
  EXPECT_EQ(*handle->stop(10ms), (ExitStatus{ExitStatus::How::signaled, SIGKILL}));
}

TEST_F(FakeLauncherTest, LaunchFailuresAreErrors) {
  Options options;
  options.set("fail_launch", true);
  auto failed = make(options)->launch(spec());
  ASSERT_FALSE(failed);
  EXPECT_THAT(failed.error().message, ::testing::HasSubstr("site-1.trainer"));
  auto empty = make(Options{})->launch(LaunchSpec{"x", {}, {}, {}, {}});
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, Errc::invalid_argument);
}

TEST_F(FakeLauncherTest, PublishesLaunchEvents) {
  std::vector<std::string> ids;
  auto sub =
      kernel_->events().subscribe("launcher.*", [&](const Event& e) { ids.push_back(e.fields.at("id")); });
  auto launcher = make(Options{});
  ASSERT_TRUE(launcher->launch(spec()));
  ASSERT_TRUE(launcher->launch(spec()));
  EXPECT_EQ(ids, (std::vector<std::string>{"fake-1", "fake-2"}));
}

}  // namespace
}  // namespace ember
