#pragma once
// CRC-32C (Castagnoli), the checksum every frame carries: hardware instructions where the CPU has them,
// a table otherwise. Same results either way.

#include <cstddef>
#include <cstdint>
#include <span>

namespace ember::wire {

/// Extends `crc` (0 to start) over `data`; crc32c(crc32c(0, a), b) == crc32c(0, a + b).
std::uint32_t crc32c(std::uint32_t crc, std::span<const std::byte> data) noexcept;

/// Whether the hardware path is in use (for benchmarks and logs).
bool crc32c_hardware() noexcept;

/// Test-only: crc32c() forced onto the portable table path whatever the CPU has, so tests can check that
/// both paths agree. Production code calls crc32c().
std::uint32_t crc32c_table_for_testing(std::uint32_t crc, std::span<const std::byte> data) noexcept;

}  // namespace ember::wire
