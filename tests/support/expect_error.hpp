#pragma once
// Assertions on ember::Result errors, and byte helpers, shared by the wire-format tests.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include <ember/result.hpp>

namespace ember::test {

/// Expects an error of `code` whose message contains `what`.
template <class T>
void expect_error(const Result<T>& result, Errc code, std::string_view what) {
  ASSERT_FALSE(result) << "accepted; expected: " << what;
  EXPECT_EQ(result.error().code, code) << result.error().message;
  EXPECT_NE(result.error().message.find(what), std::string::npos)
      << "message: " << result.error().message << "\nexpected to contain: " << what;
}

/// Expects Errc::malformed with `what` in the message.
template <class T>
void expect_malformed(const Result<T>& result, std::string_view what) {
  expect_error(result, Errc::malformed, what);
}

/// Expects Errc::invalid_argument with `what` in the message.
template <class T>
void expect_invalid(const Result<T>& result, std::string_view what) {
  expect_error(result, Errc::invalid_argument, what);
}

/// The bytes of `text`.
inline std::vector<std::byte> to_bytes(std::string_view text) {
  std::vector<std::byte> out(text.size());
  if (!text.empty()) {
    std::memcpy(out.data(), text.data(), text.size());
  }
  return out;
}

/// `size` pseudo-random bytes, the same for the same `seed`.
inline std::vector<std::byte> pattern(std::size_t size, unsigned seed = 1) {
  std::vector<std::byte> out(size);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : out) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<std::byte>(x >> 24);
  }
  return out;
}

}  // namespace ember::test
