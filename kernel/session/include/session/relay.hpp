#pragma once
// A relay between two sessions (DESIGN §5): a message arriving on one session (upstream) is sent on another
// (downstream) while it streams, chunk by chunk and undecoded, so the process in the middle (the client job
// between the server and its trainer) never holds the whole payload. What it holds is bounded by a window:
// the bytes received from upstream that the downstream peer has not confirmed yet (a resend downstream may
// still need them).
//
//   Relay relay(downstream, [](const Message& m) -> std::optional<std::uint64_t> {
//     return m.op == Op::task_ready ? std::optional<std::uint64_t>(0) : std::nullopt;
//   });
//   upstream.set_sink_factory(relay.sink_factory());
//   ... upstream.receive() returns the TASK_READY (its payload went downstream while it arrived) ...
//   auto sent = relay.forward(message);  // waits for the downstream copy's receipt

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "session/session.hpp"

namespace ember::session {

class Relay {
 public:
  struct Options {
    std::uint64_t window = std::uint64_t{32} << 20;  ///< bytes held at most (keep it above 8 chunks)
    std::chrono::milliseconds stall{std::chrono::seconds(60)};  ///< upstream waits this long for room
  };
  /// Which upstream messages go downstream: nullopt keeps a message here; a value forwards it with that
  /// req_id downstream (0: a request; the relay cannot map one session's msg_ids to the other's).
  using Route = std::function<std::optional<std::uint64_t>(const Message& header)>;

  Relay(Session& downstream, Route route, Options options);
  Relay(Session& downstream, Route route) : Relay(downstream, std::move(route), Options{}) {}
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  /// The sink factory to install on the upstream session. A routed message of several frames is posted
  /// downstream at its first frame (same op, topic and headers) and streamed there as it arrives; other
  /// messages go to `others` (or stay in memory when it is empty).
  SinkFactory sink_factory(SinkFactory others = {});

  /// Call with each routed message upstream's receive() returns: waits until its downstream copy is
  /// acknowledged and returns that copy's msg_id, or why it failed (the upstream transfer broke off, the
  /// downstream peer is gone, ...). A single-frame message, whose payload stayed in memory, is sent now.
  /// Errc::invalid_argument for a message the route keeps.
  Result<std::uint64_t> forward(const Message& received);

  /// The most bytes held at once so far.
  std::uint64_t peak_held() const;

  class Stream;

 private:
  class Sink;

  Session& downstream_;
  const Route route_;
  const Options options_;
  mutable std::mutex mutex_;
  struct Copy {
    std::shared_ptr<Session::Ticket> ticket;  // the downstream message
    std::shared_ptr<Stream> stream;           // its bytes
  };
  std::map<std::uint64_t, Copy> copies_;   // by upstream msg_id, until forward() or the stream fails
  std::map<std::uint64_t, Error> failed_;  // posting downstream failed
  std::shared_ptr<std::atomic<std::uint64_t>> peak_;  // shared with the streams, which may outlive a call
};

}  // namespace ember::session
