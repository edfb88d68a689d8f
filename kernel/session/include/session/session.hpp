#pragma once
// The session protocol over any pipe (DESIGN §5, docs/wire-format.md): the handshake, delivery with
// acknowledgements, bounded resends and duplicate drop, heartbeats on a control lane that never waits
// behind bulk data, PEER_GONE detection, and a close that never blocks on a dead peer.
//
// One library for both ends: the client job (Role::job) and the trainer (Role::trainer).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <ember/event_bus.hpp>
#include <ember/logger.hpp>
#include <ember/pipe.hpp>
#include <ember/result.hpp>

#include "wire/frame.hpp"

namespace ember::session {

/// The knobs of a session; the job's [timeouts] and [session] tables fill them (kernel/config.hpp).
struct Settings {
  std::chrono::milliseconds launch{std::chrono::seconds(60)};  ///< for the handshake to complete
  std::chrono::milliseconds heartbeat_interval{
      std::chrono::seconds(5)};  ///< between heartbeats; also the wait for an ACK
  std::chrono::milliseconds heartbeat_timeout{
      std::chrono::seconds(30)};  ///< silence (no frame at all) before PEER_GONE
  std::chrono::milliseconds stream_idle{
      std::chrono::seconds(60)};  ///< a pipe send that makes no progress this long fails
  std::chrono::milliseconds close_bound{std::chrono::seconds(1)};  ///< best-effort farewell before closing
  int max_resends = 3;                              ///< resends without the receiver confirming more
  std::uint32_t chunk_size = 1u << 20;              ///< payload bytes per frame
  std::uint64_t max_buffered_message = 256u << 20;  ///< largest payload held in memory without a sink
  std::size_t window = 256;                         ///< messages posted but not yet acknowledged
  std::size_t dedupe_window = 4096;                 ///< msg_ids remembered for duplicate drop
  wire::Limits limits;
};

/// Which end this is.
enum class Role { job, trainer };

/// Where the session stands.
enum class State { handshake, ready, closed, peer_gone };

std::string_view to_string(State state) noexcept;

/// A message as the application sees it.
struct Message {
  wire::Op op = wire::Op::log;
  wire::MessageType type = wire::MessageType::request;
  std::uint64_t msg_id = 0;
  std::uint64_t req_id = 0;
  std::string topic;
  wire::Headers headers;
  std::uint64_t payload_size = 0;
  std::vector<std::byte> payload;  ///< empty when a sink took the payload

  /// The value of header `key`, or nullptr.
  const std::string* header(std::string_view key) const;
};

/// Where an outgoing payload's bytes come from: random access, so a resend reads them again instead of
/// the session keeping a copy.
class PayloadSource {
 public:
  virtual ~PayloadSource() = default;
  virtual std::uint64_t size() const = 0;
  /// Fills `out` with the bytes at `offset`.
  virtual Result<void> read(std::uint64_t offset, std::span<std::byte> out) const = 0;
  /// Appends to `out` the memory that holds the `size` bytes at `offset`, in order, when the source keeps
  /// them in memory that stays unchanged until the message is acknowledged or fails; the session then sends
  /// them from there without copying. False (the default) makes the session read() them.
  virtual bool view(std::uint64_t offset, std::size_t size,
                    std::vector<std::span<const std::byte>>& out) const {
    (void)offset, (void)size, (void)out;
    return false;
  }
  /// Whether the `size` bytes at `offset` can be read now. A source that is still being filled (a relay)
  /// says false until they are; the session sends other frames meanwhile and tries again when poke()d.
  virtual bool ready(std::uint64_t offset, std::size_t size) const {
    (void)offset, (void)size;
    return true;
  }
  /// The receiver holds the first `bytes` and the session will never read below them again (even to
  /// resend): a source may let them go.
  virtual void confirmed(std::uint64_t bytes) const { (void)bytes; }
};

/// A payload held in memory.
class BytesSource final : public PayloadSource {
 public:
  explicit BytesSource(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  std::uint64_t size() const override { return bytes_.size(); }
  Result<void> read(std::uint64_t offset, std::span<std::byte> out) const override;
  bool view(std::uint64_t offset, std::size_t size,
            std::vector<std::span<const std::byte>>& out) const override;

 private:
  std::vector<std::byte> bytes_;
};

/// Where an incoming payload's bytes go, chunk by chunk and in order. A sink destroyed without finish() was
/// cut off: the message will not arrive (the session ended, or the sender gave it up for another).
class PayloadSink {
 public:
  virtual ~PayloadSink() = default;
  virtual Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) = 0;
  /// The transfer restarts from offset 0 (the sender resends the message).
  virtual void reset() = 0;
  /// Every byte has arrived.
  virtual Result<void> finish() = 0;
};

/// Chooses a sink for an incoming message from its first frame (payload empty, payload_size set); null
/// keeps the payload in memory (up to Settings::max_buffered_message).
using SinkFactory = std::function<std::unique_ptr<PayloadSink>(const Message& header)>;

/// What a HELLO carried, for the job end.
struct PeerHello {
  wire::Headers headers;
};

/// Builds the admission check a job end hands its pipe: the first frame must be a HELLO with this token.
PeerAdmission admit_hello(std::string token, wire::Limits limits = {});
/// The same, and `refused` hears why each refused candidate was refused ("its HELLO carried a wrong token"),
/// so the job can say what happened to a trainer the pipe turned away.
PeerAdmission admit_hello(std::string token, std::function<void(const std::string& why)> refused,
                          wire::Limits limits = {});

/// Judges a HELLO whose token matched: a reason to refuse it (sent to the peer in HELLO_REJECTED), or
/// nullopt to accept it.
using HelloCheck = std::function<std::optional<std::string>(const PeerHello& hello)>;

class Session {
 public:
  /// Starts the session's reader and writer threads over an open pipe end.
  Session(Role role, std::unique_ptr<PipeEndpoint> pipe, Settings settings, std::shared_ptr<Logger> logger,
          EventBus* events = nullptr);
  /// Closes (best effort, bounded) and joins the threads.
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Job end: waits up to `launch` for the trainer's HELLO, checks its token and then `check`, answers
  /// HELLO_ACCEPTED (with `accept_headers`) and SESSION_READY. A wrong token, or a reason from `check`, gets
  /// HELLO_REJECTED with header `reason` (waiting up to close_bound for its receipt, so the trainer hears
  /// why before it is stopped) and Errc::rejected.
  Result<PeerHello> accept(std::string_view token, const wire::Headers& accept_headers = {},
                           const HelloCheck& check = {});
  /// Trainer end: sends HELLO with the token and `headers`, waits up to `launch` for HELLO_ACCEPTED and
  /// SESSION_READY; returns HELLO_ACCEPTED's headers.
  Result<wire::Headers> hello(std::string_view token, const wire::Headers& headers = {});

  /// Sends a message and waits until the peer acknowledged it (resending up to max_resends times).
  Result<std::uint64_t> send(wire::Op op, std::string topic, wire::Headers headers = {},
                             std::shared_ptr<const PayloadSource> payload = nullptr,
                             std::uint64_t req_id = 0);

  /// A message in flight.
  class Ticket;
  /// Queues a message and returns at once (waiting only while `window` messages are unacknowledged).
  Result<std::shared_ptr<Ticket>> post(wire::Op op, std::string topic, wire::Headers headers = {},
                                       std::shared_ptr<const PayloadSource> payload = nullptr,
                                       std::uint64_t req_id = 0);
  /// Waits for a posted message's acknowledgement; bounded by the resend budget.
  Result<std::uint64_t> wait(const std::shared_ptr<Ticket>& ticket);

  /// The next application message, or nullopt after `timeout`. Errc::peer_gone / Errc::closed once the
  /// session has ended and every message before the end was received.
  Result<std::optional<Message>> receive(std::chrono::milliseconds timeout);
  /// Routes large incoming payloads to sinks (set before the peer sends them).
  void set_sink_factory(SinkFactory factory);
  /// A payload source that said it was not ready() has more bytes now.
  void poke();

  /// Says goodbye with `farewell` (SHUTDOWN or ABORT, best effort within close_bound) and closes the pipe.
  /// Never blocks on a dead peer. Idempotent.
  void close(wire::Op farewell = wire::Op::shutdown, std::string reason = {}) noexcept;

  State state() const;
  /// Whether the peer sent ABORT (a trainer polls this while it trains).
  bool peer_aborted() const;
  /// Why the session ended, when it did not end by close().
  std::optional<Error> failure() const;
  /// Counters, for tests and progress displays.
  struct Stats {
    std::uint64_t frames_sent = 0, frames_received = 0, bytes_sent = 0, bytes_received = 0;
    std::uint64_t resends = 0, duplicates_dropped = 0, frames_rejected = 0, heartbeats_received = 0;
  };
  Stats stats() const;
  /// The pipe's description of the peer (once its first frame arrived: a socket knows it only then).
  std::string peer() const;

 private:
  struct Outgoing;
  struct Incoming;
  using Clock = std::chrono::steady_clock;
  using Lock = std::unique_lock<std::mutex>;

  bool ended() const { return state_ == State::closed || state_ == State::peer_gone; }

  // Reading. One thread at a time holds the read token and reads the pipe: an application thread that
  // waits for the session (receive, wait, post's window, the handshake) reads it itself, so the frame it
  // waits for is handled in its own thread; the reader thread reads when no application thread has for a
  // short while (receipts, heartbeats, an ABORT while the trainer trains).
  void reader_loop();
  template <class Done>
  void await(Lock& lock, Clock::time_point deadline, Done done);
  void pump(std::chrono::milliseconds timeout, bool app);
  void handle_frame(const wire::FrameView& frame, bool app);
  void check_liveness(Clock::time_point now);

  // Writing. One thread at a time holds writing_ and writes to the pipe: the writer thread, or a caller
  // whose single-frame message finds the writer idle and writes it at once (no hand-off).
  void writer_loop();
  bool write_direct(Lock& lock, const std::shared_ptr<Outgoing>& out);
  void flush_receipts(Lock& lock);
  bool send_next_chunk(Outgoing& out, Lock& lock);
  Result<void> encode_chunk(Outgoing& out, const wire::FrameHeader& header, std::uint64_t offset,
                            std::size_t len, std::string_view topic, const wire::Headers& headers);
  Result<void> write_frame(std::span<const std::byte> frame);
  void count_sent(std::size_t frames, std::size_t bytes);
  Result<void> write_batch(const std::deque<std::vector<std::byte>>& whole, bool encoded);
  std::vector<std::byte> encode_control(wire::Op op, wire::MessageType type, std::uint64_t req_id,
                                        const wire::Headers& headers = {});
  void send_control(wire::Op op, wire::MessageType type, std::uint64_t req_id, wire::Headers headers = {});
  void chunk_failed(Outgoing& out, const Error& error);

  // Messages sent whole and waiting for their receipt, ordered by the time they are due to be resent.
  void park(const std::shared_ptr<Outgoing>& out, Clock::time_point deadline);
  std::shared_ptr<Outgoing> unpark(std::uint64_t msg_id);
  void requeue(const std::shared_ptr<Outgoing>& out);
  void finish(Outgoing& out, std::optional<Error> error);

  void resume_outgoing(std::uint64_t msg_id, const std::string& at, const std::string* received);
  void note_progress(Outgoing& out, const std::string& received);
  void confirm(Outgoing& out, std::uint64_t bytes);
  std::uint32_t resend_from(const Outgoing& out) const;
  void end(State state, Error error);
  void lost(Error error);
  void announce_end();
  Result<Message> wait_for(wire::Op op, Clock::time_point deadline,
                           std::initializer_list<wire::Op> also = {});
  Result<PeerHello> reject(const std::string& reason, std::string error);
  void publish(const std::string& topic, std::map<std::string, std::string> fields);
  std::uint64_t next_id() { return next_msg_id_++; }

  const Role role_;
  std::unique_ptr<PipeEndpoint> pipe_;
  const Settings settings_;
  std::shared_ptr<Logger> log_;
  EventBus* events_;
  mutable std::mutex peer_mutex_;  // guards peer_ only; taken with or without mutex_, never around it
  std::string peer_;
  std::atomic<bool> peer_known_{false};    // peer_ was read again once the first frame arrived
  const std::chrono::milliseconds poll_;   // longest single pipe read, so liveness is checked often
  const std::chrono::milliseconds grace_;  // how long the read token stays with the application

  mutable std::mutex mutex_;
  std::condition_variable changed_;    // application threads: inbox, receipts, window, end
  std::condition_variable writer_cv_;  // the writer thread: frames to write, resends, end
  std::condition_variable reader_cv_;  // the reader thread: end
  State state_ = State::handshake;
  std::optional<Error> failure_;
  bool closing_ = false;
  bool announced_ = false;  // PEER_GONE logged and published
  bool peer_aborted_ = false;
  bool live_ = false;  // liveness is checked only once the handshake has begun on the peer's side
  Clock::time_point last_rx_;
  Clock::time_point last_tx_;
  std::uint64_t next_msg_id_ = 1;

  // Reading.
  bool read_token_ = false;          // a thread is reading the pipe
  int app_readers_ = 0;              // application threads waiting for the session
  Clock::time_point app_read_at_;    // when an application thread last gave the token back
  std::vector<std::byte> rx_frame_;  // the token holder's receive buffer, reused

  // Outgoing.
  bool writing_ = false;       // a thread is writing to the pipe; it owns tx_frame_, tx_gather_, tx_parts_
  bool writer_waits_ = false;  // the writer thread waits for a caller's write to end
  std::deque<std::vector<std::byte>> control_;   // encoded frames, sent before any bulk chunk
  std::size_t control_pending_ = 0;              // control frames queued or being written
  std::deque<std::vector<std::byte>> receipts_;  // ACKs of messages an application thread took, not sent
  std::deque<std::shared_ptr<Outgoing>> bulk_;   // messages waiting for (or in) their turn
  std::map<std::uint64_t, std::shared_ptr<Outgoing>> unacked_;  // fully sent, awaiting ACK
  std::set<std::pair<Clock::time_point, std::uint64_t>> due_;   // unacked_ by resend time
  std::size_t in_flight_ = 0;
  std::vector<std::byte> tx_frame_;
  wire::GatherFrame tx_gather_;
  std::vector<std::span<const std::byte>> tx_parts_;  // payload parts, then the whole frame's parts
  std::vector<std::span<const std::byte>> tx_iov_;
  std::vector<std::span<const std::byte>> tx_whole_;                    // frames sent whole, one part each
  std::vector<std::span<const std::span<const std::byte>>> tx_frames_;  // what one send_frames() sends

  // Incoming.
  std::unique_ptr<Incoming> incoming_;
  std::deque<Message> inbox_;
  std::set<std::uint64_t> seen_;
  std::deque<std::uint64_t> seen_order_;
  SinkFactory sink_factory_;

  Stats stats_;
  std::mutex join_mutex_;  // one close() at a time joins the threads; the others wait for it
  // The threads' ids, readable without join_mutex_ (std::thread::get_id races with a join).
  std::atomic<std::thread::id> reader_id_{};
  std::atomic<std::thread::id> writer_id_{};
  std::thread reader_;
  std::thread writer_;
};

}  // namespace ember::session
