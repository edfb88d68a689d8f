// Every CRC-32C path against the table and known answers. frame_test.cpp checks crc32c() where frames use it.
#include "wire/crc32c.hpp"

#include <ostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace ember::wire {

// Test names and failure messages print a path by name.
void PrintTo(Crc32cPath path, std::ostream* out) {
  *out << crc32c_path_name(path);
}

namespace {

using Bytes = std::vector<std::byte>;

Bytes random_bytes(std::size_t size, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes out(size);
  for (auto& b : out) {
    b = static_cast<std::byte>(rng());
  }
  return out;
}

std::span<const std::byte> text(std::string_view s) {
  return std::as_bytes(std::span<const char>(s));
}

// ---- each path, forced

class Crc32cPaths : public testing::TestWithParam<Crc32cPath> {
 protected:
  void SetUp() override {
    if (!crc32c_path_supported(GetParam())) {
      GTEST_SKIP() << "this CPU cannot run the " << crc32c_path_name(GetParam()) << " path";
    }
  }
  std::uint32_t crc(std::uint32_t seed, std::span<const std::byte> data) const {
    return crc32c_path_for_testing(GetParam(), seed, data);
  }
};

TEST_P(Crc32cPaths, KnownAnswers) {
  EXPECT_EQ(crc(0, {}), 0u);
  EXPECT_EQ(crc(0, text("123456789")), 0xE3069283u);
  EXPECT_EQ(crc(0, text("a")), 0xC1D04330u);
  // RFC 3720, B.4: 32 bytes of zeros, of ones, ascending and descending.
  Bytes zeros(32, std::byte{0});
  Bytes ones(32, std::byte{0xFF});
  Bytes up(32);
  Bytes down(32);
  for (std::size_t i = 0; i < 32; ++i) {
    up[i] = static_cast<std::byte>(i);
    down[i] = static_cast<std::byte>(31 - i);
  }
  EXPECT_EQ(crc(0, zeros), 0x8A9136AAu);
  EXPECT_EQ(crc(0, ones), 0x62A8AB43u);
  EXPECT_EQ(crc(0, up), 0x46DD794Eu);
  EXPECT_EQ(crc(0, down), 0x113FDB5Cu);
}

TEST_P(Crc32cPaths, AgreesWithTheTableAtEveryLengthAndOffset) {
  // The folding paths change shape at 16, 64 and 256 bytes: every length and every start modulo a cache
  // line up to 600 bytes, then every length to past a page at a few starts.
  const auto data = random_bytes(4100 + 64, 1);
  std::mt19937 seeds(2);
  auto check = [&](std::size_t offset, std::size_t len) {
    auto span = std::span<const std::byte>(data).subspan(offset, len);
    const std::uint32_t seed = seeds();
    ASSERT_EQ(crc(seed, span), crc32c_table_for_testing(seed, span))
        << "offset " << offset << " length " << len << " seed " << seed;
  };
  for (std::size_t len = 0; len <= 600; ++len) {
    for (std::size_t offset = 0; offset < 64; ++offset) {
      ASSERT_NO_FATAL_FAILURE(check(offset, len));
    }
  }
  for (std::size_t len = 0; len <= 4100; ++len) {
    for (std::size_t offset : {0, 1, 13, 63}) {
      ASSERT_NO_FATAL_FAILURE(check(offset, len));
    }
  }
}

TEST_P(Crc32cPaths, AgreesWithTheTableOnLargeInputs) {
  const auto data = random_bytes((3 << 20) + 7 + 5, 3);
  for (std::size_t len : {std::size_t{1} << 20, (std::size_t{1} << 20) + 13, (std::size_t{3} << 20) + 7}) {
    for (std::size_t offset : {0, 5}) {
      auto span = std::span<const std::byte>(data).subspan(offset, len);
      EXPECT_EQ(crc(0, span), crc32c_table_for_testing(0, span)) << "offset " << offset << " length " << len;
      EXPECT_EQ(crc(0xFFFFFFFFu, span), crc32c_table_for_testing(0xFFFFFFFFu, span)) << len;
    }
  }
  Bytes zeros(1 << 20, std::byte{0});
  EXPECT_EQ(crc(0, zeros), crc32c_table_for_testing(0, zeros));
}

TEST_P(Crc32cPaths, ChainsAcrossSplits) {
  const auto data = random_bytes(20'000, 4);
  auto span = std::span<const std::byte>(data);
  const auto whole = crc32c_table_for_testing(0, span);
  for (std::size_t split : {0, 1, 15, 16, 63, 64, 255, 256, 257, 4095, 12'288, 19'999, 20'000}) {
    EXPECT_EQ(crc(crc(0, span.first(split)), span.subspan(split)), whole) << split;
  }
}

TEST_P(Crc32cPaths, AgreesWithTheTableAroundTheThreeWayStripes) {
  // The three-stream path runs three 4 KiB stripes side by side from 12 KiB on and joins them: every length
  // around one, two and three rounds of stripes, at two starts and three seeds, and a sweep to 100 kB.
  const auto data = random_bytes(100'000 + 8, 10);
  std::vector<std::size_t> lengths;
  for (std::size_t round : {12'288, 24'576, 36'864}) {
    for (std::size_t len = round - 9; len <= round + 9; ++len) {
      lengths.push_back(len);
    }
  }
  for (std::size_t len = 0; len <= 100'000; len += 997) {
    lengths.push_back(len);
  }
  for (auto len : lengths) {
    for (std::size_t offset : {0, 3}) {
      auto span = std::span<const std::byte>(data).subspan(offset, len);
      for (std::uint32_t seed : {0u, 0xFFFFFFFFu, 0x9E3779B9u}) {
        ASSERT_EQ(crc(seed, span), crc32c_table_for_testing(seed, span))
            << "offset " << offset << " length " << len << " seed " << seed;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, Crc32cPaths,
                         testing::Values(Crc32cPath::table, Crc32cPath::crc32_3way, Crc32cPath::avx512),
                         [](const auto& param_info) {
                           return std::string(crc32c_path_name(param_info.param));
                         });

// ---- dispatch

TEST(Crc32cDispatch, TheChosenPathRunsHereAndCrc32cAgreesAroundItsThresholds) {
  EXPECT_TRUE(crc32c_path_supported(crc32c_path())) << crc32c_path_name(crc32c_path());
  EXPECT_TRUE(crc32c_path_supported(Crc32cPath::table));
  EXPECT_EQ(crc32c_hardware(), crc32c_path() != Crc32cPath::table);
  const auto data = random_bytes(40'000, 5);
  std::vector<std::size_t> lengths;
  for (std::size_t len = 0; len <= 1100; ++len) {
    lengths.push_back(len);
  }
  for (std::size_t len = 12'280; len <= 12'300; ++len) {
    lengths.push_back(len);
  }
  lengths.push_back(36'864 + 99);
  for (auto len : lengths) {
    auto span = std::span<const std::byte>(data).subspan(3, len);
    ASSERT_EQ(crc32c(0x5EED, span), crc32c_table_for_testing(0x5EED, span)) << "length " << len;
  }
}

TEST(Crc32cDispatch, UnsupportedPathsFallBackToTheTable) {
  const auto data = random_bytes(1000, 6);
  for (auto path : {Crc32cPath::crc32_3way, Crc32cPath::avx512}) {
    if (!crc32c_path_supported(path)) {
      EXPECT_EQ(crc32c_path_for_testing(path, 9, data), crc32c_table_for_testing(9, data))
          << crc32c_path_name(path);
    }
  }
}

}  // namespace
}  // namespace ember::wire
