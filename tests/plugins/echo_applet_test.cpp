#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/applet.hpp>

#include "support.hpp"

namespace ember {
namespace {

using namespace std::chrono_literals;

std::vector<std::byte> bytes(std::string_view s) {
  std::vector<std::byte> out;
  for (char c : s) {
    out.push_back(static_cast<std::byte>(c));
  }
  return out;
}

TEST(EchoApplet, RelaysWithPrefixOnlyWhileRunning) {
  auto kernel = test::static_kernel();
  Options options;
  options.set("prefix", std::string("re: "));
  options.set("max_message_bytes", std::int64_t{8});
  auto applet = std::move(*kernel->registry().create_as<Applet>("applet.echo", options));
  EXPECT_EQ(applet->state(), RunState::not_started);
  EXPECT_EQ(applet->relay(bytes("hi")).error().code, Errc::closed);
  ASSERT_TRUE(applet->start());
  EXPECT_FALSE(applet->start());
  EXPECT_EQ(*applet->relay(bytes("hi")), bytes("re: hi"));
  EXPECT_EQ(applet->relay(bytes("123456789")).error().code, Errc::invalid_argument);
  ASSERT_TRUE(applet->stop(1s));
  ASSERT_TRUE(applet->stop(1s));
  EXPECT_EQ(applet->state(), RunState::stopped);
  EXPECT_FALSE(applet->relay(bytes("hi")));
}

}  // namespace
}  // namespace ember
