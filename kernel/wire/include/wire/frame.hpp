#pragma once
// The frame: the unit every pipe carries (docs/wire-format.md is the normative description).
//
//   offset size field
//   0      4    magic "EMBR"
//   4      1    version (1)
//   5      1    message type: 1 request, 2 reply
//   6      1    op: what the message is in the session protocol (Op)
//   7      1    flags: 1 first chunk, 2 last chunk, 4 control lane
//   8      8    msg_id
//   16     8    req_id (the msg_id answered, or 0)
//   24     8    total payload length of the whole message
//   32     4    chunk index (0 for the first)
//   36     4    payload length in this frame
//   40     2    topic length (first chunk only)
//   42     2    headers length (first chunk only)
//   44     4    reserved, 0
//   48     ...  topic (UTF-8), headers, payload
//   end    4    CRC-32C of every byte before it
// All integers little-endian.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ember/result.hpp>

namespace ember::wire {

inline constexpr std::uint8_t frame_version = 1;
inline constexpr std::size_t frame_header_size = 48;
inline constexpr std::size_t frame_trailer_size = 4;
inline constexpr std::size_t frame_overhead = frame_header_size + frame_trailer_size;

/// Request or reply.
enum class MessageType : std::uint8_t { request = 1, reply = 2 };

/// The session protocol's operations (docs/wire-format.md, "Session").
enum class Op : std::uint8_t {
  hello = 1,
  hello_accepted = 2,
  hello_rejected = 3,
  session_ready = 4,
  task_ready = 5,
  task_accepted = 6,
  task_failed = 7,
  result_ready = 8,
  result_accepted = 9,
  result_rejected = 10,
  log = 11,
  heartbeat = 12,
  abort = 13,
  shutdown = 14,
  ack = 15,  ///< delivery receipt of a message (req_id = its msg_id)
  // The cell network's operations (docs/wire-format.md, section 7); a session never sends them.
  cell_hello = 32,    ///< a child's first frame on a link: its name and token
  cell_welcome = 33,  ///< the parent admits the child
  cell_refused = 34,  ///< the parent refuses the child (header cell.reason)
  cell_request = 35,  ///< a routed request
  cell_reply = 36,    ///< a routed reply (req_id = the request's msg_id)
  cell_notify = 37,   ///< a routed message without a reply
};

/// The op's name in the protocol ("TASK_READY").
std::string_view to_string(Op op) noexcept;

/// Frame flags.
namespace flags {
inline constexpr std::uint8_t first = 1;
inline constexpr std::uint8_t last = 2;
inline constexpr std::uint8_t control = 4;
inline constexpr std::uint8_t all = first | last | control;
}  // namespace flags

/// Bounds every decoder checks before it allocates or reads further.
struct Limits {
  std::uint32_t max_topic = 1024;                      ///< bytes
  std::uint32_t max_headers = 60 * 1024;               ///< bytes of encoded headers
  std::uint32_t max_header_count = 256;                ///< entries
  std::uint32_t max_chunk = 64u << 20;                 ///< payload bytes in one frame
  std::uint64_t max_message = std::uint64_t{1} << 40;  ///< payload bytes of a whole message
};

/// Ordered key/value pairs (UTF-8 both).
using Headers = std::vector<std::pair<std::string, std::string>>;

/// The fixed part of a frame.
struct FrameHeader {
  MessageType type = MessageType::request;
  Op op = Op::heartbeat;
  std::uint8_t flags = flags::first | flags::last;
  std::uint64_t msg_id = 0;
  std::uint64_t req_id = 0;
  std::uint64_t total_len = 0;
  std::uint32_t chunk_index = 0;
  std::uint32_t payload_len = 0;
};

/// A decoded frame; topic, header values and payload point into the frame's bytes.
struct FrameView {
  FrameHeader header;
  std::string_view topic;
  Headers headers;
  std::span<const std::byte> payload;

  /// The value of header `key`, or nullptr.
  const std::string* header_value(std::string_view key) const;
};

/// Bytes a frame with these parts takes.
std::size_t encoded_size(std::string_view topic, std::size_t headers_bytes, std::size_t payload_len) noexcept;

/// Bytes the headers take encoded: per entry u16 key length, key, u16 value length, value.
std::size_t encoded_headers_size(const Headers& headers) noexcept;

/// Encodes one frame into `out` (replacing its contents). `header.payload_len` is set from `payload`.
/// Errors name what exceeds a limit or is not UTF-8.
Result<void> encode_frame(std::vector<std::byte>& out, FrameHeader header, std::string_view topic,
                          const Headers& headers, std::span<const std::byte> payload,
                          const Limits& limits = {});

/// Writes a frame's payload in place: called once with the payload's room inside the frame buffer.
using PayloadFill = std::function<Result<void>(std::span<std::byte> into)>;

/// Like encode_frame, but the payload is written straight into the frame by `fill` (no staging copy): a
/// sender reads its source into the frame it is about to send.
Result<void> encode_frame_with(std::vector<std::byte>& out, FrameHeader header, std::string_view topic,
                               const Headers& headers, std::size_t payload_len, const PayloadFill& fill,
                               const Limits& limits = {});

/// A frame whose payload stays where it is: `head` (fixed header, topic, headers) and `trailer` (the
/// CRC-32C) go around the caller's payload parts, and head, parts and trailer are sent as one gather write.
struct GatherFrame {
  std::vector<std::byte> head;
  std::array<std::byte, frame_trailer_size> trailer{};
};

/// Encodes the frame whose payload is the concatenation of `payload` (read only to checksum it) into `out`,
/// with the same checks as encode_frame: head, payload parts and trailer, in that order, are the frame.
Result<void> encode_frame_around(GatherFrame& out, FrameHeader header, std::string_view topic,
                                 const Headers& headers, std::span<const std::span<const std::byte>> payload,
                                 const Limits& limits = {});

/// Reads the fixed header and returns the whole frame's size, checking every bound first: a stream reader
/// calls it on the first 48 bytes before it allocates the rest.
Result<std::size_t> frame_size(std::span<const std::byte> header_bytes, const Limits& limits = {});

/// Decodes and verifies a whole frame (sizes, checksum, UTF-8, header encoding).
Result<FrameView> decode_frame(std::span<const std::byte> frame, const Limits& limits = {});

/// Whether `text` is well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF).
bool valid_utf8(std::string_view text) noexcept;

}  // namespace ember::wire
