#include "option_values.hpp"

#include <gtest/gtest.h>
#include <toml++/toml.h>

namespace ember::kernel {
namespace {

using namespace std::chrono_literals;

const Substitutions subs{"site-1", "job-7", "/ws"};

TEST(Substitute, ReplacesTheThreeNamesAndKeepsEscapedBraces) {
  EXPECT_EQ(*substitute("{workspace}/{site}/{job_id}", subs), "/ws/site-1/job-7");
  EXPECT_EQ(*substitute("{{literal}} and {site}", subs), "{literal} and site-1");
  EXPECT_EQ(*substitute("no braces", subs), "no braces");
}

TEST(Substitute, RejectsUnknownAndUnbalanced) {
  auto unknown = substitute("{home}/x", subs);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("unknown substitution '{home}'"), std::string::npos);
  EXPECT_FALSE(substitute("{site", subs));
  EXPECT_FALSE(substitute("site}", subs));
}

TEST(OptionFromText, ParsesEveryType) {
  EXPECT_EQ(std::get<std::string>(*option_from_text("\"a {site}\"", OptionType::string, subs)), "a site-1");
  EXPECT_EQ(std::get<std::string>(*option_from_text("bare", OptionType::string, subs)), "bare");
  EXPECT_EQ(std::get<std::int64_t>(*option_from_text("64", OptionType::integer, subs)), 64);
  EXPECT_DOUBLE_EQ(std::get<double>(*option_from_text("0.5", OptionType::number, subs)), 0.5);
  EXPECT_DOUBLE_EQ(std::get<double>(*option_from_text("3", OptionType::number, subs)), 3.0);
  EXPECT_EQ(std::get<bool>(*option_from_text("true", OptionType::boolean, subs)), true);
  EXPECT_EQ(std::get<std::chrono::milliseconds>(*option_from_text("30s", OptionType::duration, subs)), 30s);
  EXPECT_EQ(std::get<std::chrono::milliseconds>(*option_from_text("\"5m\"", OptionType::duration, subs)),
            5min);
  auto list = option_from_text("[\"a\", \"{job_id}\"]", OptionType::string_list, subs);
  EXPECT_EQ(std::get<std::vector<std::string>>(*list), (std::vector<std::string>{"a", "job-7"}));
}

TEST(OptionFromText, RejectsMismatches) {
  EXPECT_FALSE(option_from_text("\"64\"", OptionType::integer, subs));
  EXPECT_FALSE(option_from_text("soon", OptionType::duration, subs));
  EXPECT_FALSE(option_from_text("30", OptionType::duration, subs));
  EXPECT_FALSE(option_from_text("yes", OptionType::boolean, subs));
  EXPECT_FALSE(option_from_text("[1, 2]", OptionType::string_list, subs));
  EXPECT_FALSE(option_from_text("nan", OptionType::number, subs));
  EXPECT_FALSE(option_from_text("1\nw = 2", OptionType::integer, subs));
}

TEST(OptionFromText, ReadsTheTomlFormsOfADefaultWithoutTheTomlParser) {
  auto text = [](std::string_view t) {
    return std::get<std::string>(*option_from_text(t, OptionType::string, subs));
  };
  EXPECT_EQ(text(R"("a\"b\\c\tq\u00e9")"), "a\"b\\c\tq\xC3\xA9");
  EXPECT_EQ(text(R"('C:\raw')"), R"(C:\raw)");
  EXPECT_EQ(text("two words"), "two words");
  EXPECT_EQ(std::get<std::int64_t>(*option_from_text("1_000_000", OptionType::integer, subs)), 1'000'000);
  EXPECT_EQ(std::get<std::int64_t>(*option_from_text("-3", OptionType::integer, subs)), -3);
  EXPECT_DOUBLE_EQ(std::get<double>(*option_from_text("1e-3", OptionType::number, subs)), 1e-3);
  auto list = [](std::string_view t) {
    return std::get<std::vector<std::string>>(*option_from_text(t, OptionType::string_list, subs));
  };
  EXPECT_TRUE(list("[]").empty());
  EXPECT_TRUE(list("[ ]").empty());
  EXPECT_EQ(list(R"(["a", 'b',])"), (std::vector<std::string>{"a", "b"}));
  for (auto bad : {R"("open)", R"("a" b)", R"("\q")", R"("\u12")", "1__0", "_1", "0x", "1.5"}) {
    auto type = std::string_view(bad).front() == '"' ? OptionType::string : OptionType::integer;
    auto value = option_from_text(bad, type, subs);
    EXPECT_FALSE(value) << bad;
    if (!value) {
      EXPECT_EQ(value.error().code, Errc::invalid_option) << bad;
      EXPECT_NE(value.error().message.find(std::string("default '") + bad + "'"), std::string::npos);
    }
  }
  EXPECT_FALSE(option_from_text(R"(["a" "b"])", OptionType::string_list, subs));
  EXPECT_FALSE(option_from_text(R"(["a"] x)", OptionType::string_list, subs));
  EXPECT_FALSE(option_from_text("inf", OptionType::number, subs));
  EXPECT_FALSE(option_from_text("\"true\"", OptionType::boolean, subs));
}

TEST(OptionFromToml, NamesBothTypesInTheError) {
  auto table = toml::parse("v = 12");
  auto value = option_from_toml(*table.get("v"), OptionType::string, subs);
  ASSERT_FALSE(value);
  EXPECT_EQ(value.error().code, Errc::invalid_option);
  EXPECT_EQ(value.error().message, "expected string, found an integer");
  auto duration = option_from_toml(*table.get("v"), OptionType::duration, subs);
  EXPECT_NE(duration.error().message.find("with a unit"), std::string::npos);
}

TEST(OptionToText, RendersAsTomlAndRoundTrips) {
  const std::pair<OptionValue, OptionType> cases[] = {
      {OptionValue(std::string("a\"b")), OptionType::string},
      {OptionValue(std::string("tab\there\nnewline\x01")), OptionType::string},
      {OptionValue(std::int64_t{-5}), OptionType::integer},
      {OptionValue(0.1), OptionType::number},
      {OptionValue(false), OptionType::boolean},
      {OptionValue(std::chrono::milliseconds(1500)), OptionType::duration},
      {OptionValue(std::vector<std::string>{"x", "y"}), OptionType::string_list},
  };
  for (const auto& [value, type] : cases) {
    auto text = option_to_text(value);
    auto back = option_from_text(text, type, Substitutions{});
    ASSERT_TRUE(back) << text << ": " << back.error().message;
    EXPECT_EQ(*back, value) << text;
  }
}

TEST(OptionConstraints, ChoicesWithPlaceholders) {
  auto device = parse_constraints(OptionType::string, "cpu|auto|cuda|cuda:<0-15>", nullptr, nullptr);
  ASSERT_TRUE(device) << device.error().message;
  for (const char* good : {"cpu", "auto", "cuda", "cuda:0", "cuda:15"}) {
    EXPECT_TRUE(check_constraints(OptionValue(std::string(good)), *device)) << good;
  }
  for (const char* bad : {"", "gpu", "cuda:", "cuda:16", "cuda:99", "cuda:01", "cuda:1x"}) {
    auto checked = check_constraints(OptionValue(std::string(bad)), *device);
    ASSERT_FALSE(checked) << bad;
    EXPECT_EQ(checked.error().code, Errc::invalid_option);
  }
  auto env = parse_constraints(OptionType::string_list, "<name>=<any>", nullptr, nullptr);
  ASSERT_TRUE(env);
  EXPECT_TRUE(check_constraints(OptionValue(std::vector<std::string>{"A=1", "B_2=", "C=x=y"}), *env));
  auto bad_env = check_constraints(OptionValue(std::vector<std::string>{"A=1", "=x"}), *env);
  ASSERT_FALSE(bad_env);
  EXPECT_EQ(bad_env.error().message, "element 1: \"=x\" is not one of: <name>=<any>");
  auto address = parse_constraints(OptionType::string, "unix:<any>|tcp:<any>:<0-65535>", nullptr, nullptr);
  ASSERT_TRUE(address);
  EXPECT_TRUE(check_constraints(OptionValue(std::string("tcp:[::1]:80")), *address));
  EXPECT_FALSE(check_constraints(OptionValue(std::string("tcp:host:65536")), *address));
  EXPECT_FALSE(parse_constraints(OptionType::string, "cuda:<9-1>", nullptr, nullptr));
  EXPECT_FALSE(parse_constraints(OptionType::string, "a<b", nullptr, nullptr));
}

TEST(OptionConstraints, Ranges) {
  auto rounds = parse_constraints(OptionType::integer, nullptr, "1", "100");
  ASSERT_TRUE(rounds);
  EXPECT_TRUE(check_constraints(OptionValue(std::int64_t{1}), *rounds));
  EXPECT_EQ(check_constraints(OptionValue(std::int64_t{0}), *rounds).error().message,
            "0 is below the minimum 1");
  EXPECT_EQ(check_constraints(OptionValue(std::int64_t{101}), *rounds).error().message,
            "101 is above the maximum 100");
  EXPECT_EQ(describe_constraints(*rounds), "1..100");
  auto wait = parse_constraints(OptionType::duration, nullptr, "10ms", nullptr);
  ASSERT_TRUE(wait);
  EXPECT_FALSE(check_constraints(OptionValue(std::chrono::milliseconds(5)), *wait));
  EXPECT_EQ(describe_constraints(*wait), ">= 10ms");
  EXPECT_FALSE(parse_constraints(OptionType::integer, nullptr, "5", "1"));        // minimum above maximum
  EXPECT_FALSE(parse_constraints(OptionType::string, nullptr, "1", nullptr));     // a range on a string
  EXPECT_FALSE(parse_constraints(OptionType::integer, "a|b", nullptr, nullptr));  // choices on an integer
  EXPECT_FALSE(parse_constraints(OptionType::integer, nullptr, "one", nullptr));  // not an integer
}

}  // namespace
}  // namespace ember::kernel
