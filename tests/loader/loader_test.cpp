// Real dlopen of the reference plugins and of the fixtures broken on purpose: each fixture maps to
// exactly its error, naming the file and the cause.

#include "plugin_loader.hpp"

#include <algorithm>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/applet.hpp>
#include <ember/pipe.hpp>

#include "support.hpp"

namespace ember::kernel {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path fixture(const std::string& name) {
  return fs::path(EMBER_FIXTURE_DIR) / ("fixture-" + name + ".so");
}

struct FixtureCase {
  std::string name;
  Errc code;
  std::string cause;
};

class BrokenFixture : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(BrokenFixture, IsRefusedWithItsOwnError) {
  const auto& c = GetParam();
  auto file = fixture(c.name);
  auto loaded = load_plugin(file);
  ASSERT_FALSE(loaded) << c.name << " loaded";
  EXPECT_EQ(loaded.error().code, c.code) << loaded.error().message;
  EXPECT_THAT(loaded.error().message, HasSubstr(file.string()));
  EXPECT_THAT(loaded.error().message, HasSubstr(c.cause));
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, BrokenFixture,
    ::testing::Values(FixtureCase{"wrong-abi", Errc::abi_mismatch,
                                  "ABI version mismatch: plugin has " + std::to_string(abi_version + 41) +
                                      ", kernel has " + std::to_string(abi_version)},
                      FixtureCase{"wrong-size", Errc::invalid_descriptor,
                                  "descriptor size is " + std::to_string(sizeof(PluginDescriptor) - 8) +
                                      " bytes, expected " + std::to_string(sizeof(PluginDescriptor))},
                      FixtureCase{
                          "bad-build-id", Errc::build_mismatch,
                          "plugin was built as 'msvc-19;msvcprt;sdk-0.0.0', kernel as '" EMBER_BUILD_ID "'"},
                      FixtureCase{"bad-default", Errc::invalid_descriptor,
                                  "option 'applet.fixture_bad_default.timeout': invalid duration \"soon\""},
                      FixtureCase{"no-entry", Errc::not_a_plugin, "no 'ember_plugin' entry symbol"},
                      FixtureCase{"undefined-symbol", Errc::open_failed,
                                  "undefined symbol: ember_fixture_symbol_that_does_not_exist"},
                      FixtureCase{"not-elf", Errc::open_failed, "cannot open: "}),
    [](const auto& param_info) {
      std::string n = param_info.param.name;
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

TEST(Loader, MissingFileIsNotFound) {
  auto loaded = load_plugin("/nonexistent/ember-plugin.so");
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code, Errc::not_found);
  EXPECT_EQ(loaded.error().message, "/nonexistent/ember-plugin.so: plugin file not found");
}

TEST(Loader, DuplicatesAreRefusedNamingTheFirstProvider) {
  auto kernel = test::kernel_with_paths({});
  ASSERT_TRUE(kernel->load_file(fixture("dup-a")));
  auto b = kernel->load_file(fixture("dup-b"));
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::duplicate_name);
  EXPECT_THAT(b.error().message, HasSubstr("duplicate component 'applet.fixture_dup': already provided by " +
                                           fixture("dup-a").string()));
  auto c = kernel->load_file(fixture("dup-c"));
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, Errc::duplicate_name);
  EXPECT_THAT(c.error().message, HasSubstr("duplicate plugin name 'fixture-dup': already provided by " +
                                           fixture("dup-a").string()));
  // The refused plugins contributed nothing.
  EXPECT_FALSE(kernel->registry().contains("applet.fixture_dup_c"));
}

TEST(Loader, ThrowingFactoryFailsCreateWithoutCrossingTheBoundary) {
  auto kernel = test::kernel_with_paths({});
  ASSERT_TRUE(kernel->load_file(fixture("throwing-factory")));
  auto made = kernel->registry().create("applet.fixture_throws", Options{});
  ASSERT_FALSE(made);
  EXPECT_EQ(made.error().code, Errc::create_failed);
  EXPECT_THAT(made.error().message, HasSubstr(fixture("throwing-factory").string()));
  EXPECT_THAT(made.error().message, HasSubstr("fixture constructor failed on purpose"));
}

TEST(Loader, FixtureFolderScanRefusesEachBrokenFileInSortedOrder) {
  auto kernel = test::kernel_with_paths({EMBER_FIXTURE_DIR});
  std::vector<std::string> refused;
  for (const auto& r : kernel->refusals()) {
    refused.push_back(r.path.filename().string() + "=" + std::string(to_string(r.error.code)));
  }
  EXPECT_EQ(refused, (std::vector<std::string>{
                         "fixture-bad-build-id.so=build_mismatch",
                         "fixture-bad-default.so=invalid_descriptor", "fixture-dup-b.so=duplicate_name",
                         "fixture-dup-c.so=duplicate_name", "fixture-no-entry.so=not_a_plugin",
                         "fixture-not-elf.so=open_failed", "fixture-undefined-symbol.so=open_failed",
                         "fixture-wrong-abi.so=abi_mismatch", "fixture-wrong-size.so=invalid_descriptor"}));
  std::vector<std::string> accepted;
  for (const auto& p : kernel->registry().plugins()) {
    accepted.push_back(p.name);
  }
  EXPECT_EQ(accepted, (std::vector<std::string>{"fixture-dup", "fixture-throwing-factory"}));
}

TEST(Loader, ReferencePluginsLoadFromTheBuildTree) {
  auto kernel = test::kernel_with_paths({test::build_root() / "plugins"});
  EXPECT_TRUE(kernel->refusals().empty()) << kernel->refusals().front().error.message;
  std::vector<std::string> expected{"applet.echo",   "converter.identity", "executor.external-trainer",
                                    "launcher.fake", "launcher.process",   "pipe.file",
                                    "pipe.memory",   "pipe.socket",        "workflow.fedavg"};
#ifdef EMBER_TEST_HAVE_TORCH
  expected.push_back("converter.torch");
  std::sort(expected.begin(), expected.end());
#endif
  EXPECT_EQ(kernel->registry().types(), expected);
  for (const auto& plugin : kernel->registry().plugins()) {
    EXPECT_TRUE(plugin.library) << plugin.name;
    EXPECT_EQ(plugin.path.extension(), ".so");
  }
}

TEST(Loader, InterfacesCastAcrossTheLibraryBoundary) {
  auto kernel = test::kernel_with_paths({test::build_root() / "plugins"});
  auto pipe = kernel->registry().create_as<Pipe>("pipe.memory", Options{}, "x");
  ASSERT_TRUE(pipe) << pipe.error().message;
  auto job = (*pipe)->open(PipeSide::job, std::chrono::milliseconds(100));
  auto trainer = (*pipe)->open(PipeSide::trainer, std::chrono::milliseconds(100));
  ASSERT_TRUE(job && trainer);
  const std::byte frame[] = {std::byte{1}, std::byte{2}};
  ASSERT_TRUE((*job)->send(frame, std::chrono::milliseconds(100)));
  auto got = (*trainer)->receive(std::chrono::milliseconds(100));
  ASSERT_TRUE(got && *got);
  EXPECT_EQ(**got, std::vector<std::byte>(std::begin(frame), std::end(frame)));
}

TEST(Loader, ALibraryStaysLoadedWhileItsComponentLives) {
  std::shared_ptr<Applet> applet;
  std::weak_ptr<void> library;
  {
    auto kernel = test::kernel_with_paths({test::build_root() / "plugins"});
    library = kernel->registry().provider("applet.echo")->library;
    auto made = kernel->registry().create_as<Applet>("applet.echo", Options{});
    ASSERT_TRUE(made) << made.error().message;
    applet = *made;
  }
  // The kernel is gone; the component's code must still be mapped.
  EXPECT_FALSE(library.expired());
  ASSERT_TRUE(applet->start());
  const std::byte hi[] = {std::byte{'h'}, std::byte{'i'}};
  auto reply = applet->relay(hi);
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->size(), 2u);
  applet.reset();
  EXPECT_TRUE(library.expired());
}

TEST(Discovery, IsSortedDeduplicatedAndSkipsMissingRoots) {
  test::TempDir dir;
  dir.write("b/z.so", "");
  dir.write("b/a.so", "");
  dir.write("a/m.so", "");
  dir.write("a/readme.txt", "");
  dir.write("a/x.so.p/hidden.so", "");
  std::vector<Refusal> refusals;
  auto found = discover_plugins({dir.path() / "b", dir.path() / "missing", dir.path(), dir.path() / "b/a.so"},
                                refusals);
  std::vector<std::string> names;
  for (const auto& f : found) {
    names.push_back(f.lexically_relative(dir.path()).string());
  }
  // Roots in the order given, files sorted within a root, each file once.
  EXPECT_EQ(names, (std::vector<std::string>{"b/a.so", "b/z.so", "a/m.so"}));
  EXPECT_TRUE(refusals.empty());
}

}  // namespace
}  // namespace ember::kernel
