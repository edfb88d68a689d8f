#pragma once
// The cell network's decoder (docs/wire-format.md §7): a packet's frame, checked against the cell's rules,
// and the reassembly of a link's messages from their frames. No I/O and no gRPC: fuzzed on its own
// (tests/fuzz/fuzz_cell.cpp).

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <ember/result.hpp>

#include "cell/cell.hpp"
#include "wire/frame.hpp"

namespace ember::cell {

/// Routing headers on a message's first frame; an application's own headers may not use the prefix.
inline constexpr std::string_view header_from = "cell.from";
inline constexpr std::string_view header_to = "cell.to";

/// A packet decoded: its frame (views into the packet's bytes) and, on the first frame of a routed message,
/// its sender and target.
struct Packet {
  wire::FrameView frame;
  const std::string* from = nullptr;
  const std::string* to = nullptr;

  bool first() const noexcept { return (frame.header.flags & wire::flags::first) != 0; }
  bool last() const noexcept { return (frame.header.flags & wire::flags::last) != 0; }
};

/// Decodes a packet that arrived on an open link: the frame checks of the wire format, then the cell's: a
/// routed op (CELL_REQUEST, CELL_REPLY, CELL_NOTIFY) or HEARTBEAT, and on a routed message's first frame a
/// valid cell.from and cell.to. Errors name the msg_id and the fault.
Result<Packet> decode_packet(std::span<const std::byte> bytes, const wire::Limits& limits);

/// A message reassembled from its frames.
struct Assembled {
  wire::Op op = wire::Op::cell_notify;
  std::uint64_t msg_id = 0;
  std::uint64_t req_id = 0;
  Message message;  ///< routing headers removed
};

/// Reassembles the messages addressed to this cell that arrive on one link. Frames of one message come in
/// order; several messages may be in progress at once (at most `max_partials`). Not thread-safe.
class Assembler {
 public:
  Assembler(std::uint64_t max_message, std::size_t max_partials)
      : max_message_(max_message), max_partials_(max_partials) {}

  /// What add() made of a frame.
  enum class Outcome {
    more,     ///< taken; the message is not complete yet
    done,     ///< the message is complete: take it with take()
    too_big,  ///< a first frame whose total_len exceeds max_message: its frames are dropped
    dropped,  ///< a frame of a message that is being dropped, or of none in progress (ignored)
  };

  /// Takes a frame of a message addressed to this cell. An error (a chunk out of order, more or less
  /// payload than total_len, too many messages at once) drops that message and names it. `stream`, read on
  /// a first frame, checks the message's frames as ever but keeps no payload: the caller streams each
  /// frame's payload on, and take() gives the message without it.
  Result<Outcome> add(const Packet& packet, std::chrono::steady_clock::time_point now, bool stream = false);
  /// The message add() reported done.
  Assembled take();
  /// Whether a message with this msg_id is in progress (its later frames belong here, not to a relay).
  bool has(std::uint64_t msg_id) const { return partials_.count(msg_id) != 0; }
  /// Drops the rest of a message in progress: its later frames are taken and ignored (dropped).
  void discard(std::uint64_t msg_id);
  /// Drops messages that took no frame since `before`; returns their msg_ids.
  std::vector<std::uint64_t> prune(std::chrono::steady_clock::time_point before);
  void clear() { partials_.clear(); }

 private:
  struct Partial {
    Assembled assembled;
    std::uint64_t total = 0;
    std::uint64_t received = 0;
    std::uint32_t next_chunk = 0;
    bool discard = false;
    bool stream = false;
    std::chrono::steady_clock::time_point touched;
  };
  std::uint64_t max_message_;
  std::size_t max_partials_;
  std::unordered_map<std::uint64_t, Partial> partials_;
  std::optional<Assembled> done_;
};

}  // namespace ember::cell
