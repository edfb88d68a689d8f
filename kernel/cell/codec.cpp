// The cell network's decoder and reassembly (codec.hpp).

#include "cell/codec.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>

namespace ember::cell {

using wire::Op;

namespace {

std::string where(std::uint64_t msg_id) {
  return "msg_id " + std::to_string(msg_id) + ": ";
}

// Asks for transparent huge pages on a large buffer about to be filled: one fault per 2 MiB instead of one
// per 4 KiB, which dominated the cost of taking in a large message on a virtual machine. Advice only: a
// kernel without THP (or with it off) ignores it.
void advise_huge(std::vector<std::byte>& buffer) {
  constexpr std::uintptr_t huge = std::uintptr_t{2} << 20;
  if (buffer.capacity() < 2 * huge) {
    return;
  }
  auto begin = reinterpret_cast<std::uintptr_t>(buffer.data());
  auto end = begin + buffer.capacity();
  auto first = (begin + huge - 1) & ~(huge - 1);
  auto last = end & ~(huge - 1);
  if (last > first) {
    ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
}

bool routed(Op op) {
  return op == Op::cell_request || op == Op::cell_reply || op == Op::cell_notify;
}

}  // namespace

std::string_view to_string(Rc rc) noexcept {
  switch (rc) {
    case Rc::ok:
      return "ok";
    case Rc::timeout:
      return "timeout";
    case Rc::unreachable:
      return "unreachable";
    case Rc::too_big:
      return "too_big";
    case Rc::unauthenticated:
      return "unauthenticated";
    case Rc::shutting_down:
      return "shutting_down";
    case Rc::no_handler:
      return "no_handler";
    case Rc::handler_error:
      return "handler_error";
    case Rc::malformed:
      return "malformed";
    case Rc::cancelled:
      return "cancelled";
  }
  return "unknown";
}

std::optional<Rc> rc_from_string(std::string_view text) noexcept {
  for (int i = 0; i <= static_cast<int>(Rc::cancelled); ++i) {
    if (to_string(static_cast<Rc>(i)) == text) {
      return static_cast<Rc>(i);
    }
  }
  return std::nullopt;
}

const std::string* Message::header(std::string_view key) const {
  for (const auto& [k, v] : headers) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

bool valid_fqcn(std::string_view name) noexcept {
  if (name.empty() || name.size() > 255) {
    return false;
  }
  bool part_empty = true;
  for (char c : name) {
    if (c == '.') {
      if (part_empty) {
        return false;
      }
      part_empty = true;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '@';
    if (!ok) {
      return false;
    }
    part_empty = false;
  }
  return !part_empty;
}

Result<Packet> decode_packet(std::span<const std::byte> bytes, const wire::Limits& limits) {
  auto decoded = wire::decode_frame(bytes, limits);
  if (!decoded) {
    return fail(std::move(decoded.error()));
  }
  Packet packet;
  packet.frame = std::move(*decoded);
  const auto& h = packet.frame.header;
  if (h.op == Op::heartbeat) {
    return packet;
  }
  if (!routed(h.op)) {
    return fail(Errc::malformed,
                where(h.msg_id) + "unexpected " + std::string(wire::to_string(h.op)) + " on an open link");
  }
  if ((h.op == Op::cell_reply) != (h.req_id != 0)) {
    return fail(Errc::malformed, where(h.msg_id) + "a CELL_REPLY, and only a reply, carries a req_id");
  }
  if (!packet.first()) {
    return packet;
  }
  packet.from = packet.frame.header_value(header_from);
  packet.to = packet.frame.header_value(header_to);
  if (packet.from == nullptr || packet.to == nullptr || !valid_fqcn(*packet.from) ||
      !valid_fqcn(*packet.to)) {
    return fail(Errc::malformed, where(h.msg_id) + "missing or invalid cell.from / cell.to");
  }
  return packet;
}

Result<Assembler::Outcome> Assembler::add(const Packet& packet, std::chrono::steady_clock::time_point now,
                                          bool stream) {
  const auto& h = packet.frame.header;
  if (packet.first()) {
    if (partials_.count(h.msg_id) != 0) {
      partials_.erase(h.msg_id);
      return fail(Errc::malformed, where(h.msg_id) + "a first frame again while the message is in progress");
    }
    if (partials_.size() >= max_partials_) {
      return fail(Errc::malformed, where(h.msg_id) + "more than " + std::to_string(max_partials_) +
                                       " messages in progress at once");
    }
    Partial partial;
    partial.assembled.op = h.op;
    partial.assembled.msg_id = h.msg_id;
    partial.assembled.req_id = h.req_id;
    partial.total = h.total_len;
    partial.touched = now;
    auto& m = partial.assembled.message;
    m.from = packet.from != nullptr ? *packet.from : std::string();
    m.to = packet.to != nullptr ? *packet.to : std::string();
    m.topic = std::string(packet.frame.topic);
    m.headers = packet.frame.headers;
    std::erase_if(m.headers, [](const auto& kv) { return kv.first == header_from || kv.first == header_to; });
    partial.stream = stream;
    if (h.total_len > max_message_) {
      partial.discard = true;
    } else if (!stream) {
      // Reserved whole up to 1 GiB (address space, touched as it fills), so a large message is not copied
      // again each time its buffer doubles.
      try {
        m.payload.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(h.total_len, 1u << 30)));
      } catch (const std::bad_alloc&) {
        m.payload.reserve(64u << 20);
      }
      advise_huge(m.payload);
    }
    bool too_big = partial.discard;
    partials_.emplace(h.msg_id, std::move(partial));
    if (too_big) {
      if (packet.last()) {
        partials_.erase(h.msg_id);
      }
      return Outcome::too_big;
    }
  }
  auto it = partials_.find(h.msg_id);
  if (it == partials_.end()) {
    return Outcome::dropped;
  }
  auto& partial = it->second;
  if (h.chunk_index != partial.next_chunk || h.total_len != partial.total) {
    partials_.erase(it);
    return fail(Errc::malformed, where(h.msg_id) + "chunk " + std::to_string(h.chunk_index) +
                                     " does not continue its message; the message is dropped");
  }
  partial.next_chunk++;
  partial.touched = now;
  if (partial.discard) {
    if (packet.last()) {
      partials_.erase(it);
    }
    return Outcome::dropped;
  }
  if (partial.received + h.payload_len > partial.total) {
    partials_.erase(it);
    return fail(Errc::malformed, where(h.msg_id) + "more payload than its total_len");
  }
  partial.received += h.payload_len;
  if (!partial.stream) {
    auto& payload = partial.assembled.message.payload;
    try {
      payload.insert(payload.end(), packet.frame.payload.begin(), packet.frame.payload.end());
    } catch (const std::bad_alloc&) {
      partials_.erase(it);
      return fail(Errc::io_error, where(h.msg_id) + "out of memory while assembling it");
    }
  }
  if (!packet.last()) {
    return Outcome::more;
  }
  if (partial.received != partial.total) {
    partials_.erase(it);
    return fail(Errc::malformed, where(h.msg_id) + "ended short of its total_len");
  }
  done_ = std::move(partial.assembled);
  partials_.erase(it);
  return Outcome::done;
}

Assembled Assembler::take() {
  Assembled out = std::move(*done_);
  done_.reset();
  return out;
}

void Assembler::discard(std::uint64_t msg_id) {
  auto it = partials_.find(msg_id);
  if (it != partials_.end()) {
    it->second.discard = true;
    it->second.assembled.message.payload = {};
  }
}

std::vector<std::uint64_t> Assembler::prune(std::chrono::steady_clock::time_point before) {
  std::vector<std::uint64_t> pruned;
  std::erase_if(partials_, [&](const auto& p) {
    if (p.second.touched < before) {
      pruned.push_back(p.first);
      return true;
    }
    return false;
  });
  return pruned;
}

}  // namespace ember::cell
