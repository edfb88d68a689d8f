#include "wire/crc32c.hpp"

#include <array>
#include <bit>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
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

// Polynomial arithmetic modulo the CRC polynomial, in the reflected bit order the CRC uses (bit 31 is x^0),
// for the constants that join parallel streams and fold blocks. All of it runs at compile time or once.
constexpr std::uint32_t mult_mod_poly(std::uint32_t a, std::uint32_t b) {
  std::uint32_t product = 0;
  for (int k = 31; k >= 0; --k) {
    product ^= b & (0u - ((a >> k) & 1u));
    b = (b >> 1) ^ (poly & (0u - (b & 1u)));
  }
  return product;
}

// base^exponent mod P, by squaring.
constexpr std::uint32_t power_mod_poly(std::uint32_t base, std::uint64_t exponent) {
  std::uint32_t result = 1u << 31;  // x^0
  for (; exponent != 0; exponent >>= 1) {
    if ((exponent & 1) != 0) {
      result = mult_mod_poly(base, result);
    }
    base = mult_mod_poly(base, base);
  }
  return result;
}

// x^bits mod P.
constexpr std::uint32_t x_to_the(std::uint64_t bits) {
  return power_mod_poly(1u << 30, bits);
}

// x^(8 * bytes) mod P: the operator that moves a CRC register past `bytes` zero bytes.
constexpr std::uint32_t shift_operator(std::uint64_t bytes) {
  return power_mod_poly(1u << 23, bytes);  // (x^8)^bytes
}

static_assert(mult_mod_poly(x_to_the(5), x_to_the(27)) == x_to_the(32));
static_assert(x_to_the(32) == poly);  // x^32 = P - x^32 mod P
static_assert(shift_operator(4) == x_to_the(32));

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

// What this CPU can run, asked once.
struct Cpu {
  bool sse42;   // the CRC instruction
  bool pclmul;  // and 128-bit carry-less multiplies
  bool avx512;  // and 512-bit ones
};

const Cpu& cpu() noexcept {
  static const Cpu found = [] {
    Cpu c{};
    c.sse42 = __builtin_cpu_supports("sse4.2") != 0;
    c.pclmul = c.sse42 && __builtin_cpu_supports("pclmul") != 0;
    c.avx512 =
        c.pclmul && __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("vpclmulqdq") != 0;
    return c;
  }();
  return found;
}

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

// Three streams of this many bytes each run side by side, hiding the CRC instruction's latency.
constexpr std::size_t stripe = 4096;

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

// ---- folding, for the carry-less-multiply paths

// Read a 128-bit block as a polynomial whose highest term is
// the first bit of the stream; its share of the CRC is that polynomial times x^(bits after it), mod P. So
// a block may be replaced by anything congruent to it times x^D xored onto the block D bits later. With L
// and H its low and high qwords (L comes first), the block is L x^64 + H; and the product of two reflected
// qwords by a carry-less multiply is their polynomial product times x. Hence clmul(L, x^(D+63) mod P) xor
// clmul(H, x^(D-1) mod P) is the block times x^D, and fits 128 bits: each factor has degree below 32 and
// sits in the top half of its qword (a 32-bit reflected value shifted up 32 is the same polynomial).
struct FoldBy {
  std::uint64_t low;   // multiplies the low qword
  std::uint64_t high;  // multiplies the high qword
};

consteval FoldBy fold_by(std::uint64_t bytes) {
  return {std::uint64_t{x_to_the(8 * bytes + 63)} << 32, std::uint64_t{x_to_the(8 * bytes - 1)} << 32};
}

// ---- 128-bit folding (PCLMULQDQ)

__m128i load_16(const unsigned char* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

__m128i factors_16(FoldBy by) {
  return _mm_set_epi64x(static_cast<long long>(by.high), static_cast<long long>(by.low));
}

// `block` moved on by the distance `by` was made for, xored onto `next`, the block it lands on.
__attribute__((target("pclmul"))) __m128i fold_16(__m128i block, __m128i by, __m128i next) {
  return _mm_xor_si128(
      _mm_xor_si128(_mm_clmulepi64_si128(block, by, 0x00), _mm_clmulepi64_si128(block, by, 0x11)), next);
}

// The raw register after `rest`, everything before it folded in, and then the n bytes at p: a CRC from a
// zero register, as the start register went into the first block.
__attribute__((target("sse4.2,pclmul"))) std::uint32_t fold_finish(__m128i rest, const unsigned char* p,
                                                                   std::size_t n) noexcept {
  const __m128i by_one = factors_16(fold_by(16));
  while (n >= 16) {
    rest = fold_16(rest, by_one, load_16(p));
    p += 16;
    n -= 16;
  }
  std::uint64_t c = _mm_crc32_u64(0, static_cast<std::uint64_t>(_mm_cvtsi128_si64(rest)));
  c = _mm_crc32_u64(c, static_cast<std::uint64_t>(_mm_extract_epi64(rest, 1)));
  return crc_hw(static_cast<std::uint32_t>(c), p, n);
}

// The folding paths need one 64-byte block; below that, one CRC stream.
constexpr std::size_t fold_min = 64;

// ---- 512-bit folding (AVX-512 VPCLMULQDQ): four 128-bit lanes per register

#define EMBER_CRC_AVX512 __attribute__((target("sse4.2,pclmul,avx512f,vpclmulqdq")))

EMBER_CRC_AVX512 __m512i load_64(const unsigned char* p) {
  return _mm512_loadu_si512(p);
}

// GCC 12 warns (maybe-uninitialized) inside the broadcast, shuffle and extract intrinsics, so registers
// are built with set and taken apart with subscripts.
EMBER_CRC_AVX512 __m512i factors_64(FoldBy lane0, FoldBy lane1, FoldBy lane2, FoldBy lane3) {
  auto q = [](std::uint64_t v) { return static_cast<long long>(v); };
  return _mm512_set_epi64(q(lane3.high), q(lane3.low), q(lane2.high), q(lane2.low), q(lane1.high),
                          q(lane1.low), q(lane0.high), q(lane0.low));
}

EMBER_CRC_AVX512 __m512i factors_64(FoldBy by) {
  return factors_64(by, by, by, by);
}

EMBER_CRC_AVX512 __m128i lane_of(__m512i v, int lane) {
  return _mm_set_epi64x(v[2 * lane + 1], v[2 * lane]);
}

EMBER_CRC_AVX512 __m512i fold_64(__m512i block, __m512i by, __m512i next) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(block, by, 0x00),
                                   _mm512_clmulepi64_epi128(block, by, 0x11), next, 0x96);  // a ^ b ^ c
}

EMBER_CRC_AVX512 std::uint32_t crc_avx512(std::uint32_t crc, const unsigned char* p, std::size_t n) noexcept {
  if (n < fold_min) {
    return crc_hw(crc, p, n);
  }
  __m512i a0 = _mm512_xor_si512(load_64(p), _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(crc))));
  p += 64;
  n -= 64;
  if (n >= 192) {
    // Four accumulators, one per 64 bytes of each 256, so four multiplies are in flight.
    __m512i a1 = load_64(p);
    __m512i a2 = load_64(p + 64);
    __m512i a3 = load_64(p + 128);
    p += 192;
    n -= 192;
    const __m512i by_four = factors_64(fold_by(256));
    while (n >= 256) {
      a0 = fold_64(a0, by_four, load_64(p));
      a1 = fold_64(a1, by_four, load_64(p + 64));
      a2 = fold_64(a2, by_four, load_64(p + 128));
      a3 = fold_64(a3, by_four, load_64(p + 192));
      p += 256;
      n -= 256;
    }
    a0 = fold_64(a0, factors_64(fold_by(192)),
                 fold_64(a1, factors_64(fold_by(128)), fold_64(a2, factors_64(fold_by(64)), a3)));
  }
  const __m512i by_one = factors_64(fold_by(64));
  while (n >= 64) {
    a0 = fold_64(a0, by_one, load_64(p));
    p += 64;
    n -= 64;
  }
  // Lanes 0, 1 and 2 moved on 48, 32 and 16 bytes onto lane 3, then the four xored together.
  const __m512i to_last = factors_64(fold_by(48), fold_by(32), fold_by(16), FoldBy{0, 0});
  const __m512i moved = fold_64(a0, to_last, _mm512_maskz_mov_epi64(0xC0, a0));
  const __m128i rest = _mm_xor_si128(_mm_xor_si128(lane_of(moved, 0), lane_of(moved, 1)),
                                     _mm_xor_si128(lane_of(moved, 2), lane_of(moved, 3)));
  return fold_finish(rest, p, n);
}

#undef EMBER_CRC_AVX512

// From this many bytes on, crc32c() folds when the CPU can. Measured on Zen 5: at 128 bytes folding takes
// less time than one CRC stream, at 112 (two 16-byte folds after the first 64) more.
constexpr std::size_t fold_threshold = 128;

#endif  // __x86_64__

bool path_supported(Crc32cPath path) noexcept {
  switch (path) {
    case Crc32cPath::table:
      return true;
#if defined(__x86_64__)
    case Crc32cPath::crc32_3way:
      return cpu().sse42;
    case Crc32cPath::avx512:
      return cpu().avx512;
#else
    default:
      return false;
#endif
  }
  return false;
}

// The raw register after `n` bytes at `p` from register `reg`, on `path`.
std::uint32_t run_path(Crc32cPath path, std::uint32_t reg, const unsigned char* p, std::size_t n) noexcept {
  if (path_supported(path)) {
    switch (path) {
#if defined(__x86_64__)
      case Crc32cPath::crc32_3way:
        return crc_hw_3way(reg, p, n);
      case Crc32cPath::avx512:
        return crc_avx512(reg, p, n);
#endif
      default:
        break;
    }
  }
  return crc_table(reg, p, n);
}

const unsigned char* bytes_of(std::span<const std::byte> data) noexcept {
  return reinterpret_cast<const unsigned char*>(data.data());
}

}  // namespace

std::uint32_t crc32c(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  const auto* p = bytes_of(data);
  crc = ~crc;
#if defined(__x86_64__)
  const Cpu& c = cpu();
  if (c.avx512 && data.size() >= fold_threshold) {
    return ~crc_avx512(crc, p, data.size());
  }
  if (c.sse42) {
    return ~crc_hw_3way(crc, p, data.size());
  }
#endif
  return ~crc_table(crc, p, data.size());
}

bool crc32c_hardware() noexcept {
  return path_supported(Crc32cPath::crc32_3way);
}

Crc32cPath crc32c_path() noexcept {
  if (path_supported(Crc32cPath::avx512)) {
    return Crc32cPath::avx512;
  }
  return path_supported(Crc32cPath::crc32_3way) ? Crc32cPath::crc32_3way : Crc32cPath::table;
}

std::string_view crc32c_path_name(Crc32cPath path) noexcept {
  switch (path) {
    case Crc32cPath::table:
      return "table";
    case Crc32cPath::crc32_3way:
      return "sse42_3way";
    case Crc32cPath::avx512:
      return "avx512_vpclmulqdq";
  }
  return "unknown";
}

bool crc32c_path_supported(Crc32cPath path) noexcept {
  return path_supported(path);
}

std::uint32_t crc32c_path_for_testing(Crc32cPath path, std::uint32_t crc,
                                      std::span<const std::byte> data) noexcept {
  return ~run_path(path, ~crc, bytes_of(data), data.size());
}

std::uint32_t crc32c_table_for_testing(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  return ~crc_table(~crc, bytes_of(data), data.size());
}

}  // namespace ember::wire
