#include "duration.hpp"

#include <gtest/gtest.h>

namespace ember::kernel {
namespace {

using namespace std::chrono_literals;

TEST(Duration, ParsesEachUnitAndSums) {
  EXPECT_EQ(*parse_duration("250ms"), 250ms);
  EXPECT_EQ(*parse_duration("30s"), 30s);
  EXPECT_EQ(*parse_duration("5m"), 5min);
  EXPECT_EQ(*parse_duration("2h"), 2h);
  EXPECT_EQ(*parse_duration("1m30s"), 90s);
  EXPECT_EQ(*parse_duration("1h1m1s1ms"), 3661001ms);
  EXPECT_EQ(*parse_duration("0s"), 0ms);
}

TEST(Duration, RejectsWhatIsNotADuration) {
  for (const char* bad : {"", "30", "s", "5x", "-1s", "1.5s", "30 s", "1d", "ms", "5m5"}) {
    auto parsed = parse_duration(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_EQ(parsed.error().code, Errc::invalid_argument) << bad;
  }
  EXPECT_NE(parse_duration("5x").error().message.find("unit \"x\""), std::string::npos);
}

TEST(Duration, RejectsOverlongWithoutOverflow) {
  EXPECT_FALSE(parse_duration("366d"));
  EXPECT_FALSE(parse_duration("9000h"));
  EXPECT_FALSE(parse_duration("99999999999999999999999h"));
  EXPECT_FALSE(parse_duration("8700h8700h"));
  EXPECT_TRUE(parse_duration("8760h"));
}

TEST(Duration, FormatsInTheLargestExactUnitAndRoundTrips) {
  EXPECT_EQ(format_duration(90s), "90s");
  EXPECT_EQ(format_duration(2min), "2m");
  EXPECT_EQ(format_duration(250ms), "250ms");
  EXPECT_EQ(format_duration(3h), "3h");
  EXPECT_EQ(format_duration(0ms), "0s");
  for (auto d : {1ms, 1001ms, 60000ms, 3600000ms, 3600001ms}) {
    EXPECT_EQ(*parse_duration(format_duration(d)), d);
  }
}

}  // namespace
}  // namespace ember::kernel
