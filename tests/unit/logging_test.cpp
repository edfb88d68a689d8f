#include "logging.hpp"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "support.hpp"

namespace ember::kernel {
namespace {

TEST(LogPatterns, MatchExactPrefixAndAll) {
  EXPECT_TRUE(pattern_matches("*", "anything"));
  EXPECT_TRUE(pattern_matches("plugin.pipe.*", "plugin.pipe.socket"));
  EXPECT_TRUE(pattern_matches("plugin.pipe.*", "plugin.pipe"));
  EXPECT_FALSE(pattern_matches("plugin.pipe.*", "plugin.piper"));
  EXPECT_FALSE(pattern_matches("plugin.pipe.*", "plugin.launcher.process"));
  EXPECT_TRUE(pattern_matches("kernel", "kernel"));
  EXPECT_FALSE(pattern_matches("kernel", "kernel.events"));
}

TEST(LogSpec, BareLevelSetsDefaultAndPairsAddRules) {
  auto spec = parse_log_spec("info, plugin.pipe.*=debug,kernel=off", LogSettings{});
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->level, LogLevel::info);
  ASSERT_EQ(spec->rules.size(), 2u);
  EXPECT_EQ(spec->rules[0].pattern, "plugin.pipe.*");
  EXPECT_EQ(spec->rules[0].level, LogLevel::debug);
  EXPECT_EQ(spec->rules[1].level, LogLevel::off);
}

TEST(LogSpec, RejectsUnknownLevelsAndEmptyPatterns) {
  auto bad = parse_log_spec("plugin.*=loud", LogSettings{});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("unknown log level 'loud'"), std::string::npos);
  EXPECT_FALSE(parse_log_spec("=debug", LogSettings{}));
}

TEST(LogHub, LaterRulesWinAndFileSinkReceivesLines) {
  LogSettings settings;
  settings.level = LogLevel::warn;
  settings.rules = {{"plugin.*", LogLevel::info}, {"plugin.pipe.*", LogLevel::debug}};
  LogHub hub(settings);
  EXPECT_EQ(hub.level_for("kernel"), LogLevel::warn);
  EXPECT_EQ(hub.level_for("plugin.launcher.fake"), LogLevel::info);
  EXPECT_EQ(hub.level_for("plugin.pipe.memory"), LogLevel::debug);

  test::TempDir dir;
  auto file = dir.path() / "site.log";
  auto logger = hub.get("plugin.pipe.memory");
  ASSERT_TRUE(hub.add_file(file));
  EXPECT_TRUE(logger->enabled(LogLevel::debug));
  EXPECT_FALSE(hub.get("kernel")->enabled(LogLevel::info));
  logger->debug("frame sent");
  logger->warn("peer slow");  // warn flushes
  std::ifstream in(file);
  std::stringstream content;
  content << in.rdbuf();
  EXPECT_NE(content.str().find("[plugin.pipe.memory] frame sent"), std::string::npos);
  EXPECT_NE(content.str().find("peer slow"), std::string::npos);
  EXPECT_EQ(hub.get("plugin.pipe.memory"), logger);
}

TEST(LogHub, UnwritableFileIsAnError) {
  LogHub hub(LogSettings{});
  auto added = hub.add_file("/proc/no/such/dir/x.log");
  ASSERT_FALSE(added);
  EXPECT_EQ(added.error().code, Errc::io_error);
}

}  // namespace
}  // namespace ember::kernel
