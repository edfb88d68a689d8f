#include "registry.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/applet.hpp>
#include <ember/pipe.hpp>

#include "support.hpp"

EMBER_DECLARE_STATIC_PLUGIN(memory_pipe);

namespace ember::kernel {
namespace {

using ::testing::HasSubstr;

TEST(Registry, StaticPluginsRegisterEveryComponentType) {
  auto kernel = test::static_kernel();
  EXPECT_EQ(kernel->registry().types(),
            (std::vector<std::string>{"applet.echo", "converter.identity", "launcher.fake", "pipe.memory"}));
  EXPECT_EQ(kernel->registry().provider("pipe.memory")->name, "memory-pipe");
  EXPECT_EQ(kernel->registry().find("pipe.nothing"), nullptr);
}

TEST(Registry, RefusesADuplicatePluginWhole) {
  auto kernel = test::static_kernel();
  auto again = kernel->add_static(ember_plugin_descriptor_memory_pipe(), "<again>");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, Errc::duplicate_name);
  EXPECT_THAT(again.error().message, HasSubstr("duplicate plugin name 'memory-pipe'"));
  EXPECT_EQ(kernel->registry().plugins().size(), 4u);
}

TEST(Registry, ResolveOptionsFillsDefaultsAndRejectsUnknownOrMistyped) {
  auto kernel = test::static_kernel();
  const auto* pipe = kernel->registry().find("pipe.memory");
  Options given;
  given.set("capacity", std::int64_t{3});
  auto resolved = kernel->registry().resolve_options(*pipe, given, kernel->registry().substitutions());
  ASSERT_TRUE(resolved);
  EXPECT_EQ(resolved->integer("capacity"), 3);
  EXPECT_EQ(resolved->integer("max_frame_bytes"), 67108864);

  Options unknown;
  unknown.set("colour", std::string("red"));
  auto bad = kernel->registry().resolve_options(*pipe, unknown, kernel->registry().substitutions());
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::invalid_option);
  EXPECT_THAT(bad.error().message, HasSubstr("unknown option 'colour'"));

  Options mistyped;
  mistyped.set("capacity", std::string("3"));
  EXPECT_THAT(
      kernel->registry().resolve_options(*pipe, mistyped, kernel->registry().substitutions()).error().message,
      HasSubstr("option 'capacity' must be of type integer"));
}

TEST(Registry, CreateAsChecksTheInterface) {
  auto kernel = test::static_kernel();
  auto pipe = kernel->registry().create_as<Pipe>("pipe.memory", Options{}, "p1");
  ASSERT_TRUE(pipe) << pipe.error().message;
  EXPECT_EQ((*pipe)->address(), "memory:p1");
  auto wrong = kernel->registry().create_as<Applet>("pipe.memory", Options{});
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code, Errc::invalid_argument);
  auto missing = kernel->registry().create("pipe.nothing", Options{});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::not_found);
}

TEST(Registry, AValueOutsideTheDeclaredRangeIsAnInvalidOptionNamingIt) {
  auto kernel = test::static_kernel();
  Options options;
  options.set("capacity", std::int64_t{0});
  auto made = kernel->registry().create("pipe.memory", options);
  ASSERT_FALSE(made);
  EXPECT_EQ(made.error().code, Errc::invalid_option);
  EXPECT_THAT(made.error().message, HasSubstr("pipe.memory: option 'capacity': 0 is below the minimum 1"));
}

TEST(Registry, StaticPluginsAreLoadedAndTheirSectionAgrees) {
  auto kernel = test::static_kernel();
  for (const auto& plugin : kernel->registry().plugins()) {
    EXPECT_TRUE(plugin.loaded) << plugin.name;
    EXPECT_FALSE(plugin.library) << plugin.name;
  }
  const auto* memory = kernel->registry().find("pipe.memory");
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->find_option("capacity")->maximum_text, "65536");
}

}  // namespace
}  // namespace ember::kernel
