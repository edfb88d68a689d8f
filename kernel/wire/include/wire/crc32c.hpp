#pragma once
// CRC-32C (Castagnoli), the checksum every frame carries: carry-less-multiply folding or the CRC
// instruction where the CPU has them, a table otherwise. Same results on every path.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace ember::wire {

/// Extends `crc` (0 to start) over `data`; crc32c(crc32c(0, a), b) == crc32c(0, a + b).
std::uint32_t crc32c(std::uint32_t crc, std::span<const std::byte> data) noexcept;

/// Whether the hardware path is in use (for benchmarks and logs).
bool crc32c_hardware() noexcept;

/// The ways crc32c() can compute a checksum, slowest first.
enum class Crc32cPath {
  table,       ///< portable slicing-by-8 tables
  crc32_3way,  ///< SSE4.2 CRC instruction, three streams side by side
  avx512,      ///< AVX-512 VPCLMULQDQ folding of 512-bit blocks
};

/// The path crc32c() takes for large inputs on this CPU (for benchmarks and logs).
Crc32cPath crc32c_path() noexcept;

/// A path's name, for benchmarks, logs and test names: "table", "sse42_3way", "avx512_vpclmulqdq".
std::string_view crc32c_path_name(Crc32cPath path) noexcept;

/// Whether this CPU can run `path` (the table path always can).
bool crc32c_path_supported(Crc32cPath path) noexcept;

/// Test-only: crc32c() forced onto `path` at every length, so tests can check that all paths agree; a path
/// this CPU cannot run falls back to the table. Production code calls crc32c().
std::uint32_t crc32c_path_for_testing(Crc32cPath path, std::uint32_t crc,
                                      std::span<const std::byte> data) noexcept;

/// Test-only: crc32c() forced onto the portable table path whatever the CPU has, so tests can check that
/// both paths agree. Production code calls crc32c().
std::uint32_t crc32c_table_for_testing(std::uint32_t crc, std::span<const std::byte> data) noexcept;

}  // namespace ember::wire
