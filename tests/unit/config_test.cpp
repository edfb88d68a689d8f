#include "config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "session_settings.hpp"
#include "support.hpp"

namespace ember::kernel {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

class JobConfigTest : public ::testing::Test {
 protected:
  Result<JobConfig> parse(const std::string& text) {
    return parse_job(text, "jobs/x/job.toml", kernel_->registry());
  }
  std::string error_of(const std::string& text) {
    auto job = parse(text);
    EXPECT_FALSE(job) << "expected an error for:\n" << text;
    return job ? std::string() : job.error().message;
  }
  std::unique_ptr<Kernel> kernel_ = test::static_kernel();
};

TEST_F(JobConfigTest, ReadsAFullJob) {
  auto job = parse(R"(schema_version = 1
[job]
name = "hello"
description = "two sites"
[timeouts]
launch = "20s"
heartbeat_interval = "2s"
heartbeat_timeout = "10s"
[session]
max_resends = 5
[log]
level = "debug"
[log.levels]
"plugin.pipe.*" = "trace"
[components.pipe]
type = "pipe.memory"
capacity = 8
[components.trainer]
type = "launcher.fake"
run_time = "1s"
)");
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(job->name, "hello");
  EXPECT_EQ(job->timeouts.launch, 20s);
  EXPECT_EQ(job->timeouts.heartbeat_timeout, 10s);
  EXPECT_EQ(job->timeouts.shutdown_grace, 10s);  // default kept
  EXPECT_EQ(job->session.max_resends, 5);
  EXPECT_EQ(job->log.level, LogLevel::debug);
  ASSERT_EQ(job->log.rules.size(), 1u);
  ASSERT_EQ(job->components.size(), 2u);
  const auto* pipe = job->component("pipe");
  ASSERT_NE(pipe, nullptr);
  EXPECT_EQ(pipe->type, "pipe.memory");
  EXPECT_EQ(pipe->options.integer("capacity"), 8);
  EXPECT_EQ(pipe->options.integer("max_frame_bytes"), 67108864);  // default filled in
  EXPECT_EQ(pipe->where.str(), "jobs/x/job.toml:15:1");
  EXPECT_EQ(job->component("trainer")->options.duration("run_time"), 1s);
}

TEST_F(JobConfigTest, NameDefaultsToTheJobFolder) {
  auto job = parse("schema_version = 1\n");
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(job->name, "x");
}

TEST_F(JobConfigTest, TheTrainerConfigTableTravelsAsJson) {
  auto job = parse(
      "schema_version = 1\n[trainer_config]\nlr = 0.5\nname = \"cnn\"\nsizes = [1, 2]\n"
      "[trainer_config.opt]\nmomentum = true\n");
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(
      nlohmann::json::parse(job->trainer_config_json),
      nlohmann::json::parse(R"({"lr": 0.5, "name": "cnn", "sizes": [1, 2], "opt": {"momentum": true}})"));
  auto plain = parse("schema_version = 1\n");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->trainer_config_json, "{}");
  EXPECT_THAT(error_of("schema_version = 1\ntrainer_config = 3\n"),
              HasSubstr("jobs/x/job.toml:2:18: trainer_config: expected a table"));
}

TEST_F(JobConfigTest, UnknownKeysNameFileLineColumn) {
  EXPECT_EQ(error_of("schema_version = 1\nrounds = 3\n"),
            "jobs/x/job.toml:2:1: rounds: unknown key (expected one of: schema_version, job, timeouts, "
            "session, log, components, trainer_config)");
  EXPECT_THAT(error_of("schema_version = 1\n[timeouts]\n  lanch = \"3s\"\n"),
              HasSubstr("jobs/x/job.toml:3:3: timeouts.lanch: unknown key"));
  EXPECT_THAT(error_of("schema_version = 1\n[components.p]\ntype = \"pipe.memory\"\ncapacty = 3\n"),
              HasSubstr("jobs/x/job.toml:4:1: components.p.capacty: unknown option of pipe.memory (options: "
                        "capacity, max_frame_bytes)"));
}

TEST_F(JobConfigTest, WrongTypesNameFileLineColumn) {
  EXPECT_EQ(error_of("schema_version = 1\n[components.p]\ntype = \"pipe.memory\"\ncapacity = \"8\"\n"),
            "jobs/x/job.toml:4:12: components.p.capacity: expected integer, found a string");
  EXPECT_THAT(error_of("schema_version = 1\n[timeouts]\nlaunch = 30\n"),
              HasSubstr("jobs/x/job.toml:3:10: timeouts.launch: expected a duration with a unit"));
  EXPECT_THAT(error_of("schema_version = 1\njob = 3\n"),
              HasSubstr("jobs/x/job.toml:2:7: job: expected a table"));
}

TEST_F(JobConfigTest, UnknownComponentTypeListsKnownOnes) {
  EXPECT_THAT(
      error_of("schema_version = 1\n[components.p]\ntype = \"pipe.carrier-pigeon\"\n"),
      HasSubstr("jobs/x/job.toml:3:8: components.p.type: unknown component type 'pipe.carrier-pigeon' "
                "(known: applet.echo, converter.identity, launcher.fake, pipe.memory)"));
  EXPECT_THAT(error_of("schema_version = 1\n[components.p]\ncapacity = 1\n"), HasSubstr("missing 'type'"));
}

TEST_F(JobConfigTest, SchemaVersionIsRequiredAndChecked) {
  EXPECT_THAT(error_of("[job]\nname = \"a\"\n"), HasSubstr("jobs/x/job.toml:1:1: schema_version: missing"));
  EXPECT_THAT(error_of("schema_version = 2\n"),
              HasSubstr("jobs/x/job.toml:1:18: schema_version: unsupported"));
}

TEST_F(JobConfigTest, TimeoutInvariantsAreChecked) {
  EXPECT_THAT(
      error_of("schema_version = 1\n[timeouts]\nheartbeat_interval = \"30s\"\nheartbeat_timeout = \"10s\"\n"),
      HasSubstr("timeouts.heartbeat_interval: must be shorter than heartbeat_timeout (30s >= 10s)"));
  EXPECT_THAT(error_of("schema_version = 1\n[timeouts]\nlaunch = \"0s\"\n"),
              HasSubstr("must be longer than zero"));
  EXPECT_THAT(error_of("schema_version = 1\n[session]\nmax_resends = 1000\n"),
              HasSubstr("session.max_resends: must be between 0 and 100"));
}

TEST_F(JobConfigTest, SubstitutionsApplyToStringOptions) {
  auto job = parse(R"(schema_version = 1
[job]
name = "j1"
[components.a]
type = "applet.echo"
prefix = "{site}/{job_id}/{workspace}: "
)");
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(job->component("a")->options.string("prefix"), "local/j1/.: ");
  EXPECT_THAT(error_of("schema_version = 1\n[components.a]\ntype = \"applet.echo\"\nprefix = \"{user}\"\n"),
              HasSubstr("jobs/x/job.toml:4:10: components.a.prefix: unknown substitution '{user}'"));
}

TEST_F(JobConfigTest, ReportsEveryProblemAtOnce) {
  auto message =
      error_of("schema_version = 1\nfoo = 1\n[timeouts]\nlaunch = \"x\"\n[components.p]\ntype = 3\n");
  EXPECT_THAT(message, HasSubstr(":2:1: foo"));
  EXPECT_THAT(message, HasSubstr(":4:10: timeouts.launch"));
  EXPECT_THAT(message, HasSubstr(":6:8: components.p.type"));
}

TEST_F(JobConfigTest, InvalidTomlNamesThePosition) {
  auto job = parse("schema_version = 1\n[components\n");
  ASSERT_FALSE(job);
  EXPECT_EQ(job.error().code, Errc::invalid_config);
  EXPECT_THAT(job.error().message, HasSubstr("jobs/x/job.toml:2:"));
  EXPECT_THAT(job.error().message, HasSubstr("invalid TOML"));
}

TEST_F(JobConfigTest, LoadJobReadsAFolderAndNamesMissingFiles) {
  test::TempDir dir;
  dir.write("myjob/job.toml", "schema_version = 1\n");
  auto job = load_job(dir.path() / "myjob", kernel_->registry());
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(job->name, "myjob");
  auto missing = load_job(dir.path() / "nope", kernel_->registry());
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::not_found);
  EXPECT_THAT(missing.error().message, HasSubstr("nope: no such file"));
}

TEST(SiteConfig, ResolvesPluginPathsAgainstTheFile) {
  auto site = parse_site(R"(schema_version = 1
[site]
name = "site-2"
workspace = "/var/ember/{site}"
[plugins]
paths = ["plugins", "/opt/ember/{site}"]
[log]
level = "warn"
)",
                         "/etc/ember/site.toml", "/etc/ember");
  ASSERT_TRUE(site) << site.error().message;
  EXPECT_EQ(site->name, "site-2");
  EXPECT_EQ(site->workspace, "/var/ember/site-2");
  EXPECT_EQ(site->plugin_paths,
            (std::vector<std::filesystem::path>{"/etc/ember/plugins", "/opt/ember/site-2"}));
  EXPECT_EQ(site->log.level, LogLevel::warn);
}

TEST(SiteConfig, RejectsUnknownKeysAndNeedsASiteTable) {
  auto site = parse_site("schema_version = 1\n[site]\nname = \"a\"\ngpus = 2\n", "s.toml", ".");
  ASSERT_FALSE(site);
  EXPECT_THAT(site.error().message, HasSubstr("s.toml:4:1: site.gpus: unknown key"));
  auto no_site = parse_site("schema_version = 1\n", "s.toml", ".");
  ASSERT_FALSE(no_site);
  EXPECT_THAT(no_site.error().message, HasSubstr("missing [site] table"));
  EXPECT_TRUE(looks_like_site("schema_version = 1\n[site]\n"));
  EXPECT_FALSE(looks_like_site("schema_version = 1\n[job]\n"));
}

}  // namespace
}  // namespace ember::kernel

namespace ember::kernel {
namespace {

TEST(SiteConfig, UmaskIsOctalTextAndOptional) {
  auto plain = parse_site("schema_version = 1\n[site]\nname = \"s\"\n", "s.toml", ".");
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_FALSE(plain->umask);
  auto shared = parse_site("schema_version = 1\n[site]\nname = \"s\"\numask = \"0027\"\n", "s.toml", ".");
  ASSERT_TRUE(shared) << shared.error().message;
  EXPECT_EQ(shared->umask, 027u);
  for (std::string bad : {"\"9\"", "\"01000\"", "22", "\"\""}) {
    auto refused =
        parse_site("schema_version = 1\n[site]\nname = \"s\"\numask = " + bad + "\n", "s.toml", ".");
    ASSERT_FALSE(refused) << bad;
    EXPECT_THAT(refused.error().message, ::testing::HasSubstr("s.toml:4:9: site.umask: expected octal text"));
  }
}

TEST(SiteConfig, OnlySiteIsSubstitutedInASiteFile) {
  auto site = parse_site("schema_version = 1\n[site]\nname = \"s\"\n[plugins]\npaths = [\"/opt/{job_id}\"]\n",
                         "s.toml", "/");
  ASSERT_FALSE(site);
  EXPECT_THAT(
      site.error().message,
      ::testing::HasSubstr("s.toml:5:9: plugins.paths: element 0: substitution '{job_id}' is not available"));
}

TEST(LogConfig, RulesKeepTheOrderTheyWereWrittenIn) {
  auto kernel = test::static_kernel();
  auto job = parse_job(
      "schema_version = 1\n[log]\nlevel = \"error\"\n[log.levels]\n\"plugin.pipe.memory\" = "
      "\"trace\"\n\"*\" = \"warn\"\n",
      "j/job.toml", kernel->registry());
  ASSERT_TRUE(job) << job.error().message;
  ASSERT_EQ(job->log.rules.size(), 2u);
  EXPECT_EQ(job->log.rules[0].pattern, "plugin.pipe.memory");
  EXPECT_EQ(job->log.rules[1].pattern, "*");
  EXPECT_TRUE(job->log.level_set);
}

}  // namespace
}  // namespace ember::kernel

namespace ember::kernel {
namespace {

TEST(SessionSettingsFromConfig, CarryTheJobsTimeouts) {
  auto kernel = test::static_kernel();
  auto job = parse_job(
      "schema_version = 1\n[timeouts]\nlaunch = \"20s\"\nheartbeat_interval = \"2s\"\n"
      "heartbeat_timeout = \"9s\"\nstream_idle = \"45s\"\n[session]\nmax_resends = 7\n",
      "j/job.toml", kernel->registry());
  ASSERT_TRUE(job) << job.error().message;
  auto s = session_settings(job->timeouts, job->session);
  EXPECT_EQ(s.launch, std::chrono::seconds(20));
  EXPECT_EQ(s.heartbeat_interval, std::chrono::seconds(2));
  EXPECT_EQ(s.heartbeat_timeout, std::chrono::seconds(9));
  EXPECT_EQ(s.stream_idle, std::chrono::seconds(45));
  EXPECT_EQ(s.max_resends, 7);
  EXPECT_EQ(describe(s).substr(0, 40), "launch=20s heartbeat_interval=2s heartbe");
}

}  // namespace
}  // namespace ember::kernel
