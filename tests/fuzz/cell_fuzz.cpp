// Fuzz target for the cell network's decoder: the input is a sequence of packets, each a u32 length
// (little-endian) and that many bytes, as one link would deliver them. Each goes through decode_packet()
// and, if it is a routed frame, into one Assembler. Whatever the bytes: an error is typed and says what, a
// complete message has exactly its total_len of payload and valid names, and nothing crashes, hangs or
// leaks. Built as a libFuzzer target under clang (-Dfuzz=true) and, everywhere, linked with replay_main.cpp
// to run the seed corpus as a test.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "cell/codec.hpp"
#include "wire/frame.hpp"

namespace {

using namespace ember;

void check(bool condition) {
  if (!condition) {
    __builtin_trap();
  }
}

void check_error(const Error& error) {
  check(error.code == Errc::malformed || error.code == Errc::io_error);
  check(!error.message.empty() && error.message.size() < 2048 && wire::valid_utf8(error.message));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  wire::Limits limits;
  limits.max_chunk = 1u << 20;
  cell::Assembler assembler(64 * 1024, 4);
  auto now = std::chrono::steady_clock::time_point{};
  std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  while (input.size() >= 4) {
    std::uint32_t length = 0;
    std::memcpy(&length, input.data(), 4);
    input = input.subspan(4);
    auto bytes = input.first(std::min<std::size_t>(length, input.size()));
    input = input.subspan(bytes.size());
    now += std::chrono::milliseconds(1);
    auto packet = cell::decode_packet(bytes, limits);
    if (!packet) {
      check_error(packet.error());
      continue;
    }
    const auto& h = packet->frame.header;
    if (h.op == wire::Op::heartbeat) {
      continue;
    }
    if (packet->first()) {
      check(packet->from != nullptr && packet->to != nullptr);
      check(cell::valid_fqcn(*packet->from) && cell::valid_fqcn(*packet->to));
    }
    auto outcome = assembler.add(*packet, now);
    if (!outcome) {
      check_error(outcome.error());
      continue;
    }
    if (*outcome == cell::Assembler::Outcome::done) {
      auto done = assembler.take();
      check(done.msg_id == h.msg_id);
      check(done.message.payload.size() == h.total_len);
      check(done.message.payload.size() <= 64 * 1024);
      check(cell::valid_fqcn(done.message.from) && cell::valid_fqcn(done.message.to));
      for (const auto& [key, value] : done.message.headers) {
        check(key != "cell.from" && key != "cell.to");
      }
    }
    // Old messages go, as the cell's housekeeping drops them.
    assembler.prune(now - std::chrono::milliseconds(50));
  }
  return 0;
}
