// The gate and real dlopen of the reference plugins and of the fixtures broken on purpose: each fixture
// maps to exactly its error, naming the file and the cause; a refused file is never loaded, and reading a
// plugin's section loads nothing.

#include "plugin_loader.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <fstream>
#include <iterator>

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

// Whether the dynamic loader has `file` mapped in this process (RTLD_NOLOAD maps nothing new).
bool is_mapped(const fs::path& file) {
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle != nullptr) {
    dlclose(handle);
  }
  return handle != nullptr;
}

TEST_P(BrokenFixture, IsRefusedWithItsOwnError) {
  const auto& c = GetParam();
  auto file = fixture(c.name);
  auto loaded = load_plugin(file);
  ASSERT_FALSE(loaded) << c.name << " loaded";
  EXPECT_EQ(loaded.error().code, c.code) << loaded.error().message;
  EXPECT_THAT(loaded.error().message, HasSubstr(file.string()));
  EXPECT_THAT(loaded.error().message, HasSubstr(c.cause));
  EXPECT_FALSE(is_mapped(file)) << c.name << " was loaded to be refused";
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, BrokenFixture,
    ::testing::Values(FixtureCase{"wrong-abi", Errc::abi_mismatch,
                                  "ABI version mismatch: plugin has " + std::to_string(abi_version + 41) +
                                      ", kernel has " + std::to_string(abi_version)},
                      FixtureCase{"wrong-size", Errc::invalid_descriptor,
                                  "descriptor size is " + std::to_string(sizeof(PluginInfoHeader) - 8) +
                                      " bytes, expected " + std::to_string(sizeof(PluginInfoHeader))},
                      FixtureCase{
                          "bad-build-id", Errc::build_mismatch,
                          "plugin was built as 'msvc-19;msvcprt;sdk-0.0.0', kernel as '" EMBER_BUILD_ID "'"},
                      FixtureCase{"bad-default", Errc::invalid_descriptor,
                                  "option 'applet.fixture_bad_default.timeout': invalid duration \"soon\""},
                      FixtureCase{"no-entry", Errc::not_a_plugin, "no '.ember_plugin' section"},
                      FixtureCase{"not-elf", Errc::open_failed, "cannot open: not an ELF file"}),
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

TEST(Loader, AnAbortingConstructorNeverRunsBeforeTheAbiCheck) {
  // fixture-wrong-abi's static constructor calls abort(): this process living on is the proof.
  auto kernel = test::kernel_with_paths({});
  auto loaded = kernel->load_file(fixture("wrong-abi"));
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code, Errc::abi_mismatch);
  EXPECT_FALSE(is_mapped(fixture("wrong-abi")));
}

TEST(Loader, AnUnloadableLibraryIsListedAndFailsWhenFirstCreated) {
  auto kernel = test::kernel_with_paths({});
  ASSERT_TRUE(kernel->load_file(fixture("undefined-symbol")));
  EXPECT_TRUE(kernel->registry().contains("applet.fixture_undefined"));
  EXPECT_FALSE(is_mapped(fixture("undefined-symbol")));
  for (int attempt = 0; attempt < 2; ++attempt) {  // the failure is kept, not retried
    auto made = kernel->registry().create("applet.fixture_undefined", Options{});
    ASSERT_FALSE(made);
    EXPECT_EQ(made.error().code, Errc::open_failed);
    EXPECT_THAT(made.error().message, HasSubstr(fixture("undefined-symbol").string()));
    EXPECT_THAT(made.error().message,
                HasSubstr("undefined symbol: ember_fixture_symbol_that_does_not_exist"));
  }
}

TEST(Loader, AnEntryThatContradictsItsSectionIsAnInvalidDescriptor) {
  auto kernel = test::kernel_with_paths({});
  ASSERT_TRUE(kernel->load_file(fixture("inconsistent")));
  auto made = kernel->registry().create("applet.fixture_inconsistent", Options{});
  ASSERT_FALSE(made);
  EXPECT_EQ(made.error().code, Errc::invalid_descriptor);
  EXPECT_THAT(made.error().message, HasSubstr("disagrees with its '.ember_plugin' section"));
  EXPECT_THAT(made.error().message, HasSubstr("applet.fixture_inconsistent.level"));
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
  EXPECT_EQ(refused,
            (std::vector<std::string>{
                "fixture-bad-build-id.so=build_mismatch", "fixture-bad-default.so=invalid_descriptor",
                "fixture-dup-b.so=duplicate_name", "fixture-dup-c.so=duplicate_name",
                "fixture-no-entry.so=not_a_plugin", "fixture-not-elf.so=open_failed",
                "fixture-wrong-abi.so=abi_mismatch", "fixture-wrong-size.so=invalid_descriptor"}));
  std::vector<std::string> accepted;
  for (const auto& p : kernel->registry().plugins()) {
    accepted.push_back(p.name);
    EXPECT_FALSE(is_mapped(p.path)) << p.name;
  }
  EXPECT_EQ(accepted, (std::vector<std::string>{"fixture-dup", "fixture-inconsistent",
                                                "fixture-throwing-factory", "fixture-undefined-symbol"}));
}

TEST(Loader, ReferencePluginsLoadFromTheBuildTree) {
  auto kernel = test::kernel_with_paths({test::build_root() / "plugins"});
  EXPECT_TRUE(kernel->refusals().empty()) << kernel->refusals().front().error.message;
  std::vector<std::string> expected{"applet.echo",     "converter.identity", "executor.external-trainer",
                                    "launcher.docker", "launcher.fake",      "launcher.process",
                                    "pipe.file",       "pipe.memory",        "pipe.socket",
                                    "workflow.fedavg"};
#ifdef EMBER_TEST_HAVE_TORCH
  expected.push_back("converter.torch");
#endif
#ifdef EMBER_TEST_HAVE_CELL
  expected.push_back("pipe.cell");
#endif
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(kernel->registry().types(), expected);
  // Listing read their sections only: no plugin, and so none of their dependencies (LibTorch), is loaded.
  for (const auto& plugin : kernel->registry().plugins()) {
    EXPECT_FALSE(plugin.library) << plugin.name;
    EXPECT_FALSE(plugin.loaded) << plugin.name;
    EXPECT_FALSE(is_mapped(plugin.path)) << plugin.name;
    EXPECT_EQ(plugin.path.extension(), ".so");
  }
  // The first creation loads the one plugin it needs.
  ASSERT_TRUE(kernel->registry().create("pipe.memory", Options{}, "p"));
  EXPECT_TRUE(kernel->registry().provider("pipe.memory")->loaded);
  EXPECT_FALSE(kernel->registry().provider("applet.echo")->loaded);
}

// Every byte of a real plugin's section flipped, and the file cut at many lengths: each gives a result
// (most an error naming the file), never a crash or a load.
TEST(Loader, HostileCopiesOfAPluginGiveErrorsNotCrashes) {
  std::ifstream in(fixture("dup-a"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto magic = bytes.find(std::string(plugin_info_magic, sizeof plugin_info_magic));
  ASSERT_NE(magic, std::string::npos);
  test::TempDir dir;
  std::size_t refused = 0;
  auto copy_loads = [&](const std::string& content) {
    auto file = dir.write("hostile.so", content);
    auto loaded = load_plugin(file);
    if (!loaded) {
      ++refused;
      EXPECT_THAT(loaded.error().message, HasSubstr(file.string()));
    }
    EXPECT_FALSE(is_mapped(file));
  };
  for (std::size_t i = magic; i < std::min(bytes.size(), magic + 400); ++i) {
    std::string flipped = bytes;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x5A);
    copy_loads(flipped);
  }
  for (std::size_t length = 0; length < bytes.size(); length += 1 + length / 8) {
    copy_loads(bytes.substr(0, length));
  }
  EXPECT_GT(refused, 100u);
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
    EXPECT_FALSE(kernel->registry().provider("applet.echo")->library);  // loaded by the first create
    auto made = kernel->registry().create_as<Applet>("applet.echo", Options{});
    ASSERT_TRUE(made) << made.error().message;
    library = kernel->registry().provider("applet.echo")->library;
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

TEST(Discovery, StaysOutOfForeignTrees) {
  test::TempDir dir;
  dir.write("k/n/ok.so", "");
  dir.write("1/2/3/deep.so", "");      // depth 3: found
  dir.write("1/2/3/4/deeper.so", "");  // below the depth limit: not entered
  dir.write(".git/hidden.so", "");
  std::vector<Refusal> refusals;
  auto found = discover_plugins({dir.path()}, refusals);
  std::vector<std::string> names;
  for (const auto& f : found) {
    names.push_back(f.lexically_relative(dir.path()).string());
  }
  EXPECT_EQ(names, (std::vector<std::string>{"1/2/3/deep.so", "k/n/ok.so"}));
  EXPECT_TRUE(refusals.empty());
}

TEST(Discovery, ABigTreeIsCutWithARefusalSayingWhy) {
  test::TempDir dir;
  for (std::size_t i = 0; i <= max_scan_entries; ++i) {
    std::ofstream(dir.path() / ("f" + std::to_string(i)));
  }
  std::vector<Refusal> refusals;
  discover_plugins({dir.path()}, refusals);
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_EQ(refusals[0].path, dir.path());
  EXPECT_THAT(refusals[0].error.message, HasSubstr(dir.path().string() + ": plugin scan cut after " +
                                                   std::to_string(max_scan_entries) + " entries"));
}

}  // namespace
}  // namespace ember::kernel
