// Fuzz target for the frame codec: any bytes given to frame_size() and decode_frame() must give a frame or
// an Errc::malformed error with a message, never a crash, a hang or a leak; a frame that decodes must
// re-encode to the same bytes, and frame_size() must agree with it. Inputs with a wrong checksum are also
// decoded once more with the checksum repaired, so the fuzzer reaches the checks behind it (UTF-8, header
// entries), and CRC-32C's hardware path is checked against its table. Built as a libFuzzer target under clang
// (-Dfuzz=true) and, everywhere, linked with replay_main.cpp to run the seed corpus as a test.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "wire/crc32c.hpp"
#include "wire/frame.hpp"

namespace {

using namespace ember::wire;

// A broken invariant: abort, so libFuzzer records the input (and the replay test fails).
void check(bool condition) {
  if (!condition) {
    __builtin_trap();
  }
}

// Messages go to logs and into JSON: short, and UTF-8 whatever the input was.
void check_error(const ember::Error& error) {
  check(error.code == ember::Errc::malformed);
  check(!error.message.empty() && error.message.size() < 1024 && valid_utf8(error.message));
}

void round_trip(std::span<const std::byte> input, const Limits& limits) {
  auto size = frame_size(input.first(std::min(input.size(), frame_header_size)), limits);
  auto view = decode_frame(input, limits);
  if (!view) {
    check_error(view.error());
    if (!size) {
      check_error(size.error());
    }
    return;
  }
  check(size && *size == input.size());
  check(view->payload.size() == view->header.payload_len);
  check(valid_utf8(view->topic));
  check(view->headers.size() <= limits.max_header_count);
  std::vector<std::byte> again;
  auto encoded = encode_frame(again, view->header, view->topic, view->headers, view->payload, limits);
  check(encoded.has_value());
  check(again.size() == input.size() && std::equal(again.begin(), again.end(), input.begin()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto input = std::as_bytes(std::span<const std::uint8_t>(data, size));
  round_trip(input, Limits{});
  // Tight limits, so every bound is reachable with small inputs.
  const Limits tight{16, 64, 4, 256, 1024};
  round_trip(input, tight);

  // CRC-32C: whatever path the CPU takes agrees with the table (the three-stream path, from 12 KiB, is
  // checked at every length around its stripes by frame_test).
  check(crc32c(0, input) == crc32c_table_for_testing(0, input));

  if (size >= frame_overhead) {
    std::vector<std::byte> resealed(input.begin(), input.end());
    auto crc = crc32c(0, std::span<const std::byte>(resealed).first(size - frame_trailer_size));
    for (std::size_t i = 0; i < frame_trailer_size; ++i) {
      resealed[size - frame_trailer_size + i] = static_cast<std::byte>(crc >> (8 * i));
    }
    round_trip(resealed, Limits{});
    round_trip(resealed, tight);
  }
  return 0;
}
