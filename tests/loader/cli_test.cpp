// The ember command line, in-process through run_cli and as the real binary.

#include "cli.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_run.hpp"
#include "exit_codes.hpp"
#include "support.hpp"
#include "workspace.hpp"

namespace ember::kernel {
namespace {

// The plugin files the build tree holds: the reference plugins, the job plugins (launcher.docker among
// them), LibTorch's converter and the cell pipe (where their libraries were found).
constexpr std::size_t reference_plugin_count = 10
#ifdef EMBER_TEST_HAVE_TORCH
                                               + 1
#endif
#ifdef EMBER_TEST_HAVE_CELL
                                               + 1
#endif
    ;

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

using test::cli;
using test::CliRun;

std::vector<std::string> only(const std::filesystem::path& dir) {
  return {"--no-default-plugins", "--no-env-plugin-path", "--plugin-path", dir.string()};
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(Cli, PluginsJsonListsReferencePluginsWithOptions) {
  auto run = cli(with(only(test::build_root() / "plugins"), {"plugins", "--json"}));
  ASSERT_EQ(run.code, exit_code::ok) << run.err;
  auto doc = json::parse(run.out);
  EXPECT_EQ(doc["abi_version"], abi_version);
  ASSERT_EQ(doc["plugins"].size(), reference_plugin_count);
  EXPECT_TRUE(doc["refused"].empty());
  std::map<std::string, json> by_type;
  for (const auto& p : doc["plugins"]) {
    for (const auto& c : p["components"]) {
      by_type[c["type"]] = c;
    }
  }
  ASSERT_TRUE(by_type.count("pipe.memory"));
  const auto& capacity = by_type["pipe.memory"]["options"][0];
  EXPECT_EQ(capacity["name"], "capacity");
  EXPECT_EQ(capacity["type"], "integer");
  EXPECT_EQ(capacity["default"], "64");
  EXPECT_EQ(capacity["required"], false);
  EXPECT_EQ(by_type["launcher.fake"]["kind"], "launcher");
  EXPECT_TRUE(by_type.count("applet.echo") && by_type.count("converter.identity"));
}

TEST(Cli, PluginsJsonNamesEachRefusedFixtureAndItsCause) {
  auto run = cli(with(only(EMBER_FIXTURE_DIR), {"plugins", "--json"}));
  EXPECT_EQ(run.code, exit_code::plugin_error);
  auto doc = json::parse(run.out);
  std::map<std::string, std::string> refused;
  for (const auto& r : doc["refused"]) {
    std::string path = r["path"];
    EXPECT_THAT(std::string(r["message"]), HasSubstr(path));
    refused[std::filesystem::path(path).filename().string()] = r["code"];
  }
  EXPECT_EQ(refused["fixture-wrong-abi.so"], "abi_mismatch");
  EXPECT_EQ(refused["fixture-wrong-size.so"], "invalid_descriptor");
  EXPECT_EQ(refused["fixture-bad-build-id.so"], "build_mismatch");
  EXPECT_EQ(refused["fixture-no-entry.so"], "not_a_plugin");
  EXPECT_EQ(refused["fixture-dup-b.so"], "duplicate_name");
  EXPECT_EQ(refused["fixture-not-elf.so"], "open_failed");
  // Listing reads sections only: a library that cannot be loaded is found out when a component is created.
  EXPECT_EQ(refused.count("fixture-undefined-symbol.so"), 0u);
  EXPECT_EQ(refused.size(), 8u);
}

TEST(Cli, PluginsHumanOutputShowsRefusals) {
  auto run = cli(with(only(EMBER_FIXTURE_DIR), {"plugins"}));
  EXPECT_EQ(run.code, exit_code::plugin_error);
  EXPECT_THAT(run.out, HasSubstr("Refused (8):"));
  EXPECT_THAT(run.out, HasSubstr("[abi_mismatch]"));
  EXPECT_THAT(run.out, HasSubstr("applet.fixture_throws"));
}

TEST(Cli, DescribePrintsOptionsWithTypesDefaultsAndDocs) {
  auto run = cli(with(only(test::build_root() / "plugins"), {"plugins", "describe", "launcher.fake"}));
  ASSERT_EQ(run.code, exit_code::ok) << run.err;
  EXPECT_THAT(run.out, HasSubstr("launcher.fake - "));
  EXPECT_THAT(run.out, HasSubstr("run_time"));
  EXPECT_THAT(run.out, HasSubstr("duration"));
  EXPECT_THAT(run.out, HasSubstr("default 0ms"));
  auto json_run =
      cli(with(only(test::build_root() / "plugins"), {"plugins", "describe", "pipe.memory", "--json"}));
  ASSERT_EQ(json_run.code, exit_code::ok);
  EXPECT_EQ(json::parse(json_run.out)["plugin"]["name"], "memory-pipe");
  auto missing = cli(with(only(test::build_root() / "plugins"), {"plugins", "describe", "pipe.nope"}));
  EXPECT_EQ(missing.code, exit_code::plugin_error);
  EXPECT_THAT(missing.err, HasSubstr("no component of type 'pipe.nope' (known: applet.echo"));
}

TEST(Cli, ValidateAcceptsGoodAndRejectsBadWithPositions) {
  test::TempDir dir;
  dir.write("good/job.toml", "schema_version = 1\n[components.p]\ntype = \"pipe.memory\"\n");
  auto bad = dir.write("bad.toml", "schema_version = 1\n[components.p]\ntype = \"pipe.memory\"\nsize = 3\n");
  auto run = cli(with(only(test::build_root() / "plugins"), {"validate", (dir.path() / "good").string()}));
  EXPECT_EQ(run.code, exit_code::ok) << run.err;
  EXPECT_THAT(run.out, HasSubstr("ok: "));
  auto failed = cli(with(only(test::build_root() / "plugins"), {"validate", bad.string()}));
  EXPECT_EQ(failed.code, exit_code::invalid_config);
  EXPECT_THAT(failed.err, HasSubstr(bad.string() + ":4:1: components.p.size: unknown option of pipe.memory"));
  auto missing =
      cli(with(only(test::build_root() / "plugins"), {"validate", (dir.path() / "nope").string()}));
  EXPECT_EQ(missing.code, exit_code::io_error);
}

TEST(Cli, DescribeShowsWhatValuesAnOptionTakes) {
  auto run =
      cli(with(only(test::build_root() / "plugins"), {"plugins", "describe", "executor.external-trainer"}));
  ASSERT_EQ(run.code, exit_code::ok) << run.err;
  EXPECT_THAT(run.out, HasSubstr("[one of: job, task]"));
  EXPECT_THAT(run.out, HasSubstr("[the id of a launcher component of the job]"));
  EXPECT_THAT(run.out, HasSubstr("[>= 0]"));
  auto memory =
      cli(with(only(test::build_root() / "plugins"), {"plugins", "describe", "pipe.memory", "--json"}));
  auto capacity = json::parse(memory.out)["options"][0];
  EXPECT_EQ(capacity["minimum"], "1");
  EXPECT_EQ(capacity["maximum"], "65536");
}

// Values the run would refuse are refused by validate, each at its file:line:column, before anything runs.
TEST(Cli, ValidateRefusesBadValuesAndReferencesWithPositions) {
  test::TempDir dir;
  struct Case {
    std::string toml;
    std::string expected;
  };
  const std::string trainer =
      "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [\"t\"]\n";
  const std::string wiring =
      "[components.launcher]\ntype = \"launcher.process\"\n[components.pipe]\ntype = "
      "\"pipe.memory\"\n";
  std::vector<Case> cases = {
      {trainer + "launch = \"tasks\"\n" + wiring,
       ":5:10: components.trainer.launch: \"tasks\" is not one of: job, task"},
      {"[components.w]\ntype = \"workflow.fedavg\"\nrounds = 0\n",
       ":4:10: components.w.rounds: 0 is below the minimum 1"},
      {"[components.w]\ntype = \"workflow.fedavg\"\nrounds = -1\n",
       ":4:10: components.w.rounds: -1 is below"},
      {"[components.w]\ntype = \"workflow.fedavg\"\nmin_clients = -1\n",
       "components.w.min_clients: -1 is below"},
      {"[components.p]\ntype = \"pipe.file\"\nmax_frame_bytes = -5\n",
       "components.p.max_frame_bytes: -5 is below"},
      {"[components.p]\ntype = \"pipe.socket\"\naddress = \"udp:1.2.3.4\"\n",
       "components.p.address: \"udp:1.2.3.4\" is not one of"},
      {"[components.c]\ntype = \"converter.identity\"\n[components.l]\ntype = \"launcher.process\"\nenv = "
       "[\"A=1\", \"=x\"]\n",
       "components.l.env: element 1: \"=x\" is not one of: <name>=<any>"},
      {trainer + wiring + "[components.x]\ntype = \"applet.echo\"\n", ""},
      {trainer + "launcher = \"x\"\n" + wiring + "[components.x]\ntype = \"applet.echo\"\n",
       "components.trainer.launcher: names component 'x', a applet (applet.echo), where a launcher is "
       "wanted"},
      {trainer + "[components.pipe]\ntype = \"pipe.memory\"\n",
       "components.trainer.launcher: names component 'launcher', which the job does not have"},
  };
#ifdef EMBER_TEST_HAVE_TORCH
  cases.push_back({"[components.t]\ntype = \"converter.torch\"\ndevice = \"cuda:99\"\n",
                   "components.t.device: \"cuda:99\" is not one of: cpu, auto, cuda, cuda:<0-15>"});
#endif
  for (std::size_t i = 0; i < cases.size(); ++i) {
    auto file = dir.write("job" + std::to_string(i) + ".toml", "schema_version = 1\n" + cases[i].toml);
    auto run = cli(with(only(test::build_root() / "plugins"), {"validate", file.string()}));
    if (cases[i].expected.empty()) {
      EXPECT_EQ(run.code, exit_code::ok) << run.err;
      continue;
    }
    EXPECT_EQ(run.code, exit_code::invalid_config) << cases[i].toml;
    EXPECT_THAT(run.err, HasSubstr(file.string() + ":")) << cases[i].toml;
    EXPECT_THAT(run.err, HasSubstr(cases[i].expected)) << cases[i].toml;
  }
}

// `ember plugins --json` over the build tree, with the machine's paths and build id replaced, is the
// checked-in golden file. Regenerate it with EMBER_UPDATE_GOLDEN=1 after a deliberate change.
TEST(Cli, PluginsJsonMatchesTheGoldenFile) {
  auto run = cli(with(only(test::build_root() / "plugins"), {"plugins", "--json"}));
  ASSERT_EQ(run.code, exit_code::ok) << run.err;
  std::string text = run.out;
  auto replace_all = [&text](const std::string& from, const std::string& to) {
    for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
      text.replace(at, from.size(), to);
    }
  };
  replace_all(test::build_root().string(), "@BUILD_ROOT@");
  replace_all(EMBER_BUILD_ID, "@BUILD_ID@");
  auto actual = json::parse(text);
  auto golden_file = test::source_root() / "tests" / "loader" / "golden" / "plugins.json";
  if (std::getenv("EMBER_UPDATE_GOLDEN") != nullptr) {
    std::ofstream(golden_file) << actual.dump(2) << "\n";
  }
  std::ifstream in(golden_file);
  ASSERT_TRUE(in) << golden_file;
  auto expected = json::parse(in);
#ifndef EMBER_TEST_HAVE_TORCH
  auto& plugins = expected["plugins"];
  plugins.erase(std::remove_if(plugins.begin(), plugins.end(),
                               [](const json& p) { return p["name"] == "torch-converter"; }),
                plugins.end());
#endif
  EXPECT_EQ(actual, expected) << "diff (golden -> actual): " << json::diff(expected, actual).dump(2);
}

// Listing, describing and validating read the plugins' sections: none of them, nor LibTorch, gets mapped.
TEST(Cli, ListingDescribingAndValidatingLoadNoPlugin) {
  auto plugins = test::build_root() / "plugins";
  test::TempDir dir;
  auto job = dir.write("job.toml",
                       "schema_version = 1\n[components.t]\ntype = \"converter.torch\"\n"
                       "[components.p]\ntype = \"pipe.socket\"\n");
  EXPECT_EQ(cli(with(only(plugins), {"plugins", "--json"})).code, exit_code::ok);
  EXPECT_EQ(cli(with(only(plugins), {"plugins", "describe", "pipe.socket"})).code, exit_code::ok);
  cli(with(only(plugins), {"validate", job.string()}));
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    EXPECT_EQ(line.find(plugins.string()), std::string::npos) << line;
    EXPECT_EQ(line.find("libtorch"), std::string::npos) << line;
  }
}

TEST(Cli, AnUnknownCommandIsNamed) {
  auto run = cli({"frobnicate"});
  EXPECT_EQ(run.code, exit_code::usage);
  EXPECT_THAT(run.err, HasSubstr("unknown command 'frobnicate' (commands: plugins, validate"));
  auto after_option = cli({"--log-level", "info", "frobnicate", "x"});
  EXPECT_THAT(after_option.err, HasSubstr("unknown command 'frobnicate'"));
}

TEST(Cli, UsageErrorsAndHelp) {
  EXPECT_EQ(cli({}).code, exit_code::usage);
  EXPECT_EQ(cli({"plugins", "--bogus"}).code, exit_code::usage);
  auto help = cli({"--help"});
  EXPECT_EQ(help.code, exit_code::ok);
  EXPECT_THAT(help.out, HasSubstr("validate"));
  auto sub_help = cli({"plugins", "describe", "--help"});
  EXPECT_EQ(sub_help.code, exit_code::ok);
  EXPECT_THAT(sub_help.out, HasSubstr("Component type"));
  EXPECT_EQ(cli({"--log-level", "loud", "plugins"}).code, exit_code::usage);
}

TEST(Cli, SiteFileAddsPluginPaths) {
  test::TempDir dir;
  auto site = dir.write("site.toml", "schema_version = 1\n[site]\nname = \"s1\"\n[plugins]\npaths = [\"" +
                                         (test::build_root() / "plugins").string() + "\"]\n");
  auto run =
      cli({"--no-default-plugins", "--no-env-plugin-path", "--site", site.string(), "plugins", "--json"});
  ASSERT_EQ(run.code, exit_code::ok) << run.err;
  EXPECT_EQ(json::parse(run.out)["plugins"].size(), reference_plugin_count);
  auto bad_site = dir.write("bad.toml", "schema_version = 1\n[site]\nname = 3\n");
  auto failed = cli({"--site", bad_site.string(), "plugins"});
  EXPECT_EQ(failed.code, exit_code::invalid_config);
  EXPECT_THAT(failed.err, HasSubstr(bad_site.string() + ":3:8: site.name: expected a string"));
}

// A job for `ember simulate` whose executor refers to `pipe_ref`; `pipe_options` go under [components.pipe].
std::string simulate_job(const std::string& pipe_ref = "pipe", const std::string& pipe_options = "") {
  return "schema_version = 1\n[job]\nname = \"codes\"\n[timeouts]\nlaunch = \"5s\"\n"
         "[components.fedavg]\ntype = \"workflow.fedavg\"\nrounds = 1\n"
         "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [\"true\"]\npipe = \"" +
         pipe_ref +
         "\"\n"
         "[components.launcher]\ntype = \"launcher.process\"\n"
         "[components.pipe]\ntype = \"pipe.socket\"\n" +
         pipe_options;
}

test::RunResult simulate_binary(const std::filesystem::path& job, const std::filesystem::path& ws,
                                std::vector<std::string> extra = {}) {
  std::vector<std::string> argv{EMBER_EXE, "simulate",    job.string(), "--clients",
                                "2",       "--workspace", ws.string()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return test::run_program(argv, 60);
}

TEST(SimulateExitCodes, AMissingJobOrSiteFileIsAnIoError) {
  test::TempDir dir;
  auto run = simulate_binary(dir.path() / "nope", dir.path() / "ws");
  EXPECT_EQ(run.exit_code, exit_code::io_error) << run.err;
  EXPECT_THAT(run.err, HasSubstr((dir.path() / "nope").string() + ": no such file"));
  auto site = test::run_program({EMBER_EXE, "--site", (dir.path() / "site.toml").string(), "plugins"});
  EXPECT_EQ(site.exit_code, exit_code::io_error) << site.err;
  EXPECT_THAT(site.err, HasSubstr("site.toml: no such file"));
}

TEST(SimulateExitCodes, AFifoADirectoryOrASymlinkLoopAsJobTomlIsNamed) {
  test::TempDir dir;
  auto fifo = dir.path() / "fifo" / "job.toml";
  std::filesystem::create_directories(fifo.parent_path());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto run = simulate_binary(fifo, dir.path() / "ws");
  EXPECT_EQ(run.exit_code, exit_code::io_error);
  EXPECT_THAT(run.err, HasSubstr(fifo.string() + ": is a FIFO, not a regular file"));
  auto folder = dir.path() / "folder";
  std::filesystem::create_directories(folder / "job.toml");
  run = simulate_binary(folder, dir.path() / "ws");
  EXPECT_EQ(run.exit_code, exit_code::io_error);
  EXPECT_THAT(run.err, HasSubstr("job.toml: is a directory, not a regular file"));
  auto loop = dir.path() / "loop.toml";
  std::filesystem::create_symlink(loop, loop);
  run = simulate_binary(loop, dir.path() / "ws");
  EXPECT_EQ(run.exit_code, exit_code::io_error);
  EXPECT_THAT(run.err, HasSubstr(loop.string() + ": cannot read: Too many levels of symbolic links"));
  // validate names them the same way.
  auto validated = cli({"validate", fifo.string()});
  EXPECT_EQ(validated.code, exit_code::io_error);
  EXPECT_THAT(validated.err, HasSubstr("is a FIFO"));
}

TEST(SimulateExitCodes, AReferenceToAMissingOrWrongKindComponentFailsBeforeTheJobRuns) {
  // Caught when the job file is read, at the key's file:line:column, before any site starts.
  test::TempDir dir;
  auto missing = simulate_binary(dir.write("missing/job.toml", simulate_job("nope")), dir.path() / "ws1");
  EXPECT_EQ(missing.exit_code, exit_code::invalid_config) << missing.out << missing.err;
  EXPECT_THAT(missing.err,
              HasSubstr("missing/job.toml:12:8: components.trainer.pipe: names component 'nope', "
                        "which the job does not have"));
  EXPECT_THAT(missing.out, Not(HasSubstr("round")));
  auto wrong = simulate_binary(dir.write("wrong/job.toml", simulate_job("launcher")), dir.path() / "ws2");
  EXPECT_EQ(wrong.exit_code, exit_code::invalid_config) << wrong.out << wrong.err;
  EXPECT_THAT(wrong.err,
              HasSubstr("wrong/job.toml:12:8: components.trainer.pipe: names component 'launcher', a "
                        "launcher (launcher.process), where a pipe is wanted"));
  EXPECT_THAT(wrong.out, Not(HasSubstr("round")));
}

TEST(SimulateExitCodes, AValueOnlyThePluginCanRefuseFailsTheJobBeforeItRuns) {
  // 'tcp:localhost:1' fits the address's declared shape, so the job file loads; the socket pipe's factory
  // refuses it (host names are not resolved) when the sites start: a config error, before the first round.
  test::TempDir dir;
  auto run = simulate_binary(dir.write("job.toml", simulate_job("pipe", "address = \"tcp:localhost:1\"\n")),
                             dir.path() / "ws");
  EXPECT_EQ(run.exit_code, exit_code::invalid_config) << run.out << run.err;
  EXPECT_THAT(run.err, HasSubstr("the job cannot run"));
  EXPECT_THAT(run.err, HasSubstr("option 'address': address 'tcp:localhost:1'"));
  EXPECT_THAT(run.out, Not(HasSubstr("round")));
}

TEST(SimulateExitCodes, ABadJobIdIsAUsageErrorThatShowsItEscaped) {
  test::TempDir dir;
  auto job = dir.write("job.toml", simulate_job());
  auto evil = simulate_binary(job, dir.path() / "ws", {"--job-id", "../../evil"});
  EXPECT_EQ(evil.exit_code, exit_code::usage);
  EXPECT_THAT(evil.err, HasSubstr("--job-id \"../../evil\": a job id is 1 to 128 of A-Z a-z 0-9 _ -"));
  auto newline = simulate_binary(job, dir.path() / "ws", {"--job-id", "a\nb"});
  EXPECT_EQ(newline.exit_code, exit_code::usage);
  EXPECT_THAT(newline.err, HasSubstr("--job-id \"a\\nb\""));
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "ws")) << "nothing is created for a refused id";
}

TEST(SimulateExitCodes, ASecondRunInALockedWorkspaceIsRefusedWithTheFirstOnesPid) {
  test::TempDir dir;
  auto ws = dir.path() / "ws";
  ASSERT_TRUE(make_private_dir(ws));
  auto held = WorkspaceLock::acquire(ws);
  ASSERT_TRUE(held) << held.error().message;
  auto run = simulate_binary(dir.write("job.toml", simulate_job()), ws);
  EXPECT_EQ(run.exit_code, exit_code::io_error) << run.out << run.err;
  EXPECT_THAT(run.err, HasSubstr("the workspace is in use by another run (ember pid " +
                                 std::to_string(::getpid()) + ")"));
}

TEST(EmberBinary, ListsBuildTreePluginsByDefault) {
  auto run = test::run_program({EMBER_EXE, "plugins", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto doc = json::parse(run.out);
  EXPECT_EQ(doc["search_paths"].back(), (test::build_root() / "plugins").string());
  EXPECT_EQ(doc["plugins"].size(), reference_plugin_count);
  auto version = test::run_program({EMBER_EXE, "version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_THAT(version.out, HasSubstr("abi " + std::to_string(abi_version)));
}

TEST(EmberBinary, EmberLogEnablesDebugPerCategory) {
  setenv("EMBER_LOG", "kernel=debug", 1);
  auto run = test::run_program({EMBER_EXE, "plugins", "--json"});
  unsetenv("EMBER_LOG");
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_THAT(run.err, HasSubstr("[kernel] loaded " + std::to_string(reference_plugin_count) + " of " +
                                 std::to_string(reference_plugin_count) + " plugin files"));
}

}  // namespace
}  // namespace ember::kernel
