#include "wire/crc32c.hpp"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace ember::wire {

namespace {

constexpr std::uint32_t poly = 0x82F63B78u;  // reflected Castagnoli polynomial

// Slicing-by-8 tables, built at compile time.
constexpr std::array<std::array<std::uint32_t, 256>, 8> make_tables() {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) {
      c = (c & 1u) != 0 ? (c >> 1) ^ poly : c >> 1;
    }
    t[0][i] = c;
  }
  for (std::size_t s = 1; s < 8; ++s) {
    for (std::uint32_t i = 0; i < 256; ++i) {
      t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
    }
  }
  return t;
}

constexpr auto tables = make_tables();

std::uint32_t crc_table(std::uint32_t crc, const unsigned char* p, std::size_t n) noexcept {
  while (n >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    word ^= crc;
    crc = tables[7][word & 0xFF] ^ tables[6][(word >> 8) & 0xFF] ^ tables[5][(word >> 16) & 0xFF] ^
          tables[4][(word >> 24) & 0xFF] ^ tables[3][(word >> 32) & 0xFF] ^ tables[2][(word >> 40) & 0xFF] ^
          tables[1][(word >> 48) & 0xFF] ^ tables[0][word >> 56];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) {
    crc = (crc >> 8) ^ tables[0][(crc ^ *p++) & 0xFF];
  }
  return crc;
}

// Polynomial arithmetic modulo the CRC polynomial, in the reflected bit order the CRC uses (bit 31 is x^0):
// what combining CRCs of adjacent blocks needs.
constexpr std::uint32_t mult_mod_poly(std::uint32_t a, std::uint32_t b) {
  std::uint32_t product = 0;
  for (std::uint32_t m = 1u << 31; m != 0; m >>= 1) {
    if ((a & m) != 0) {
      product ^= b;
    }
    b = (b & 1u) != 0 ? (b >> 1) ^ poly : b >> 1;
  }
  return product;
}

// x^(8 * bytes) mod P: the operator that moves a CRC register past `bytes` zero bytes.
constexpr std::uint32_t shift_operator(std::uint64_t bytes) {
  std::uint32_t result = 1u << 31;  // x^0
  std::uint32_t power = 1u << 23;   // x^8
  for (std::uint64_t n = bytes; n != 0; n >>= 1) {
    if ((n & 1) != 0) {
      result = mult_mod_poly(power, result);
    }
    power = mult_mod_poly(power, power);
  }
  return result;
}

// Tables applying a fixed shift to a register a byte at a time.
struct ShiftTable {
  std::array<std::array<std::uint32_t, 256>, 4> t{};
  constexpr explicit ShiftTable(std::uint64_t bytes) {
    std::uint32_t op = shift_operator(bytes);
    for (std::uint32_t k = 0; k < 4; ++k) {
      for (std::uint32_t v = 0; v < 256; ++v) {
        t[k][v] = mult_mod_poly(op, v << (8 * k));
      }
    }
  }
  std::uint32_t apply(std::uint32_t reg) const {
    return t[0][reg & 0xFF] ^ t[1][(reg >> 8) & 0xFF] ^ t[2][(reg >> 16) & 0xFF] ^ t[3][reg >> 24];
  }
};

#if defined(__x86_64__)
std::uint32_t crc_hw(std::uint32_t crc, const unsigned char* p, std::size_t n) noexcept;
#endif

// Three streams of this many bytes each run side by side, hiding the CRC instruction's latency.
constexpr std::size_t stripe = 4096;

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) std::uint32_t crc_hw_3way(std::uint32_t crc, const unsigned char* p,
                                                            std::size_t n) noexcept {
  static const ShiftTable by_one(stripe);
  static const ShiftTable by_two(2 * stripe);
  while (n >= 3 * stripe) {
    std::uint64_t a = crc;
    std::uint64_t b = 0;
    std::uint64_t c = 0;
    for (std::size_t i = 0; i < stripe; i += 8) {
      std::uint64_t wa, wb, wc;
      std::memcpy(&wa, p + i, 8);
      std::memcpy(&wb, p + stripe + i, 8);
      std::memcpy(&wc, p + 2 * stripe + i, 8);
      a = _mm_crc32_u64(a, wa);
      b = _mm_crc32_u64(b, wb);
      c = _mm_crc32_u64(c, wc);
    }
    crc = by_two.apply(static_cast<std::uint32_t>(a)) ^ by_one.apply(static_cast<std::uint32_t>(b)) ^
          static_cast<std::uint32_t>(c);
    p += 3 * stripe;
    n -= 3 * stripe;
  }
  return crc_hw(crc, p, n);
}
#endif

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) std::uint32_t crc_hw(std::uint32_t crc, const unsigned char* p,
                                                       std::size_t n) noexcept {
  std::uint64_t c = crc;
  while (n >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c);
  while (n-- > 0) {
    c32 = _mm_crc32_u8(c32, *p++);
  }
  return c32;
}

bool has_hw() noexcept {
  static const bool supported = __builtin_cpu_supports("sse4.2");
  return supported;
}
#else
bool has_hw() noexcept {
  return false;
}
#endif

}  // namespace

std::uint32_t crc32c(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  crc = ~crc;
#if defined(__x86_64__)
  if (has_hw()) {
    return ~crc_hw_3way(crc, p, data.size());
  }
#endif
  return ~crc_table(crc, p, data.size());
}

bool crc32c_hardware() noexcept {
  return has_hw();
}

std::uint32_t crc32c_table_for_testing(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  return ~crc_table(~crc, reinterpret_cast<const unsigned char*>(data.data()), data.size());
}

}  // namespace ember::wire
