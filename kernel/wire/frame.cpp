#include "wire/frame.hpp"

#include <algorithm>
#include <cstring>

#include "wire/crc32c.hpp"

namespace ember::wire {

namespace {

constexpr unsigned char magic[4] = {'E', 'M', 'B', 'R'};

void put_u16(std::byte* p, std::uint16_t v) {
  for (int i = 0; i < 2; ++i) {
    p[i] = static_cast<std::byte>(v >> (8 * i));
  }
}
void put_u32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) {
    p[i] = static_cast<std::byte>(v >> (8 * i));
  }
}
void put_u64(std::byte* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    p[i] = static_cast<std::byte>(v >> (8 * i));
  }
}
template <class T>
T get_le(const std::byte* p) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    v |= static_cast<T>(std::to_integer<std::uint8_t>(p[i])) << (8 * i);
  }
  return v;
}

tl::unexpected<Error> malformed(const std::string& what) {
  return fail(Errc::malformed, "malformed frame: " + what);
}

std::string ids(std::uint64_t msg_id, std::uint32_t chunk) {
  return "msg_id " + std::to_string(msg_id) + " chunk " + std::to_string(chunk) + ": ";
}

std::string hex_byte(std::uint8_t v) {
  constexpr char digits[] = "0123456789abcdef";
  return std::string{'0', 'x', digits[v >> 4], digits[v & 0xF]};
}

bool known_op(std::uint8_t op) {
  return (op >= 1 && op <= static_cast<std::uint8_t>(Op::ack)) ||
         (op >= static_cast<std::uint8_t>(Op::cell_hello) &&
          op <= static_cast<std::uint8_t>(Op::cell_notify));
}

}  // namespace

std::string_view to_string(Op op) noexcept {
  switch (op) {
    case Op::hello:
      return "HELLO";
    case Op::hello_accepted:
      return "HELLO_ACCEPTED";
    case Op::hello_rejected:
      return "HELLO_REJECTED";
    case Op::session_ready:
      return "SESSION_READY";
    case Op::task_ready:
      return "TASK_READY";
    case Op::task_accepted:
      return "TASK_ACCEPTED";
    case Op::task_failed:
      return "TASK_FAILED";
    case Op::result_ready:
      return "RESULT_READY";
    case Op::result_accepted:
      return "RESULT_ACCEPTED";
    case Op::result_rejected:
      return "RESULT_REJECTED";
    case Op::log:
      return "LOG";
    case Op::heartbeat:
      return "HEARTBEAT";
    case Op::abort:
      return "ABORT";
    case Op::shutdown:
      return "SHUTDOWN";
    case Op::ack:
      return "ACK";
    case Op::cell_hello:
      return "CELL_HELLO";
    case Op::cell_welcome:
      return "CELL_WELCOME";
    case Op::cell_refused:
      return "CELL_REFUSED";
    case Op::cell_request:
      return "CELL_REQUEST";
    case Op::cell_reply:
      return "CELL_REPLY";
    case Op::cell_notify:
      return "CELL_NOTIFY";
  }
  return "UNKNOWN";
}

const std::string* FrameView::header_value(std::string_view key) const {
  for (const auto& [k, v] : headers) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

bool valid_utf8(std::string_view text) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t cp = 0;
    std::uint32_t min = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (i + len > n) {
      return false;
    }
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) {
        return false;
      }
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

std::size_t encoded_headers_size(const Headers& headers) noexcept {
  std::size_t size = 0;
  for (const auto& [k, v] : headers) {
    size += 4 + k.size() + v.size();
  }
  return size;
}

std::size_t encoded_size(std::string_view topic, std::size_t headers_bytes,
                         std::size_t payload_len) noexcept {
  return frame_overhead + topic.size() + headers_bytes + payload_len;
}

namespace {

// Checks the parts of a frame against the limits and writes its fixed header, topic and headers at `p`
// (room for frame_header_size + topic + headers bytes). The encoder refuses whatever decode_frame would
// reject, so a frame it writes always decodes: the length fields are 16 bits whatever the limits say, and
// type and op must be ones the decoder knows.
Result<void> check_parts(const FrameHeader& header, std::string_view topic, const Headers& headers,
                         std::size_t headers_bytes, std::size_t payload_len, const Limits& limits) {
  auto type = static_cast<std::uint8_t>(header.type);
  if (type != 1 && type != 2) {
    return fail(Errc::invalid_argument, "unknown message type " + std::to_string(type));
  }
  if (!known_op(static_cast<std::uint8_t>(header.op))) {
    return fail(Errc::invalid_argument, "unknown op " + std::to_string(static_cast<std::uint8_t>(header.op)));
  }
  if (topic.size() > limits.max_topic || topic.size() > 0xFFFF) {
    return fail(Errc::invalid_argument,
                "topic of " + std::to_string(topic.size()) + " bytes exceeds the limit of " +
                    std::to_string(std::min<std::uint32_t>(limits.max_topic, 0xFFFF)));
  }
  if (!valid_utf8(topic)) {
    return fail(Errc::invalid_argument, "topic is not valid UTF-8");
  }
  if (headers.size() > limits.max_header_count) {
    return fail(Errc::invalid_argument, std::to_string(headers.size()) + " headers exceed the limit of " +
                                            std::to_string(limits.max_header_count));
  }
  if (headers_bytes > limits.max_headers || headers_bytes > 0xFFFF) {
    return fail(Errc::invalid_argument,
                "headers of " + std::to_string(headers_bytes) + " bytes exceed the limit");
  }
  for (const auto& [k, v] : headers) {
    if (k.empty() || k.size() > 0xFFFF || v.size() > 0xFFFF || !valid_utf8(k) || !valid_utf8(v)) {
      return fail(Errc::invalid_argument, "header '" + k.substr(0, 64) + "' is empty, too long or not UTF-8");
    }
  }
  if (payload_len > limits.max_chunk) {
    return fail(Errc::invalid_argument, "chunk of " + std::to_string(payload_len) +
                                            " bytes exceeds the limit of " +
                                            std::to_string(limits.max_chunk));
  }
  if (payload_len > header.total_len || header.total_len > limits.max_message) {
    return fail(Errc::invalid_argument, "chunk of " + std::to_string(payload_len) +
                                            " bytes in a message of " + std::to_string(header.total_len) +
                                            " bytes (limit " + std::to_string(limits.max_message) + ")");
  }
  if ((header.flags & ~flags::all) != 0) {
    return fail(Errc::invalid_argument, "unknown frame flags " + hex_byte(header.flags));
  }
  if ((topic.size() != 0 || !headers.empty()) && (header.flags & flags::first) == 0) {
    return fail(Errc::invalid_argument, "only the first chunk of a message carries a topic and headers");
  }
  return ok();
}

// Writes the fixed header, topic and headers at `p`; returns the first byte after them.
std::byte* put_head(std::byte* p, const FrameHeader& header, std::string_view topic, const Headers& headers,
                    std::size_t headers_bytes) {
  std::memcpy(p, magic, 4);
  p[4] = static_cast<std::byte>(frame_version);
  p[5] = static_cast<std::byte>(header.type);
  p[6] = static_cast<std::byte>(header.op);
  p[7] = static_cast<std::byte>(header.flags);
  put_u64(p + 8, header.msg_id);
  put_u64(p + 16, header.req_id);
  put_u64(p + 24, header.total_len);
  put_u32(p + 32, header.chunk_index);
  put_u32(p + 36, header.payload_len);
  put_u16(p + 40, static_cast<std::uint16_t>(topic.size()));
  put_u16(p + 42, static_cast<std::uint16_t>(headers_bytes));
  put_u32(p + 44, 0);
  std::byte* q = p + frame_header_size;
  if (!topic.empty()) {  // an empty string_view may hold a null pointer, which memcpy must not get
    std::memcpy(q, topic.data(), topic.size());
  }
  q += topic.size();
  for (const auto& [k, v] : headers) {
    put_u16(q, static_cast<std::uint16_t>(k.size()));
    std::memcpy(q + 2, k.data(), k.size());
    q += 2 + k.size();
    put_u16(q, static_cast<std::uint16_t>(v.size()));
    std::memcpy(q + 2, v.data(), v.size());
    q += 2 + v.size();
  }
  return q;
}

}  // namespace

Result<void> encode_frame_with(std::vector<std::byte>& out, FrameHeader header, std::string_view topic,
                               const Headers& headers, std::size_t payload_len, const PayloadFill& fill,
                               const Limits& limits) {
  std::size_t headers_bytes = encoded_headers_size(headers);
  if (auto checked = check_parts(header, topic, headers, headers_bytes, payload_len, limits); !checked) {
    return checked;
  }
  header.payload_len = static_cast<std::uint32_t>(payload_len);
  out.resize(encoded_size(topic, headers_bytes, payload_len));
  std::byte* p = out.data();
  std::byte* q = put_head(p, header, topic, headers, headers_bytes);
  if (payload_len > 0) {
    auto filled = fill(std::span<std::byte>(q, payload_len));
    if (!filled) {
      return filled;
    }
  }
  q += payload_len;
  put_u32(q, crc32c(0, std::span<const std::byte>(p, static_cast<std::size_t>(q - p))));
  return ok();
}

Result<void> encode_frame_around(GatherFrame& out, FrameHeader header, std::string_view topic,
                                 const Headers& headers, std::span<const std::span<const std::byte>> payload,
                                 const Limits& limits) {
  std::size_t payload_len = 0;
  for (const auto& part : payload) {
    payload_len += part.size();
  }
  std::size_t headers_bytes = encoded_headers_size(headers);
  if (auto checked = check_parts(header, topic, headers, headers_bytes, payload_len, limits); !checked) {
    return checked;
  }
  header.payload_len = static_cast<std::uint32_t>(payload_len);
  out.head.resize(frame_header_size + topic.size() + headers_bytes);
  put_head(out.head.data(), header, topic, headers, headers_bytes);
  std::uint32_t crc = crc32c(0, out.head);
  for (const auto& part : payload) {
    crc = crc32c(crc, part);
  }
  put_u32(out.trailer.data(), crc);
  return ok();
}

Result<void> encode_frame(std::vector<std::byte>& out, FrameHeader header, std::string_view topic,
                          const Headers& headers, std::span<const std::byte> payload, const Limits& limits) {
  return encode_frame_with(
      out, header, topic, headers, payload.size(),
      [&](std::span<std::byte> into) {
        std::memcpy(into.data(), payload.data(), payload.size());
        return ok();
      },
      limits);
}

Result<std::size_t> frame_size(std::span<const std::byte> h, const Limits& limits) {
  if (h.size() < frame_header_size) {
    return malformed("truncated header: " + std::to_string(h.size()) + " of " +
                     std::to_string(frame_header_size) + " bytes");
  }
  if (std::memcmp(h.data(), magic, 4) != 0) {
    return malformed("bad magic (not an ember frame)");
  }
  auto version = std::to_integer<std::uint8_t>(h[4]);
  if (version != frame_version) {
    return malformed("unsupported version " + std::to_string(version) + " (this ember speaks " +
                     std::to_string(frame_version) + ")");
  }
  auto msg_id = get_le<std::uint64_t>(h.data() + 8);
  auto chunk = get_le<std::uint32_t>(h.data() + 32);
  auto type = std::to_integer<std::uint8_t>(h[5]);
  if (type != 1 && type != 2) {
    return malformed(ids(msg_id, chunk) + "unknown message type " + std::to_string(type));
  }
  auto op = std::to_integer<std::uint8_t>(h[6]);
  if (!known_op(op)) {
    return malformed(ids(msg_id, chunk) + "unknown op " + std::to_string(op));
  }
  auto fl = std::to_integer<std::uint8_t>(h[7]);
  if ((fl & ~flags::all) != 0) {
    return malformed(ids(msg_id, chunk) + "unknown flags " + hex_byte(fl));
  }
  auto total = get_le<std::uint64_t>(h.data() + 24);
  auto payload_len = get_le<std::uint32_t>(h.data() + 36);
  auto topic_len = get_le<std::uint16_t>(h.data() + 40);
  auto headers_len = get_le<std::uint16_t>(h.data() + 42);
  if (get_le<std::uint32_t>(h.data() + 44) != 0) {
    return malformed(ids(msg_id, chunk) + "reserved field is not zero");
  }
  if (total > limits.max_message) {
    return malformed(ids(msg_id, chunk) + "message of " + std::to_string(total) +
                     " bytes exceeds the limit of " + std::to_string(limits.max_message));
  }
  if (payload_len > limits.max_chunk) {
    return malformed(ids(msg_id, chunk) + "chunk of " + std::to_string(payload_len) +
                     " bytes exceeds the limit of " + std::to_string(limits.max_chunk));
  }
  if (payload_len > total) {
    return malformed(ids(msg_id, chunk) + "chunk of " + std::to_string(payload_len) +
                     " bytes is longer than its message of " + std::to_string(total));
  }
  if (topic_len > limits.max_topic) {
    return malformed(ids(msg_id, chunk) + "topic of " + std::to_string(topic_len) +
                     " bytes exceeds the limit of " + std::to_string(limits.max_topic));
  }
  if (headers_len > limits.max_headers) {
    return malformed(ids(msg_id, chunk) + "headers of " + std::to_string(headers_len) +
                     " bytes exceed the limit of " + std::to_string(limits.max_headers));
  }
  if ((topic_len != 0 || headers_len != 0) && (fl & flags::first) == 0) {
    return malformed(ids(msg_id, chunk) + "topic or headers on a chunk that is not the first");
  }
  return frame_overhead + topic_len + headers_len + std::size_t{payload_len};
}

Result<FrameView> decode_frame(std::span<const std::byte> frame, const Limits& limits) {
  auto size = frame_size(frame, limits);
  if (!size) {
    return fail(std::move(size.error()));
  }
  const std::byte* p = frame.data();
  FrameView view;
  auto& h = view.header;
  h.type = static_cast<MessageType>(std::to_integer<std::uint8_t>(p[5]));
  h.op = static_cast<Op>(std::to_integer<std::uint8_t>(p[6]));
  h.flags = std::to_integer<std::uint8_t>(p[7]);
  h.msg_id = get_le<std::uint64_t>(p + 8);
  h.req_id = get_le<std::uint64_t>(p + 16);
  h.total_len = get_le<std::uint64_t>(p + 24);
  h.chunk_index = get_le<std::uint32_t>(p + 32);
  h.payload_len = get_le<std::uint32_t>(p + 36);
  auto topic_len = get_le<std::uint16_t>(p + 40);
  auto headers_len = get_le<std::uint16_t>(p + 42);
  if (frame.size() != *size) {
    return malformed(ids(h.msg_id, h.chunk_index) + "frame is " + std::to_string(frame.size()) +
                     " bytes, its header says " + std::to_string(*size));
  }
  std::size_t crc_at = *size - frame_trailer_size;
  auto expected = get_le<std::uint32_t>(p + crc_at);
  auto actual = crc32c(0, frame.first(crc_at));
  if (expected != actual) {
    return malformed(ids(h.msg_id, h.chunk_index) + "checksum mismatch");
  }
  const char* text = reinterpret_cast<const char*>(p + frame_header_size);
  view.topic = std::string_view(text, topic_len);
  if (!valid_utf8(view.topic)) {
    return malformed(ids(h.msg_id, h.chunk_index) + "topic is not valid UTF-8");
  }
  const std::byte* q = p + frame_header_size + topic_len;
  const std::byte* end = q + headers_len;
  while (q < end) {
    if (view.headers.size() >= limits.max_header_count) {
      return malformed(ids(h.msg_id, h.chunk_index) + "more than " + std::to_string(limits.max_header_count) +
                       " headers");
    }
    std::string kv[2];
    for (auto& s : kv) {
      if (end - q < 2) {
        return malformed(ids(h.msg_id, h.chunk_index) + "truncated header entry");
      }
      auto len = get_le<std::uint16_t>(q);
      q += 2;
      if (static_cast<std::size_t>(end - q) < len) {
        return malformed(ids(h.msg_id, h.chunk_index) + "header entry runs past the headers");
      }
      s.assign(reinterpret_cast<const char*>(q), len);
      q += len;
      if (!valid_utf8(s)) {
        return malformed(ids(h.msg_id, h.chunk_index) + "header is not valid UTF-8");
      }
    }
    if (kv[0].empty()) {
      return malformed(ids(h.msg_id, h.chunk_index) + "header with an empty key");
    }
    view.headers.emplace_back(std::move(kv[0]), std::move(kv[1]));
  }
  view.payload = std::span<const std::byte>(end, h.payload_len);
  return view;
}

}  // namespace ember::wire
