#pragma once
// Deterministic test payloads of any size, generated on the fly (never held whole), and a streaming
// digest for checking them on the other side.

#include <cstring>

#include "session/session.hpp"
#include "wire/crc32c.hpp"

namespace ember::test {

/// Byte i of the pattern stream `seed`: 8-byte words from a splitmix64 of the word index.
inline std::uint64_t pattern_word(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class PatternSource final : public session::PayloadSource {
 public:
  PatternSource(std::uint64_t size, std::uint64_t seed) : size_(size), seed_(seed) {}
  std::uint64_t size() const override { return size_; }
  Result<void> read(std::uint64_t offset, std::span<std::byte> out) const override {
    std::size_t i = 0;
    while (i < out.size()) {
      std::uint64_t pos = offset + i;
      std::uint64_t word = pattern_word(seed_, pos / 8);
      std::size_t skip = pos % 8;
      std::size_t n = std::min<std::size_t>(8 - skip, out.size() - i);
      std::memcpy(out.data() + i, reinterpret_cast<const std::byte*>(&word) + skip, n);
      i += n;
    }
    return ok();
  }

 private:
  std::uint64_t size_;
  std::uint64_t seed_;
};

/// CRC-32C of the first `size` bytes of pattern `seed`.
inline std::uint32_t pattern_crc(std::uint64_t size, std::uint64_t seed) {
  PatternSource source(size, seed);
  std::vector<std::byte> buffer(1 << 20);
  std::uint32_t crc = 0;
  for (std::uint64_t offset = 0; offset < size; offset += buffer.size()) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), size - offset));
    (void)source.read(offset, std::span(buffer).first(n));
    crc = wire::crc32c(crc, std::span<const std::byte>(buffer).first(n));
  }
  return crc;
}

/// A sink that keeps only a running CRC-32C and a byte count.
class DigestSink final : public session::PayloadSink {
 public:
  explicit DigestSink(std::function<void(std::uint64_t)> on_bytes = {}) : on_bytes_(std::move(on_bytes)) {}
  Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) override {
    if (offset != count_) {
      return fail(Errc::internal, "out-of-order write at " + std::to_string(offset));
    }
    crc_ = wire::crc32c(crc_, bytes);
    count_ += bytes.size();
    if (on_bytes_) {
      on_bytes_(count_);
    }
    return ok();
  }
  void reset() override {
    crc_ = 0;
    count_ = 0;
  }
  Result<void> finish() override { return ok(); }
  std::uint32_t crc() const { return crc_; }
  std::uint64_t count() const { return count_; }

 private:
  std::function<void(std::uint64_t)> on_bytes_;
  std::uint32_t crc_ = 0;
  std::uint64_t count_ = 0;
};

/// Hands the bytes on to a sink the test owns (the session destroys the sinks it is given).
class ForwardSink final : public session::PayloadSink {
 public:
  explicit ForwardSink(session::PayloadSink& target) : target_(target) {}
  Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) override {
    return target_.write(offset, bytes);
  }
  void reset() override { target_.reset(); }
  Result<void> finish() override { return target_.finish(); }

 private:
  session::PayloadSink& target_;
};

}  // namespace ember::test
