#pragma once
// The cell network (DESIGN §5.1, docs/wire-format.md §7): endpoints named by FQCN ("server", "site-1",
// "site-1.<job_id>", "site-1.<job_id>.trainer") joined as a tree over gRPC bidirectional streams, routing
// requests, replies, fire-and-forget messages and broadcasts by name. Every message travels as frames of the
// wire format, chunked under a per-packet cap, with flow control at every hop so a relaying cell never holds
// a whole large message.
//
// This header includes no gRPC header: only cell.cpp's transport file does.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <ember/logger.hpp>
#include <ember/result.hpp>

#include "wire/frame.hpp"

namespace ember::cell {

/// How a request, a notify or one target of a broadcast ended. Stable names (to_string) travel in replies.
enum class Rc {
  ok,
  timeout,          ///< no answer within the caller's bound
  unreachable,      ///< no route to the target, or a link on the way broke while the request was out
  too_big,          ///< the message exceeds a cell's max_message_bytes
  unauthenticated,  ///< a link was refused: certificate, name or token
  shutting_down,    ///< the local cell, or one on the way, is stopping
  no_handler,       ///< the target has no handler for the topic
  handler_error,    ///< the target's handler failed (the reason says why)
  malformed,        ///< a frame that breaks the wire format, or a message that breaks the cell rules
  cancelled,        ///< the caller's stop token was triggered
};

std::string_view to_string(Rc rc) noexcept;
/// The Rc named `text`, or nullopt.
std::optional<Rc> rc_from_string(std::string_view text) noexcept;

/// A message as a handler or a caller sees it.
struct Message {
  std::string from;   ///< the sender's FQCN
  std::string to;     ///< the target's FQCN
  std::string topic;  ///< what the message is about: the handler it goes to
  wire::Headers headers;
  std::vector<std::byte> payload;

  const std::string* header(std::string_view key) const;
};

/// The outcome of a request: rc, a reason when rc is not ok, and the answer when it is.
struct Reply {
  Rc rc = Rc::ok;
  std::string reason;  ///< names the peer and the cause ("site-2: no route (not connected)")
  Message message;     ///< the answer (from = the target), when rc is ok

  bool ok() const noexcept { return rc == Rc::ok; }
  static Reply error(Rc rc, std::string reason) {
    Reply reply;
    reply.rc = rc;
    reply.reason = std::move(reason);
    return reply;
  }
};

/// Which lane a message takes. Small single-packet messages normally go ahead of queued bulk packets
/// (automatic); `ordered` keeps a message behind everything sent before it on the same path, for senders
/// whose messages must arrive in the order they were sent (a pipe's frames).
enum class Lane { automatic, ordered };

/// One target's result of a broadcast.
struct TargetReply {
  std::string target;
  Reply reply;
};

/// Answers a request: its Reply goes back to the sender (a non-ok rc as an error with its reason). For a
/// notify the return value is dropped. An exception becomes rc handler_error.
/// The handler may take the request's payload (move it out): the message is its own.
using Handler = std::function<Reply(Message& request)>;

/// Which thread runs a topic's handler (or its sink's finish()).
enum class Dispatch {
  /// One of the cell's handler threads (Config::handler_threads): the handler may block, wait, or send
  /// requests of its own. The reader hands the message over (a thread wake per message).
  workers,
  /// The reader thread of the link the message came on, and its reply is written from there: no hand-off,
  /// for small, quick answers (an echo, a status, a counter). The contract: such a handler returns promptly
  /// and never waits on the network. While it runs nothing else is read from that link, so
  ///   - request() and broadcast() called from it fail at once with rc handler_error (their reply may
  ///     have to come in on this very reader: a deadlock), and
  ///   - a notify() or a large reply may wait for room on a link's queue (bounded by its timeout, or by
  ///     Config::stall_timeout), holding up the link meanwhile; keep replies small.
  /// stop() waits for a running inline handler to return.
  inline_reader,
};

/// Takes a message's payload chunk by chunk as its frames arrive, instead of whole: nothing is gathered,
/// so a receiver that moves a payload on (to a file, a pooled buffer, a job) never holds it whole nor
/// touches fresh memory for it. write() runs on the reader thread of the link the message arrives on,
/// with the contract of Dispatch::inline_reader (never wait on the network; a slow write holds up the link,
/// which the transport's flow control passes back to the sender). finish() runs as the topic's Dispatch
/// says. A sink sees either finish() or cancel(), never both, and never a call after either (nor after a
/// write() that failed); cancel() may come from another thread than write(), but never while a write()
/// runs. The cell destroys the sink after its last call.
class MessageSink {
 public:
  virtual ~MessageSink() = default;
  /// The next bytes of the payload, in order. An error drops the rest of the message; a request is
  /// answered rc handler_error with the error's message.
  virtual Result<void> write(std::span<const std::byte> bytes) = 0;
  /// Every byte has arrived: the answer, as a Handler's. `message` has every field but the payload
  /// (empty: the sink had it).
  virtual Reply finish(Message& message) = 0;
  /// The message will not complete: its link broke, a frame was malformed, no frame came for
  /// Config::stall_timeout, or the cell is stopping. `why` says which.
  virtual void cancel(const std::string& why) noexcept = 0;
};

/// Opens a sink for a message from its first frame: `head` has every field but the payload, whose size is
/// `size`. Runs on the link's reader thread (the inline contract). An error refuses the message; a request
/// is answered rc handler_error with the error's message.
using SinkFactory =
    std::function<Result<std::unique_ptr<MessageSink>>(const Message& head, std::uint64_t size)>;

/// Where a certificate, key and CA come from (PEM files), for mutual TLS.
struct TlsFiles {
  std::filesystem::path ca;    ///< the project's root CA certificate
  std::filesystem::path cert;  ///< this cell's certificate
  std::filesystem::path key;   ///< its private key (0600)
};

/// What a connecting child claims in its hello, and what the link proved.
struct PeerClaim {
  std::string fqcn;       ///< the name it claims
  std::string cert_name;  ///< the common name of its client certificate (empty on a clear-text link)
  std::string token;      ///< the job token it presented (empty if none)
  std::string address;    ///< where it connects from ("ipv4:127.0.0.1:53422")
};

/// Decides whether a child may join under the name it claims: nullopt admits it, a string refuses it and
/// says why (the child is told, and the refusal is logged on both sides).
using Admission = std::function<std::optional<std::string>(const PeerClaim& claim)>;

/// A cell's settings; site and project files fill them (docs/config-reference.md, [cell]).
struct Config {
  std::string fqcn;         ///< this cell's name
  std::string listen;       ///< "host:port" to accept children on ("127.0.0.1:0" picks a port); empty: none
  std::string parent;       ///< "host:port" of the parent to connect to; empty: this is a root
  std::string parent_name;  ///< the name the parent's certificate must carry (TLS)
  std::optional<TlsFiles> tls;  ///< mutual TLS; nullopt only with insecure
  bool insecure = false;        ///< clear text (a warning is logged at every start)
  std::string token;            ///< presented to the parent in the hello (a job's cell token)
  /// The name this cell's own certificate must carry; empty: the first part of `fqcn` (a job presents its
  /// site's certificate). An admin's cell, named "admin-<random>", sets its admin name.
  std::string certificate_name;
  /// Check this cell's own certificate before connecting (CA, validity, name). Tests turn it off to see
  /// how the peer refuses a bad one; nothing else should.
  bool check_own_certificate = true;

  std::uint32_t packet_bytes = 4u << 20;              ///< cap of one gRPC message (one frame)
  std::uint64_t max_message_bytes = 4ull << 30;       ///< largest whole message this cell accepts
  std::uint64_t queue_bytes = 8u << 20;               ///< bulk bytes queued per link before senders wait
  std::chrono::milliseconds connect_timeout{5000};    ///< one attempt to reach the parent, hello included
  std::chrono::milliseconds backoff_initial{200};     ///< first wait before reconnecting
  std::chrono::milliseconds backoff_max{5000};        ///< the longest wait between attempts (before jitter)
  std::chrono::milliseconds keepalive{10000};         ///< transport ping after this long without traffic
  std::chrono::milliseconds keepalive_timeout{5000};  ///< a ping unanswered this long: the link is dead
  std::chrono::milliseconds stall_timeout{60000};     ///< a relay waits at most this long for room downstream
  int handler_threads = 4;                            ///< requests handled at once
};

/// A peer seen on a link, for status displays.
struct PeerInfo {
  std::string fqcn;
  std::string address;
  bool connected = false;
  std::chrono::system_clock::time_point last_contact;
};

/// Link events: a child joined or left, the parent link came up or went down.
struct LinkEvent {
  enum class Kind { child_joined, child_left, parent_up, parent_down, refused } kind;
  std::string peer;    ///< FQCN (or the claimed one for refused)
  std::string detail;  ///< why (for down and refused)
};
using LinkObserver = std::function<void(const LinkEvent&)>;

class CellImpl;

/// One endpoint of the cell network. Thread-safe: every call may come from any thread.
class Cell {
 public:
  /// Checks the config (names, files, certificates) and starts listening and connecting. Errors name the
  /// file or setting: an own certificate that expired or that the CA did not sign is refused here.
  static Result<std::unique_ptr<Cell>> start(Config config, std::shared_ptr<Logger> logger,
                                             LinkObserver observer = {});
  ~Cell();
  Cell(const Cell&) = delete;
  Cell& operator=(const Cell&) = delete;

  const std::string& fqcn() const noexcept;
  /// The address children reach this cell on, with the chosen port ("127.0.0.1:40123"); empty if none.
  std::string listen_address() const;

  /// Who may join this cell's listener. The default admits, on a TLS link: a child whose certificate names
  /// it (a site of the server's project), or any FQCN under this cell's own name whose certificate is this
  /// cell's name and whose token matches a job admitted with admit_job().
  void set_admission(Admission admission);
  /// The sites (first-level names) a root cell admits; empty admits any name its CA signed.
  void set_allowed_children(std::vector<std::string> names);
  /// Lets children named "<this>.<job_id>" and below join with `token`.
  void admit_job(const std::string& job_id, const std::string& token);
  void revoke_job(const std::string& job_id);

  /// Routes requests and notifies for `topic` to `handler` (replacing any earlier handler or sink), on the
  /// thread `dispatch` says (see Dispatch for the inline contract).
  void handle(const std::string& topic, Handler handler, Dispatch dispatch = Dispatch::workers);
  /// Routes requests and notifies for `topic` to sinks made by `factory` (replacing any earlier handler or
  /// sink): each message's payload is streamed into its own sink as it arrives, and the sink's finish()
  /// answers, on the thread `dispatch` says. Replies to this cell's own requests are always whole.
  void handle_stream(const std::string& topic, SinkFactory factory, Dispatch dispatch = Dispatch::workers);

  /// Sends a request and waits at most `timeout` for its reply. Never throws; never waits longer than
  /// `timeout`, nor past `stop` (rc cancelled) or stop() (rc shutting_down).
  Reply request(const std::string& to, const std::string& topic, const wire::Headers& headers,
                std::span<const std::byte> payload, std::chrono::milliseconds timeout,
                std::stop_token stop = {});
  /// Sends a message with no reply: ok once its last packet is queued on the first link (best effort
  /// beyond it).
  Reply notify(const std::string& to, const std::string& topic, const wire::Headers& headers,
               std::span<const std::byte> payload, std::chrono::milliseconds timeout,
               std::stop_token stop = {}, Lane lane = Lane::automatic);
  /// Sends one request to each target, all under one `timeout`: a result per target, in their order.
  std::vector<TargetReply> broadcast(const std::vector<std::string>& targets, const std::string& topic,
                                     const wire::Headers& headers, std::span<const std::byte> payload,
                                     std::chrono::milliseconds timeout, std::stop_token stop = {});

  /// Waits until the parent link is up (true), or `timeout` passes (false).
  bool wait_parent(std::chrono::milliseconds timeout, std::stop_token stop = {});
  /// Why the parent link is down (the last refusal or connection error), or empty.
  std::string parent_error() const;
  /// The children connected now, and those that left (connected = false), with their last contact.
  std::vector<PeerInfo> children() const;

  /// Waits until every packet queued on this cell's links was handed to the transport, or `timeout`
  /// passes (false). A farewell before stop(), which drops what is still queued.
  bool drain(std::chrono::milliseconds timeout);

  /// Stops: pending requests end with shutting_down, links close, threads join. Bounded (about a second);
  /// idempotent.
  void stop() noexcept;

 private:
  explicit Cell(std::unique_ptr<CellImpl> impl);
  std::unique_ptr<CellImpl> impl_;
};

/// Whether `name` is a valid FQCN: dot-separated parts of [A-Za-z0-9_@-], none empty, at most 255 bytes.
bool valid_fqcn(std::string_view name) noexcept;

}  // namespace ember::cell
