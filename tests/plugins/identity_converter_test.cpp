#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/converter.hpp>

#include "support.hpp"

namespace ember {
namespace {

TEST(IdentityConverter, SharesBytesWithoutCopyingAndRoundTrips) {
  auto kernel = test::static_kernel();
  auto converter = std::move(*kernel->registry().create_as<Converter>("converter.identity", Options{}));
  EXPECT_EQ(converter->format(), "wire");
  auto storage = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4, 5, 6});
  WireTensor wire{"fc.weight", DType::F32, {2, 3}, std::as_bytes(std::span(*storage)), storage};
  auto native = converter->to_native(wire);
  ASSERT_TRUE(native) << native.error().message;
  storage.reset();  // the native tensor keeps the buffer alive
  auto back = converter->to_wire(*native, "renamed");
  ASSERT_TRUE(back);
  EXPECT_EQ(back->name, "renamed");
  EXPECT_EQ(back->bytes.data(), wire.bytes.data());
  EXPECT_EQ(back->shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(reinterpret_cast<const float*>(back->bytes.data())[5], 6.0f);
}

TEST(IdentityConverter, RejectsInconsistentTensorsAndForeignFormats) {
  auto kernel = test::static_kernel();
  auto converter = std::move(*kernel->registry().create_as<Converter>("converter.identity", Options{}));
  std::vector<std::byte> five(5);
  WireTensor bad{"b", DType::F32, {2}, five, nullptr};
  auto refused = converter->to_native(bad);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, ::testing::HasSubstr("tensor 'b' has 5 bytes"));
  NativeTensor foreign{"torch", std::make_shared<int>(1)};
  EXPECT_EQ(converter->to_wire(foreign, "x").error().code, Errc::invalid_argument);
}

TEST(WireTensor, ElementCountGuardsAgainstOverflowAndNegativeDims) {
  WireTensor t;
  t.shape = {-1, 2};
  EXPECT_FALSE(t.element_count());
  t.shape = {INT64_MAX, INT64_MAX, 4};
  EXPECT_FALSE(t.element_count());
  t.shape = {};
  EXPECT_EQ(*t.element_count(), 1u);
  EXPECT_FALSE(t.consistent());
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_FALSE(parse_dtype("F8"));
}

}  // namespace
}  // namespace ember
