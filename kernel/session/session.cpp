#include "session/session.hpp"

#include <algorithm>
#include <cstring>

namespace ember::session {

namespace {

using namespace std::chrono_literals;

using Clock = std::chrono::steady_clock;
using wire::Op;

// Ops that travel on the control lane: single-frame messages sent before the next bulk chunk.
bool control_lane(Op op) {
  switch (op) {
    case Op::hello:
    case Op::hello_accepted:
    case Op::hello_rejected:
    case Op::session_ready:
    case Op::task_accepted:
    case Op::task_failed:
    case Op::result_accepted:
    case Op::result_rejected:
    case Op::heartbeat:
    case Op::log:  // a metric never waits behind a large result's chunks
    case Op::abort:
    case Op::shutdown:
    case Op::ack:
      return true;
    default:
      return false;
  }
}

// A progress receipt is sent every this many chunks of a large message, so its sender knows the transfer
// advances and does not resend it merely because the receiver is slow.
constexpr std::uint32_t progress_every = 8;

// The most memory parts one frame's payload is sent from without copying; a chunk made of more (many
// small tensors) is copied into the frame instead.
constexpr std::size_t max_gather_parts = 64;

std::chrono::milliseconds ceil_ms(std::chrono::steady_clock::duration d) {
  return std::chrono::ceil<std::chrono::milliseconds>(
      std::max(d, std::chrono::steady_clock::duration::zero()));
}

std::string ms(std::chrono::milliseconds d) {
  return std::to_string(d.count()) + " ms";
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

const std::string* find_header(const wire::Headers& headers, std::string_view key) {
  for (const auto& [k, v] : headers) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

}  // namespace

std::string_view to_string(State state) noexcept {
  switch (state) {
    case State::handshake:
      return "handshake";
    case State::ready:
      return "ready";
    case State::closed:
      return "closed";
    case State::peer_gone:
      return "peer_gone";
  }
  return "unknown";
}

const std::string* Message::header(std::string_view key) const {
  return find_header(headers, key);
}

Result<void> BytesSource::read(std::uint64_t offset, std::span<std::byte> out) const {
  if (offset > bytes_.size() || out.size() > bytes_.size() - offset) {
    return fail(Errc::invalid_argument, "read past the end of a payload");
  }
  std::memcpy(out.data(), bytes_.data() + offset, out.size());
  return ok();
}

bool BytesSource::view(std::uint64_t offset, std::size_t size,
                       std::vector<std::span<const std::byte>>& out) const {
  if (offset > bytes_.size() || size > bytes_.size() - offset) {
    return false;
  }
  out.emplace_back(bytes_.data() + offset, size);
  return true;
}

PeerAdmission admit_hello(std::string token, wire::Limits limits) {
  return admit_hello(std::move(token), nullptr, limits);
}

PeerAdmission admit_hello(std::string token, std::function<void(const std::string& why)> refused,
                          wire::Limits limits) {
  return [token = std::move(token), refused = std::move(refused), limits](std::span<const std::byte> first) {
    auto why = [&]() -> std::string {
      auto frame = wire::decode_frame(first, limits);
      if (!frame) {
        return "its first frame is not a valid ember frame (" + frame.error().message + ")";
      }
      if (frame->header.op != Op::hello) {
        return "its first frame is " + std::string(wire::to_string(frame->header.op)) + ", not HELLO";
      }
      const auto* offered = frame->header_value("token");
      if (offered == nullptr) {
        return "its HELLO carried no token";
      }
      return constant_time_equal(*offered, token) ? std::string() : "its HELLO carried a wrong token";
    }();
    if (!why.empty() && refused) {
      refused(why);
    }
    return why.empty();
  };
}

struct Session::Outgoing {
  Op op = Op::log;
  wire::MessageType type = wire::MessageType::request;
  std::uint64_t msg_id = 0;
  std::uint64_t req_id = 0;
  std::string topic;
  wire::Headers headers;
  std::shared_ptr<const PayloadSource> payload;
  std::uint64_t size = 0;
  bool urgent = false;
  // Progress of the current send.
  std::uint64_t offset = 0;
  std::uint32_t chunk = 0;
  int sends = 0;
  bool parked = false;          // in unacked_ and due_
  Clock::time_point deadline;   // resend when no receipt by then (while parked)
  std::uint64_t confirmed = 0;  // bytes the receiver said it holds (progress receipts)
  bool done = false;
  std::optional<Error> error;
};

class Session::Ticket {
 public:
  std::shared_ptr<Outgoing> out;
};

struct Session::Incoming {
  Message msg;
  std::unique_ptr<PayloadSink> sink;
  std::uint64_t received = 0;
  std::uint32_t next_chunk = 0;
  bool duplicate = false;
  bool refused = false;
  std::uint32_t resume_asked = 0;  // the chunk a resume request was last sent for (0: none)
  std::uint32_t last_index = 0;    // the chunk index seen last; a smaller one means the sender went back
};

Session::Session(Role role, std::unique_ptr<PipeEndpoint> pipe, Settings settings,
                 std::shared_ptr<Logger> logger, EventBus* events)
    : role_(role),
      pipe_(std::move(pipe)),
      settings_(std::move(settings)),
      log_(std::move(logger)),
      events_(events),
      peer_(pipe_->describe()),
      poll_(std::clamp(settings_.heartbeat_interval / 4, std::chrono::milliseconds(1),
                       std::chrono::milliseconds(50))),
      grace_(std::clamp(settings_.heartbeat_interval / 8, std::chrono::milliseconds(1),
                        std::chrono::milliseconds(5))),
      last_rx_(Clock::now()),
      last_tx_(Clock::now()) {
  reader_ = std::thread([this] { reader_loop(); });
  reader_id_ = reader_.get_id();
  writer_ = std::thread([this] { writer_loop(); });
  writer_id_ = writer_.get_id();
}

Session::~Session() {
  close();
}

State Session::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

bool Session::peer_aborted() const {
  std::lock_guard lock(mutex_);
  return peer_aborted_;
}

std::optional<Error> Session::failure() const {
  std::lock_guard lock(mutex_);
  return failure_;
}

Session::Stats Session::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

std::string Session::peer() const {
  std::lock_guard lock(peer_mutex_);
  return peer_;
}

void Session::set_sink_factory(SinkFactory factory) {
  std::lock_guard lock(mutex_);
  sink_factory_ = std::move(factory);
}

void Session::publish(const std::string& topic, std::map<std::string, std::string> fields) {
  if (events_ != nullptr) {
    fields.emplace("peer", peer());
    events_->publish(Event{topic, "session", std::move(fields)});
  }
}

// Called with the mutex held: the pipe failed. After our close() or the peer's SHUTDOWN/ABORT that is the
// expected end; otherwise the peer is gone.
void Session::lost(Error error) {
  if (closing_ || failure_) {
    end(State::closed, failure_.value_or(Error{Errc::closed, "session closed"}));
  } else {
    end(State::peer_gone, std::move(error));
  }
}

// Called with the mutex held. Moves the session to its end state, failing everything still pending.
void Session::end(State state, Error error) {
  if (ended()) {
    return;
  }
  state_ = state;
  failure_ = std::move(error);
  auto fail_one = [&](Outgoing& out) {
    if (!out.done) {
      out.done = true;
      out.error = *failure_;
    }
  };
  for (auto& out : bulk_) {
    fail_one(*out);
  }
  for (auto& [id, out] : unacked_) {
    fail_one(*out);
    out->parked = false;
  }
  bulk_.clear();
  unacked_.clear();
  due_.clear();
  in_flight_ = 0;
  changed_.notify_all();
  writer_cv_.notify_all();
  reader_cv_.notify_all();
}

// Called with the mutex held: `out` is acknowledged (no error) or has failed.
void Session::finish(Outgoing& out, std::optional<Error> error) {
  if (out.done) {
    return;
  }
  out.done = true;
  out.error = std::move(error);
  in_flight_ = in_flight_ > 0 ? in_flight_ - 1 : 0;
  changed_.notify_all();
}

void Session::park(const std::shared_ptr<Outgoing>& out, Clock::time_point deadline) {
  if (out->parked) {
    due_.erase({out->deadline, out->msg_id});
  }
  out->parked = true;
  out->deadline = deadline;
  unacked_[out->msg_id] = out;
  due_.emplace(deadline, out->msg_id);
}

std::shared_ptr<Session::Outgoing> Session::unpark(std::uint64_t msg_id) {
  auto it = unacked_.find(msg_id);
  if (it == unacked_.end()) {
    return nullptr;
  }
  auto out = std::move(it->second);
  unacked_.erase(it);
  due_.erase({out->deadline, out->msg_id});
  out->parked = false;
  return out;
}

// Puts a message back in line to be sent again: an urgent one first, another behind the message under way,
// so that one's chunks stay contiguous.
void Session::requeue(const std::shared_ptr<Outgoing>& out) {
  if (out->urgent) {
    bulk_.push_front(out);
  } else {
    auto pos = (!bulk_.empty() && bulk_.front()->chunk > 0) ? std::next(bulk_.begin()) : bulk_.begin();
    bulk_.insert(pos, out);
  }
  writer_cv_.notify_one();
}

std::vector<std::byte> Session::encode_control(Op op, wire::MessageType type, std::uint64_t req_id,
                                               const wire::Headers& headers) {
  wire::FrameHeader header;
  header.type = type;
  header.op = op;
  header.flags = wire::flags::first | wire::flags::last | wire::flags::control;
  header.msg_id = next_id();
  header.req_id = req_id;
  std::vector<std::byte> frame;
  if (!wire::encode_frame(frame, header, {}, headers, {}, settings_.limits)) {
    frame.clear();
  }
  return frame;
}

// Called with the mutex held: queues a control frame for the writer thread.
void Session::send_control(Op op, wire::MessageType type, std::uint64_t req_id, wire::Headers headers) {
  auto frame = encode_control(op, type, req_id, headers);
  if (!frame.empty()) {
    control_.push_back(std::move(frame));
    control_pending_++;
    writer_cv_.notify_one();
  }
}

Result<void> Session::write_frame(std::span<const std::byte> frame) {
  auto sent = pipe_->send(frame, settings_.stream_idle);
  if (sent) {
    count_sent(1, frame.size());
  }
  return sent;
}

// Counts frames just written (any frame counts as life for the peer: heartbeats wait another interval).
void Session::count_sent(std::size_t frames, std::size_t bytes) {
  std::lock_guard lock(mutex_);
  stats_.frames_sent += frames;
  stats_.bytes_sent += bytes;
  last_tx_ = Clock::now();
}

// Writes the frames `whole` (receipts this thread owes), then, with `encoded`, the frame encode_chunk() laid
// out in tx_iov_, with one pipe call (the caller holds writing_): a small message and its receipts cost one
// system call on a socket, and its peer reads them with one. The receipts lead, so a peer that waits for
// the answer has taken in the receipt too when the answer arrives, and need not block again (nor send what
// it owes) to learn of it.
Result<void> Session::write_batch(const std::deque<std::vector<std::byte>>& whole, bool encoded) {
  tx_whole_.assign(whole.begin(), whole.end());
  tx_frames_.clear();
  std::size_t bytes = 0;
  for (const auto& frame : tx_whole_) {
    tx_frames_.emplace_back(&frame, 1);
    bytes += frame.size();
  }
  if (encoded) {
    tx_frames_.emplace_back(tx_iov_);
    for (const auto& part : tx_iov_) {
      bytes += part.size();
    }
  }
  if (tx_frames_.empty()) {
    return ok();
  }
  if (tx_frames_.size() == 1 && tx_frames_.front().size() == 1) {
    return write_frame(tx_frames_.front().front());
  }
  auto sent = tx_frames_.size() == 1 ? pipe_->send_parts(tx_frames_.front(), settings_.stream_idle)
                                     : pipe_->send_frames(tx_frames_, settings_.stream_idle);
  if (sent) {
    count_sent(tx_frames_.size(), bytes);
  }
  return sent;
}

// Lays out one frame of `out` in the writing thread's buffers (the caller holds writing_): straight from the
// source's memory when it holds those bytes there, else with the bytes read into tx_frame_. tx_iov_ lists
// the frame's parts afterwards.
Result<void> Session::encode_chunk(Outgoing& out, const wire::FrameHeader& header, std::uint64_t offset,
                                   std::size_t len, std::string_view topic, const wire::Headers& headers) {
  tx_parts_.clear();
  tx_iov_.clear();
  if (len > 0 && out.payload && out.payload->view(offset, len, tx_parts_) &&
      tx_parts_.size() <= max_gather_parts) {
    std::size_t viewed = 0;
    for (const auto& part : tx_parts_) {
      viewed += part.size();
    }
    if (viewed == len) {
      auto encoded =
          wire::encode_frame_around(tx_gather_, header, topic, headers, tx_parts_, settings_.limits);
      if (!encoded) {
        return encoded;
      }
      tx_iov_.emplace_back(tx_gather_.head);
      tx_iov_.insert(tx_iov_.end(), tx_parts_.begin(), tx_parts_.end());
      tx_iov_.emplace_back(tx_gather_.trailer);
      return ok();
    }
  }
  const PayloadSource* payload = out.payload.get();
  auto encoded = wire::encode_frame_with(
      tx_frame_, header, topic, headers, len,
      [&](std::span<std::byte> into) { return payload->read(offset, into); }, settings_.limits);
  if (!encoded) {
    return encoded;
  }
  tx_iov_.emplace_back(tx_frame_);
  return ok();
}

// Called with the mutex held: a frame of `out` could not be sent.
void Session::chunk_failed(Outgoing& out, const Error& error) {
  if (error.code == Errc::invalid_argument || error.code == Errc::io_error) {
    // This message cannot be sent (its source failed, or it breaks a limit): fail it, keep the session.
    if (out.parked) {
      unpark(out.msg_id);
    }
    finish(out, Error{error.code, "cannot send " + std::string(wire::to_string(out.op)) + " msg_id " +
                                      std::to_string(out.msg_id) + ": " + error.message});
    return;
  }
  lost(Error{error.code == Errc::timeout ? Errc::timeout : Errc::peer_gone,
             "sending to " + peer() + " failed: " + error.message});
}

// Sends the next frame of `out` (the caller holds writing_; the lock is released during the pipe write);
// true when it was the last.
bool Session::send_next_chunk(Outgoing& out, Lock& lock) {
  wire::FrameHeader header;
  header.type = out.type;
  header.op = out.op;
  header.msg_id = out.msg_id;
  header.req_id = out.req_id;
  header.total_len = out.size;
  header.chunk_index = out.chunk;
  auto len = static_cast<std::size_t>(std::min<std::uint64_t>(settings_.chunk_size, out.size - out.offset));
  bool first = out.chunk == 0;
  bool last = out.offset + len == out.size;
  header.flags = static_cast<std::uint8_t>((first ? wire::flags::first : 0) | (last ? wire::flags::last : 0) |
                                           (out.urgent ? wire::flags::control : 0));
  std::uint64_t offset = out.offset;
  lock.unlock();
  // Topic, headers and payload are not changed once posted, so they are read without the lock.
  static const wire::Headers no_headers;
  Result<void> result =
      encode_chunk(out, header, offset, len, first ? std::string_view(out.topic) : std::string_view(),
                   first ? out.headers : no_headers);
  if (result) {
    static const std::deque<std::vector<std::byte>> no_receipts;
    result = write_batch(no_receipts, true);
  }
  lock.lock();
  if (!result) {
    chunk_failed(out, result.error());
    return true;
  }
  if (out.offset != offset || out.done) {
    return false;  // rewound by a resume request (or acknowledged) while this chunk was on its way
  }
  out.offset += len;
  out.chunk++;
  return last;
}

// Writes a single-frame message from the calling thread (the writer is idle and nothing waits to go before
// it), with the receipts this thread owes. Called with the lock held and writing_ free; returns with the
// lock held.
bool Session::write_direct(Lock& lock, const std::shared_ptr<Outgoing>& out) {
  writing_ = true;
  out->sends = 1;
  // Parked before the write: its receipt may come back before this thread has the lock again.
  park(out, Clock::now() + settings_.heartbeat_interval);
  auto receipts = std::move(receipts_);
  receipts_.clear();
  wire::FrameHeader header;
  header.type = out->type;
  header.op = out->op;
  header.msg_id = out->msg_id;
  header.req_id = out->req_id;
  header.total_len = out->size;
  header.flags = static_cast<std::uint8_t>(wire::flags::first | wire::flags::last |
                                           (out->urgent ? wire::flags::control : 0));
  lock.unlock();
  auto result = encode_chunk(*out, header, 0, static_cast<std::size_t>(out->size), out->topic, out->headers);
  bool encoded = result.has_value();
  if (result) {
    result = write_batch(receipts, true);
  }
  lock.lock();
  writing_ = false;
  if (!encoded) {
    for (auto& receipt : receipts) {  // not ours to drop: the writer sends them
      control_.push_back(std::move(receipt));
      control_pending_++;
    }
    chunk_failed(*out, result.error());
  } else if (!result) {
    lost(Error{Errc::peer_gone, "sending to " + peer() + " failed: " + result.error().message});
  }
  if (!control_.empty() || !bulk_.empty() || writer_waits_) {
    writer_cv_.notify_one();
  }
  return result.has_value();
}

// Called with the mutex held by the thread that holds the read token, before it blocks reading: sends the
// receipts it owes, itself when nobody is writing, else through the writer thread.
void Session::flush_receipts(Lock& lock) {
  if (writing_) {
    while (!receipts_.empty()) {
      control_.push_back(std::move(receipts_.front()));
      receipts_.pop_front();
      control_pending_++;
    }
    writer_cv_.notify_one();
    return;
  }
  writing_ = true;
  auto receipts = std::move(receipts_);
  receipts_.clear();
  lock.unlock();
  Result<void> sent = write_batch(receipts, false);
  lock.lock();
  writing_ = false;
  if (!sent) {
    lost(Error{Errc::peer_gone, "sending to " + peer() + " failed: " + sent.error().message});
  }
  if (!control_.empty() || !bulk_.empty() || writer_waits_) {
    writer_cv_.notify_one();
  }
}

void Session::writer_loop() {
  Lock lock(mutex_);
  while (!ended()) {
    auto now = Clock::now();
    // Any frame counts as life, so a heartbeat goes only when nothing else went out for an interval. They
    // begin with the handshake: a trainer's first frame must be its HELLO (pipes admit peers by it), and
    // before the handshake nobody checks liveness anyway.
    if (live_ && !writing_ && control_.empty() && now >= last_tx_ + settings_.heartbeat_interval) {
      send_control(Op::heartbeat, wire::MessageType::request, 0);
    }
    // Messages whose receipt did not come in time are sent again, a bounded number of times.
    while (!due_.empty() && due_.begin()->first <= now) {
      auto out = unpark(due_.begin()->second);
      if (out->sends > settings_.max_resends) {
        finish(*out, Error{Errc::timeout, "no receipt from " + peer() + " for " +
                                              std::string(wire::to_string(out->op)) + " msg_id " +
                                              std::to_string(out->msg_id) + " after " +
                                              std::to_string(out->sends) + " sends"});
        continue;
      }
      out->chunk = resend_from(*out);
      out->offset = std::uint64_t{out->chunk} * settings_.chunk_size;
      stats_.resends++;
      log_->debug("resending " + std::string(wire::to_string(out->op)) + " msg_id " +
                  std::to_string(out->msg_id));
      requeue(out);
    }
    auto wake = now + settings_.heartbeat_interval;
    if (live_) {
      wake = std::max(now + std::chrono::milliseconds(1), last_tx_ + settings_.heartbeat_interval);
    }
    if (!due_.empty()) {
      wake = std::min(wake, due_.begin()->first);
    }
    if (writing_) {
      // A caller is writing a frame of its own; it wakes this thread when it is done.
      writer_waits_ = true;
      writer_cv_.wait_until(lock, wake);
      writer_waits_ = false;
      continue;
    }
    if (!control_.empty()) {
      auto frame = std::move(control_.front());
      control_.pop_front();
      writing_ = true;
      lock.unlock();
      auto sent = write_frame(frame);
      lock.lock();
      writing_ = false;
      control_pending_--;
      if (!sent) {
        lost(Error{Errc::peer_gone, "sending to " + peer() + " failed: " + sent.error().message});
      }
      if (closing_) {
        changed_.notify_all();  // close() waits for its farewell to go out
      }
      continue;
    }
    // A single-frame control-lane message goes before the next chunk of a large one.
    auto pick = std::find_if(bulk_.begin(), bulk_.end(), [](const auto& o) { return o->urgent; });
    if (pick == bulk_.end() && !bulk_.empty()) {
      pick = bulk_.begin();
    }
    if (pick != bulk_.end()) {
      auto out = *pick;
      if (out->done) {  // acknowledged (or failed) while waiting for a resend
        bulk_.erase(pick);
        continue;
      }
      if (out->payload && out->offset < out->size &&
          !out->payload->ready(out->offset, static_cast<std::size_t>(std::min<std::uint64_t>(
                                                settings_.chunk_size, out->size - out->offset)))) {
        // Its source is still being filled (a relay): wait for poke(), sending only heartbeats and control
        // frames meanwhile, so the messages behind it keep their order.
        writer_cv_.wait_until(lock, std::min(wake, now + poll_));
        continue;
      }
      writing_ = true;
      bool last = send_next_chunk(*out, lock);
      writing_ = false;
      if (ended()) {
        break;
      }
      if (last) {
        if (auto it = std::find(bulk_.begin(), bulk_.end(), out); it != bulk_.end()) {
          bulk_.erase(it);
        }
        if (!out->done) {
          out->sends++;
          park(out, Clock::now() + settings_.heartbeat_interval);
        }
      }
      continue;
    }
    writer_cv_.wait_until(lock, wake);
  }
}

void Session::check_liveness(Clock::time_point now) {
  if (!live_ || ended()) {
    return;
  }
  auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_rx_);
  if (silent > settings_.heartbeat_timeout) {
    end(State::peer_gone,
        Error{Errc::peer_gone, "PEER_GONE: nothing from " + peer() + " for " + ms(silent) +
                                   " (heartbeat_timeout " + ms(settings_.heartbeat_timeout) + ")"});
  }
}

// Reads one frame from the pipe, within `timeout`, and handles it. The caller holds the read token (not the
// lock); `app` says it is an application thread.
void Session::pump(std::chrono::milliseconds timeout, bool app) {
  auto got = pipe_->receive_into(rx_frame_, timeout);
  auto now = Clock::now();
  if (!got) {
    Lock lock(mutex_);
    if (got.error().code == Errc::malformed) {
      stats_.frames_rejected++;
      lock.unlock();
      log_->error("rejected input from " + peer() + ": " + got.error().message);
      publish("session.frame_rejected", {{"reason", got.error().message}});
      return;
    }
    lost(Error{Errc::peer_gone, "PEER_GONE: " + peer() + ": " + got.error().message});
    return;
  }
  if (*got) {
    if (!peer_known_.exchange(true)) {
      // A pipe with connections knows who the peer is only once one was admitted: its first frame.
      auto described = pipe_->describe();
      std::lock_guard lock(peer_mutex_);
      peer_ = std::move(described);
    }
    auto frame = wire::decode_frame(rx_frame_, settings_.limits);
    if (!frame) {
      {
        Lock lock(mutex_);
        stats_.frames_rejected++;
        last_rx_ = now;  // damaged, but still a sign of life
      }
      log_->error("rejected frame from " + peer() + ": " + frame.error().message);
      publish("session.frame_rejected", {{"reason", frame.error().message}});
    } else {
      {
        Lock lock(mutex_);
        last_rx_ = now;
        stats_.frames_received++;
        stats_.bytes_received += rx_frame_.size();
      }
      handle_frame(*frame, app);
      // Time spent handling the frame (a sink that waits for room, as a relay's does) is not the peer's
      // silence: the frames it sent meanwhile wait in the pipe.
      Lock lock(mutex_);
      last_rx_ = Clock::now();
      return;
    }
  }
  Lock lock(mutex_);
  check_liveness(Clock::now());
}

// Waits, with the lock held, until `done()`, the end of the session or `deadline`, reading the pipe itself
// whenever no other thread does. A thread that finds `done()` at once changes nothing.
template <class Done>
void Session::await(Lock& lock, Clock::time_point deadline, Done done) {
  if (done()) {
    return;
  }
  ++app_readers_;
  bool first = true;
  while (!done() && !ended()) {
    auto now = Clock::now();
    if (now >= deadline && !first) {
      break;
    }
    first = false;
    auto step = std::min<Clock::duration>(poll_, std::max(deadline - now, Clock::duration::zero()));
    if (read_token_) {
      if (step <= Clock::duration::zero()) {
        break;
      }
      changed_.wait_until(lock, now + step);
      continue;
    }
    read_token_ = true;
    if (!receipts_.empty()) {
      flush_receipts(lock);
    }
    if (!done() && !ended()) {
      lock.unlock();
      pump(ceil_ms(step), true);
      lock.lock();
    }
    read_token_ = false;  // app_read_at_ is read only once no application thread waits: set below
    if (app_readers_ > 1) {
      changed_.notify_all();  // another application thread may take the token
    }
  }
  --app_readers_;
  app_read_at_ = Clock::now();
  if (app_readers_ == 0 && !receipts_.empty()) {
    // The receipts this thread owes go out within grace_ through the reader thread, not after its next
    // poll: the peer may be waiting for one (the job's accept() waits for SESSION_READY's) while this
    // application works (a Python trainer importing NumPy after init()).
    reader_cv_.notify_one();
  }
}

void Session::reader_loop() {
  Lock lock(mutex_);
  while (!ended()) {
    auto now = Clock::now();
    if (read_token_ || app_readers_ > 0) {
      reader_cv_.wait_until(lock, now + poll_);
      continue;
    }
    if (now < app_read_at_ + grace_) {
      reader_cv_.wait_until(lock, app_read_at_ + grace_);
      continue;
    }
    read_token_ = true;
    // The application has not read for a while: the receipts it owes go out through the writer now.
    if (!receipts_.empty()) {
      while (!receipts_.empty()) {
        control_.push_back(std::move(receipts_.front()));
        receipts_.pop_front();
        control_pending_++;
      }
      writer_cv_.notify_one();
    }
    lock.unlock();
    pump(poll_, false);
    lock.lock();
    read_token_ = false;
    if (app_readers_ > 0) {
      changed_.notify_all();  // an application thread waits for the token
    }
  }
  if (state_ == State::peer_gone) {
    // The peer is gone: close the pipe now, so that no thread of this process stays blocked in it (a send
    // waiting for room the frozen peer will never make, a log post behind it) until a pipe timeout.
    lock.unlock();
    pipe_->close();
    lock.lock();
  }
  // Nobody reads an ended session: once an application thread still reading returns the token (within a
  // poll), this thread keeps it. A message that was arriving never will: its sink is destroyed unfinished,
  // which tells it so (a relay fails its copy).
  while (read_token_) {
    reader_cv_.wait_for(lock, poll_);
  }
  read_token_ = true;
  lock.unlock();
  if (incoming_) {
    log_->debug("msg_id " + std::to_string(incoming_->msg.msg_id) + " was cut off by the end of the session");
    incoming_.reset();
  }
  announce_end();
}

// Logs and publishes PEER_GONE once, from the reader thread, whichever thread detected it.
void Session::announce_end() {
  std::string reason;
  {
    std::lock_guard lock(mutex_);
    if (state_ != State::peer_gone || announced_) {
      return;
    }
    announced_ = true;
    reason = failure_ ? failure_->message : std::string("PEER_GONE");
  }
  log_->error(reason);
  publish("session.peer_gone", {{"reason", reason}});
}

void Session::note_progress(Outgoing& out, const std::string& received) {
  std::uint64_t held = 0;
  try {
    held = std::min<std::uint64_t>(std::stoull(received), out.size);
  } catch (const std::exception&) {
    return;
  }
  if (held > out.confirmed) {
    out.confirmed = held;
    // The resend budget bounds sends of data that does not get through: once the receiver holds more, the
    // send under way counts as the first of what remains, so a large message on a lossy link is not failed
    // for losing many different chunks.
    out.sends = std::min(out.sends, 1);
  }
  // Nothing below the chunk a resend would start from is read again, nor below the chunk the writer reads
  // next (it may be reading it now, after going back for a resend).
  const std::uint64_t keep_from =
      std::min<std::uint64_t>(resend_from(out), out.offset / settings_.chunk_size);
  confirm(out, keep_from * settings_.chunk_size);
}

// The chunk an overdue message is sent again from: the one holding the first byte the receiver has not
// confirmed (0 if it confirmed nothing), and the last chunk at the latest, whose receipt a resend is for
// when the receiver confirmed everything.
std::uint32_t Session::resend_from(const Outgoing& out) const {
  const std::uint64_t last_chunk = out.size == 0 ? 0 : (out.size - 1) / settings_.chunk_size;
  return static_cast<std::uint32_t>(std::min(out.confirmed / settings_.chunk_size, last_chunk));
}

// Called with the mutex held: tells the source of `out` what it may let go of.
void Session::confirm(Outgoing& out, std::uint64_t bytes) {
  if (out.payload) {
    out.payload->confirmed(bytes);
  }
}

void Session::poke() {
  std::lock_guard lock(mutex_);
  writer_cv_.notify_one();
}

// Called with the mutex held: the receiver lost a chunk of `msg_id` and asks to resume at chunk `at`.
void Session::resume_outgoing(std::uint64_t msg_id, const std::string& at, const std::string* received) {
  std::uint32_t chunk = 0;
  try {
    chunk = static_cast<std::uint32_t>(std::stoul(at));
  } catch (const std::exception&) {
    return;
  }
  std::shared_ptr<Outgoing> out;
  bool from_unacked = false;
  if (auto it = unacked_.find(msg_id); it != unacked_.end()) {
    out = it->second;
    from_unacked = true;
  } else {
    for (auto& o : bulk_) {
      if (o->msg_id == msg_id) {
        out = o;
      }
    }
  }
  std::uint64_t offset = std::uint64_t{chunk} * settings_.chunk_size;
  if (out && received != nullptr) {
    note_progress(*out, *received);
  }
  if (!out || out->done || chunk == 0 || offset >= out->size) {
    return;  // stale
  }
  if (chunk > out->chunk) {
    // The receiver holds more than this sender has sent again since going back: skip what it holds.
    out->chunk = chunk;
    out->offset = offset;
    writer_cv_.notify_one();
    return;
  }
  if (++out->sends > settings_.max_resends + 1) {
    if (from_unacked) {
      unpark(msg_id);
    }
    finish(*out,
           Error{Errc::timeout, "too many chunks of " + std::string(wire::to_string(out->op)) + " msg_id " +
                                    std::to_string(msg_id) + " lost on the way to " + peer()});
    return;
  }
  stats_.resends++;
  out->offset = offset;
  out->chunk = chunk;
  if (from_unacked) {
    unpark(msg_id);
    requeue(out);
  }
  writer_cv_.notify_one();
}

void Session::handle_frame(const wire::FrameView& frame, bool app) {
  const auto& h = frame.header;
  if (h.op == Op::heartbeat) {
    std::lock_guard lock(mutex_);
    stats_.heartbeats_received++;
    return;
  }
  if (h.op == Op::ack) {
    std::lock_guard lock(mutex_);
    if (const auto* resume = frame.header_value("resume")) {
      resume_outgoing(h.req_id, *resume, frame.header_value("received"));
      return;
    }
    const auto* received = frame.header_value("received");
    if (auto it = unacked_.find(h.req_id); it != unacked_.end()) {
      auto out = it->second;
      if (received != nullptr) {
        park(out, Clock::now() + settings_.heartbeat_interval);
        note_progress(*out, *received);
        return;
      }
      unpark(h.req_id);
      confirm(*out, out->size);
      finish(*out, std::nullopt);
      return;
    }
    for (auto& out : bulk_) {
      if (out->msg_id != h.req_id || out->done) {
        continue;
      }
      if (received != nullptr) {
        note_progress(*out, *received);  // a message still being sent
      } else {
        // A receipt for a message queued for resending: it arrived after all.
        confirm(*out, out->size);
        finish(*out, std::nullopt);
      }
    }
    return;
  }
  bool first = (h.flags & wire::flags::first) != 0;
  bool last = (h.flags & wire::flags::last) != 0;
  bool single = first && last;
  // A single-frame message may arrive between the chunks of a large one; it leaves that one alone.
  std::unique_ptr<Incoming> single_holder;
  std::unique_ptr<Incoming>* slot = &incoming_;
  if (single) {
    slot = &single_holder;
  }
  // The first chunk of the message under way again (duplicated, or sent again from the start) is a repeated
  // chunk like any other: what arrived is kept.
  const bool first_again = first && !single && incoming_ && incoming_->msg.msg_id == h.msg_id &&
                           incoming_->next_chunk > 0 && h.total_len == incoming_->msg.payload_size;
  if (first && !first_again) {
    if (!single && incoming_) {
      if (incoming_->msg.msg_id != h.msg_id) {
        log_->debug("msg_id " + std::to_string(incoming_->msg.msg_id) + " abandoned mid-transfer; msg_id " +
                    std::to_string(h.msg_id) + " begins");
      }
      if (incoming_->sink) {
        incoming_->sink->reset();
      }
      incoming_.reset();
    }
    auto in = std::make_unique<Incoming>();
    in->msg.op = h.op;
    in->msg.type = h.type;
    in->msg.msg_id = h.msg_id;
    in->msg.req_id = h.req_id;
    in->msg.topic = std::string(frame.topic);
    in->msg.headers = frame.headers;
    in->msg.payload_size = h.total_len;
    SinkFactory factory;
    {
      std::lock_guard lock(mutex_);
      in->duplicate = seen_.count(h.msg_id) != 0;
      factory = sink_factory_;
    }
    if (!in->duplicate && h.total_len > 0) {
      if (!single && factory) {
        in->sink = factory(in->msg);
      }
      if (!in->sink) {
        if (h.total_len > settings_.max_buffered_message) {
          in->refused = true;
          log_->error("refusing " + std::string(wire::to_string(h.op)) + " msg_id " +
                      std::to_string(h.msg_id) + " from " + peer() + ": " + std::to_string(h.total_len) +
                      " bytes and no sink for payloads over max_buffered_message");
        } else {
          in->msg.payload.reserve(static_cast<std::size_t>(h.total_len));
        }
      }
    }
    *slot = std::move(in);
  } else if (first_again || !incoming_ || incoming_->msg.msg_id != h.msg_id ||
             incoming_->next_chunk != h.chunk_index) {
    // A gap in the message under way: keep what arrived and ask the sender to resume at the first missing
    // chunk, once per gap and again each time the sender has gone back. Repeated chunks are ignored.
    if (incoming_ && incoming_->msg.msg_id == h.msg_id) {
      if (h.chunk_index <= incoming_->last_index) {
        incoming_->resume_asked = 0;
      }
      incoming_->last_index = h.chunk_index;
    }
    if (!incoming_ || incoming_->msg.msg_id != h.msg_id) {
      // The last frame of a message delivered already (its receipt was lost): acknowledge it again.
      std::lock_guard lock(mutex_);
      if (last && seen_.count(h.msg_id) != 0) {
        stats_.duplicates_dropped++;
        send_control(Op::ack, wire::MessageType::reply, h.msg_id);
      }
      return;
    }
    if (h.chunk_index > incoming_->next_chunk && incoming_->resume_asked != incoming_->next_chunk) {
      incoming_->resume_asked = incoming_->next_chunk;
      log_->debug("gap in msg_id " + std::to_string(h.msg_id) + ": expected chunk " +
                  std::to_string(incoming_->next_chunk) + ", got " + std::to_string(h.chunk_index));
      std::lock_guard lock(mutex_);
      send_control(Op::ack, wire::MessageType::reply, h.msg_id,
                   {{"resume", std::to_string(incoming_->next_chunk)},
                    {"received", std::to_string(incoming_->received)}});
    }
    return;
  }
  auto& in = **slot;
  if (in.msg.op != h.op || in.received + frame.payload.size() > in.msg.payload_size) {
    log_->error("inconsistent chunk " + std::to_string(h.chunk_index) + " of msg_id " +
                std::to_string(h.msg_id) + " from " + peer());
    if (in.sink) {
      in.sink->reset();
    }
    slot->reset();
    return;
  }
  if (!in.duplicate && !in.refused && !frame.payload.empty()) {
    if (in.sink) {
      auto written = in.sink->write(in.received, frame.payload);
      if (!written) {
        log_->error("sink of msg_id " + std::to_string(h.msg_id) + " failed: " + written.error().message);
        in.refused = true;
      }
    } else {
      in.msg.payload.insert(in.msg.payload.end(), frame.payload.begin(), frame.payload.end());
    }
  }
  in.received += frame.payload.size();
  in.last_index = h.chunk_index;
  in.next_chunk++;
  if (!last) {
    if (!in.duplicate && in.next_chunk % progress_every == 0) {
      std::lock_guard lock(mutex_);
      send_control(Op::ack, wire::MessageType::reply, h.msg_id, {{"received", std::to_string(in.received)}});
    }
    return;
  }
  std::unique_ptr<Incoming> done = std::move(*slot);
  if (done->received != done->msg.payload_size) {
    log_->error("msg_id " + std::to_string(h.msg_id) + " ended at " + std::to_string(done->received) +
                " of " + std::to_string(done->msg.payload_size) + " bytes");
    if (done->sink) {
      done->sink->reset();
    }
    return;
  }
  if (done->refused) {
    return;  // no receipt: the sender's send fails after its resends
  }
  if (done->sink && !done->duplicate) {
    auto finished = done->sink->finish();
    if (!finished) {
      log_->error("sink of msg_id " + std::to_string(h.msg_id) + " failed: " + finished.error().message);
      return;
    }
  }
  std::lock_guard lock(mutex_);
  if (app && !done->duplicate) {
    // Owed, not sent yet: the application thread that takes this message will likely answer it, and the
    // receipt goes out with its answer (one write), or it sends the receipt before it blocks.
    if (auto receipt = encode_control(Op::ack, wire::MessageType::reply, h.msg_id); !receipt.empty()) {
      receipts_.push_back(std::move(receipt));
    }
  } else {
    send_control(Op::ack, wire::MessageType::reply, h.msg_id);
  }
  if (done->duplicate) {
    stats_.duplicates_dropped++;
    return;
  }
  seen_.insert(h.msg_id);
  seen_order_.push_back(h.msg_id);
  while (seen_order_.size() > settings_.dedupe_window) {
    seen_.erase(seen_order_.front());
    seen_order_.pop_front();
  }
  switch (h.op) {
    case Op::hello:
      if (role_ == Role::job) {
        live_ = true;  // liveness starts with the trainer's HELLO; before it, the launch timeout rules
      }
      break;
    case Op::hello_accepted:
      if (role_ == Role::trainer) {
        live_ = true;
      }
      break;
    case Op::session_ready:
      if (role_ == Role::trainer && state_ == State::handshake) {
        state_ = State::ready;
      }
      break;
    case Op::shutdown:
    case Op::abort: {
      peer_aborted_ = peer_aborted_ || h.op == Op::abort;
      const auto* reason = done->msg.header("reason");
      failure_ =
          Error{Errc::closed, "the peer sent " + std::string(wire::to_string(h.op)) +
                                  (reason != nullptr && !reason->empty() ? ": " + *reason : std::string())};
      break;
    }
    case Op::cell_hello:
    case Op::cell_welcome:
    case Op::cell_refused:
    case Op::cell_request:
    case Op::cell_reply:
    case Op::cell_notify:
      return;  // the cell network's ops are not the session's: never delivered to the application
    default:
      break;
  }
  inbox_.push_back(std::move(done->msg));
  if (app_readers_ > (app ? 1 : 0)) {
    changed_.notify_all();
  }
}

Result<std::shared_ptr<Session::Ticket>> Session::post(Op op, std::string topic, wire::Headers headers,
                                                       std::shared_ptr<const PayloadSource> payload,
                                                       std::uint64_t req_id) {
  if (op == Op::ack || op == Op::heartbeat) {
    return fail(Errc::invalid_argument, "ACK and HEARTBEAT are sent by the session itself");
  }
  auto out = std::make_shared<Outgoing>();
  out->op = op;
  out->type = req_id != 0 ? wire::MessageType::reply : wire::MessageType::request;
  out->req_id = req_id;
  out->topic = std::move(topic);
  out->headers = std::move(headers);
  out->payload = std::move(payload);
  out->size = out->payload ? out->payload->size() : 0;
  out->urgent = control_lane(op) && out->size <= settings_.chunk_size;
  if (out->size > settings_.limits.max_message) {
    return fail(Errc::invalid_argument,
                "payload of " + std::to_string(out->size) + " bytes exceeds max_message");
  }
  Lock lock(mutex_);
  // Back-pressure: at most `window` messages in flight. Receipts or the resend budget always end the wait.
  await(lock, Clock::time_point::max(), [&] { return in_flight_ < settings_.window || closing_; });
  if (ended()) {
    return fail(*failure_);
  }
  if (closing_) {
    return fail(Errc::closed, "the session is closing");
  }
  out->msg_id = next_id();
  in_flight_++;
  auto ticket = std::make_shared<Ticket>();
  ticket->out = out;
  if (out->size <= settings_.chunk_size && !writing_ && control_.empty() && bulk_.empty() &&
      (!out->payload || out->payload->ready(0, static_cast<std::size_t>(out->size)))) {
    // The writer is idle and nothing waits to go first: this thread writes the frame itself.
    write_direct(lock, out);
    return ticket;
  }
  // Receipts this thread owes go before it, through the writer.
  while (!receipts_.empty()) {
    control_.push_back(std::move(receipts_.front()));
    receipts_.pop_front();
    control_pending_++;
  }
  bulk_.push_back(std::move(out));
  writer_cv_.notify_one();
  return ticket;
}

Result<std::uint64_t> Session::wait(const std::shared_ptr<Ticket>& ticket) {
  Lock lock(mutex_);
  await(lock, Clock::time_point::max(), [&] { return ticket->out->done; });
  if (!ticket->out->done) {
    return fail(failure_.value_or(Error{Errc::closed, "session closed"}));
  }
  if (ticket->out->error) {
    return fail(*ticket->out->error);
  }
  return ticket->out->msg_id;
}

Result<std::uint64_t> Session::send(Op op, std::string topic, wire::Headers headers,
                                    std::shared_ptr<const PayloadSource> payload, std::uint64_t req_id) {
  auto ticket = post(op, std::move(topic), std::move(headers), std::move(payload), req_id);
  if (!ticket) {
    return fail(std::move(ticket.error()));
  }
  return wait(*ticket);
}

Result<std::optional<Message>> Session::receive(std::chrono::milliseconds timeout) {
  Lock lock(mutex_);
  auto now = Clock::now();
  auto deadline = timeout >= std::chrono::hours(24 * 365) ? Clock::time_point::max() : now + timeout;
  await(lock, deadline, [&] { return !inbox_.empty(); });
  if (!inbox_.empty()) {
    auto msg = std::move(inbox_.front());
    inbox_.pop_front();
    return std::optional<Message>(std::move(msg));
  }
  if (ended()) {
    return fail(*failure_);
  }
  return std::optional<Message>();
}

Result<Message> Session::wait_for(Op op, Clock::time_point deadline, std::initializer_list<Op> also) {
  Lock lock(mutex_);
  auto match = [&] {
    return std::find_if(inbox_.begin(), inbox_.end(), [&](const Message& m) {
      return m.op == op || std::find(also.begin(), also.end(), m.op) != also.end();
    });
  };
  await(lock, deadline, [&] { return match() != inbox_.end(); });
  if (auto it = match(); it != inbox_.end()) {
    auto msg = std::move(*it);
    inbox_.erase(it);
    return msg;
  }
  if (ended()) {
    return fail(*failure_);
  }
  return fail(Errc::timeout, "no " + std::string(wire::to_string(op)) + " from " + peer() +
                                 " within the launch timeout (" + ms(settings_.launch) + ")");
}

// Answers a HELLO with HELLO_REJECTED and waits, at most close_bound, for its receipt: the peer then knows
// why before the job stops it.
Result<PeerHello> Session::reject(const std::string& reason, std::string error) {
  auto ticket = post(Op::hello_rejected, {}, {{"reason", reason}});
  if (ticket) {
    Lock lock(mutex_);
    await(lock, Clock::now() + settings_.close_bound, [&] { return (*ticket)->out->done; });
  }
  return fail(Errc::rejected, std::move(error));
}

Result<PeerHello> Session::accept(std::string_view token, const wire::Headers& accept_headers,
                                  const HelloCheck& check) {
  auto deadline = Clock::now() + settings_.launch;
  auto hello = wait_for(Op::hello, deadline);
  if (!hello) {
    return fail(std::move(hello.error()));
  }
  const auto* offered = hello->header("token");
  if (offered == nullptr || !constant_time_equal(*offered, token)) {
    return reject("wrong token",
                  "HELLO from " + peer() + " carried " + (offered == nullptr ? "no token" : "a wrong token"));
  }
  PeerHello peer_hello{hello->headers};
  if (check) {
    if (auto refusal = check(peer_hello)) {
      return reject(*refusal, "HELLO from " + peer() + " rejected: " + *refusal);
    }
  }
  auto accepted = send(Op::hello_accepted, {}, accept_headers);
  if (!accepted) {
    return fail(std::move(accepted.error()));
  }
  auto ready = send(Op::session_ready, {});
  if (!ready) {
    return fail(std::move(ready.error()));
  }
  {
    std::lock_guard lock(mutex_);
    if (state_ == State::handshake) {
      state_ = State::ready;
    }
  }
  log_->debug("session with " + peer() + " ready");
  return peer_hello;
}

Result<wire::Headers> Session::hello(std::string_view token, const wire::Headers& headers) {
  auto deadline = Clock::now() + settings_.launch;
  wire::Headers all = headers;
  all.emplace_back("token", std::string(token));
  auto ticket = post(Op::hello, {}, std::move(all));
  if (!ticket) {
    return fail(std::move(ticket.error()));
  }
  auto answer = wait_for(Op::hello_accepted, deadline, {Op::hello_rejected});
  if (!answer) {
    return fail(std::move(answer.error()));
  }
  if (answer->op == Op::hello_rejected) {
    const auto* reason = answer->header("reason");
    return fail(Errc::rejected,
                "the job rejected our HELLO" + (reason != nullptr ? ": " + *reason : std::string()));
  }
  auto ready = wait_for(Op::session_ready, deadline);
  if (!ready) {
    return fail(std::move(ready.error()));
  }
  return answer->headers;
}

void Session::close(Op farewell, std::string reason) noexcept {
  try {
    Lock lock(mutex_);
    if (!closing_) {
      closing_ = true;
      if (state_ == State::ready || state_ == State::handshake) {
        // Receipts still owed go first, then the farewell.
        while (!receipts_.empty()) {
          control_.push_back(std::move(receipts_.front()));
          receipts_.pop_front();
          control_pending_++;
        }
        wire::Headers headers;
        if (!reason.empty()) {
          headers.emplace_back("reason", reason);
        }
        send_control(farewell, wire::MessageType::request, 0, std::move(headers));
        // Best effort: give the writer close_bound to put the farewell on the wire, then go regardless.
        changed_.wait_for(lock, settings_.close_bound, [&] { return control_pending_ == 0 || ended(); });
      }
      end(State::closed, Error{Errc::closed, "session closed"});
    }
    lock.unlock();
    pipe_->close();  // wakes a thread blocked in the pipe
    // The session's own threads never join: one closing from inside would wait for a close() that waits
    // for it. Any other caller joins under join_mutex_, so two threads closing at once do not both join one
    // thread (undefined, and seen to hang); the second returns once the first has joined.
    const auto self = std::this_thread::get_id();
    if (reader_id_.load() == self || writer_id_.load() == self) {
      return;
    }
    std::lock_guard join_lock(join_mutex_);
    if (reader_.joinable()) {
      reader_.join();
    }
    if (writer_.joinable()) {
      writer_.join();
    }
  } catch (...) {
    // close() must not throw; the threads end on their own once the pipe is closed.
  }
}

}  // namespace ember::session
