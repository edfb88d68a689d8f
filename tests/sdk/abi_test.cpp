// Pins what crosses the plugin boundary: struct sizes and field offsets, every enumerator's value, and the
// layout of the serialized info EMBER_PLUGIN writes. A failure here means an ABI change: bump
// ember::abi_version (see the rule in abi.hpp) and update the pinned values in the same commit.

#include <cstddef>
#include <string_view>

#include <gtest/gtest.h>

#include <ember/launcher.hpp>
#include <ember/logger.hpp>
#include <ember/pipe.hpp>
#include <ember/plugin.hpp>
#include <ember/task.hpp>
#include <ember/tensor.hpp>

namespace ember {
namespace {

template <class E>
constexpr std::uint32_t v(E e) {
  return static_cast<std::uint32_t>(e);
}

TEST(Abi, VersionIsSix) {
  EXPECT_EQ(abi_version, 6u);
}

TEST(Abi, DescriptorSizesAndOffsets) {
  EXPECT_EQ(sizeof(OptionSpec), 64u);
  EXPECT_EQ(sizeof(ComponentDescriptor), 48u);
  EXPECT_EQ(sizeof(PluginDescriptor), 80u);
  EXPECT_EQ(sizeof(PluginInfoHeader), 88u);
  EXPECT_EQ(offsetof(PluginInfoHeader, abi_version), 8u);
  EXPECT_EQ(offsetof(PluginInfoHeader, descriptor_size), 12u);
  EXPECT_EQ(offsetof(PluginInfoHeader, build_id), 16u);
  EXPECT_EQ(offsetof(PluginInfoHeader, blob_size), 80u);
  EXPECT_EQ(offsetof(PluginDescriptor, abi_version), 0u);
  EXPECT_EQ(offsetof(PluginDescriptor, descriptor_size), 4u);
  EXPECT_EQ(offsetof(PluginDescriptor, info), 64u);
  EXPECT_EQ(offsetof(OptionSpec, choices), 32u);
  EXPECT_EQ(offsetof(OptionSpec, refers_to), 56u);
  EXPECT_EQ(std::string_view(plugin_info_magic, sizeof plugin_info_magic), "EMBERPLG");
}

TEST(Abi, EnumeratorValues) {
  EXPECT_EQ(v(Kind::pipe), 1u);
  EXPECT_EQ(v(Kind::launcher), 2u);
  EXPECT_EQ(v(Kind::applet), 3u);
  EXPECT_EQ(v(Kind::converter), 4u);
  EXPECT_EQ(v(Kind::workflow), 5u);
  EXPECT_EQ(v(Kind::executor), 6u);
  EXPECT_EQ(v(OptionType::string), 1u);
  EXPECT_EQ(v(OptionType::integer), 2u);
  EXPECT_EQ(v(OptionType::number), 3u);
  EXPECT_EQ(v(OptionType::boolean), 4u);
  EXPECT_EQ(v(OptionType::duration), 5u);
  EXPECT_EQ(v(OptionType::string_list), 6u);
  const Errc codes[] = {Errc::not_found,
                        Errc::open_failed,
                        Errc::not_a_plugin,
                        Errc::abi_mismatch,
                        Errc::invalid_descriptor,
                        Errc::build_mismatch,
                        Errc::duplicate_name,
                        Errc::invalid_option,
                        Errc::create_failed,
                        Errc::invalid_config,
                        Errc::io_error,
                        Errc::timeout,
                        Errc::closed,
                        Errc::cancelled,
                        Errc::invalid_argument,
                        Errc::unsupported,
                        Errc::malformed,
                        Errc::peer_gone,
                        Errc::rejected,
                        Errc::internal};
  for (std::uint32_t i = 0; i < std::size(codes); ++i) {
    EXPECT_EQ(v(codes[i]), i) << to_string(codes[i]);
  }
  EXPECT_EQ(v(RunState::not_started), 0u);
  EXPECT_EQ(v(RunState::failed), 4u);
  EXPECT_EQ(v(ExitStatus::How::signaled), 1u);
  EXPECT_EQ(v(PipeSide::trainer), 1u);
  EXPECT_EQ(v(ParamsType::diff), 1u);
  EXPECT_EQ(v(DType::BOOL), 0u);
  EXPECT_EQ(v(DType::F64), 12u);
  EXPECT_EQ(v(LogLevel::off), 6u);
}

// The serialized info of a one-option component, byte for byte: strings are a presence byte, a u32 length
// and the bytes; counts, kinds and types are little-endian u32.
constexpr OptionSpec pinned_options[] = {
    {.name = "n", .type = OptionType::integer, .default_value = "1", .doc = "", .minimum = "0"},
};
TEST(Abi, InfoBlobLayout) {
  constexpr ComponentDescriptor components[] = {{Kind::pipe, "p", nullptr, pinned_options, 1, nullptr}};
  constexpr auto size = detail::plugin_info_size("x", "1", nullptr, "", components);
  constexpr auto info = detail::make_plugin_info<size>("x", "1", nullptr, "", components);
  const unsigned char expected[] = {
      1, 1, 0, 0, 0, 'x',  // name
      1, 1, 0, 0, 0, '1',  // version
      0, 0, 0, 0, 0,       // description: absent
      1, 0, 0, 0, 0,       // license: ""
      1, 0, 0, 0,          // one component
      1, 0, 0, 0,          // kind pipe
      1, 1, 0, 0, 0, 'p',  // its name
      0, 0, 0, 0, 0,       // no description
      1, 0, 0, 0,          // one option
      1, 1, 0, 0, 0, 'n',  // name
      2, 0, 0, 0,          // integer
      1, 1, 0, 0, 0, '1',  // default
      1, 0, 0, 0, 0,       // doc ""
      0, 0, 0, 0, 0,       // no choices
      1, 1, 0, 0, 0, '0',  // minimum
      0, 0, 0, 0, 0,       // no maximum
      0, 0, 0, 0,          // refers to no kind
  };
  ASSERT_EQ(size, sizeof expected);
  for (std::size_t i = 0; i < size; ++i) {
    EXPECT_EQ(static_cast<unsigned char>(info.blob[i]), expected[i]) << "byte " << i;
  }
  EXPECT_EQ(info.header.abi_version, abi_version);
  EXPECT_EQ(info.header.descriptor_size, sizeof(PluginInfoHeader));
  EXPECT_EQ(info.header.blob_size, size);
  EXPECT_EQ(std::string_view(info.header.build_id), EMBER_BUILD_ID);
}

}  // namespace
}  // namespace ember
