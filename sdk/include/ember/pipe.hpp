#pragma once
// Pipes: move frames between a client job and the trainer it launched. They know nothing of the session
// protocol on top (the kernel's session layer runs over any pipe), and never look inside a frame except
// through the admission check the session hands them.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <ember/component.hpp>

namespace ember {

/// Which end of a pipe is being opened: the job end creates the endpoint, the trainer end attaches to it.
enum class PipeSide : std::uint32_t { job = 0, trainer = 1 };

/// Decides, from the first frame a would-be peer sends (its HELLO), whether it may become this end's peer.
/// Pipes that accept connections (a socket) call it for every candidate and drop the ones it refuses, so a
/// stranger cannot take the place of the trainer; pipes without connections may ignore it. Must be quick.
using PeerAdmission = std::function<bool(std::span<const std::byte> first_frame)>;

/// One open end of a pipe. send() and receive() may be called from different threads; each is used by one
/// thread at a time (thread-bound per direction). close() and describe() are thread-safe: close() may come
/// while a send() or receive() waits, which then returns promptly with Errc::closed. Frames arrive whole and
/// in the order they were sent, or not at all.
class EMBER_API PipeEndpoint {
 public:
  virtual ~PipeEndpoint() = default;

  /// Sends one frame whole; waits at most `timeout` for room (or, on a job end, for the peer to attach).
  /// Errc::timeout or Errc::closed on failure; a frame is never half-sent on success.
  virtual Result<void> send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) = 0;
  /// The next frame, or nullopt if none arrived within `timeout`. Errc::closed once the peer has closed
  /// (or died) and every frame it sent has been received; Errc::malformed for input the pipe itself could
  /// not take apart (the message names the file or offset).
  virtual Result<std::optional<std::vector<std::byte>>> receive(std::chrono::milliseconds timeout) = 0;
  /// Sends one frame given as consecutive parts (a gather write), exactly as send() sends their
  /// concatenation; the parts are read only during the call, so the caller may change them afterwards. A
  /// pipe that can write from several buffers at once overrides it; the default joins the parts.
  virtual Result<void> send_parts(std::span<const std::span<const std::byte>> parts,
                                  std::chrono::milliseconds timeout) {
    std::size_t size = 0;
    for (const auto& part : parts) {
      size += part.size();
    }
    std::vector<std::byte> joined;
    joined.reserve(size);
    for (const auto& part : parts) {
      joined.insert(joined.end(), part.begin(), part.end());
    }
    return send(joined, timeout);
  }
  /// Sends several frames in this order (`frames[i]` lists the parts of frame i), exactly as send_parts()
  /// would send each in turn. A pipe that can write them with one system call overrides it (the session
  /// sends a small message and the receipts it owes together); the default sends them one by one and stops
  /// at the first failure. A frame is never half-sent on success.
  virtual Result<void> send_frames(std::span<const std::span<const std::span<const std::byte>>> frames,
                                   std::chrono::milliseconds timeout) {
    for (const auto& parts : frames) {
      if (auto sent = send_parts(parts, timeout); !sent) {
        return sent;
      }
    }
    return ok();
  }
  /// Like receive(), into `frame`: true when a frame arrived (it is then all of `frame`), false when none
  /// did within `timeout`. A pipe may reuse `frame`'s memory from call to call instead of allocating (and
  /// zero-filling) a buffer per frame; the default calls receive(). Errors as receive().
  virtual Result<bool> receive_into(std::vector<std::byte>& frame, std::chrono::milliseconds timeout) {
    auto got = receive(timeout);
    if (!got) {
      return fail(std::move(got.error()));
    }
    if (!*got) {
      return false;
    }
    frame = std::move(**got);
    return true;
  }
  /// Closes this end; never blocks on the peer. Idempotent.
  virtual void close() noexcept = 0;
  /// Who is on the other side, for messages ("unix:/ws/pipe.sock peer pid 4242").
  virtual std::string describe() const = 0;
};

/// A pipe component, configured from TOML, opens endpoints. A pipe that reaches another process declares an
/// option named `address`: the trainer end is created with `address` set to what the job end's address()
/// returned, and attaches to it.
/// Thread-bound: open() and address() from one thread at a time.
class EMBER_API Pipe : public Component {
 public:
  /// Opens one end. The job end returns at once, ready for a peer (which its first receive() or send()
  /// waits for); the trainer end attaches within `timeout`. `admit` screens connecting peers (job end).
  virtual Result<std::unique_ptr<PipeEndpoint>> open(PipeSide side, std::chrono::milliseconds timeout,
                                                     const PeerAdmission& admit = {}) = 0;
  /// Where the trainer end attaches ("unix:/ws/pipe.sock", "tcp:127.0.0.1:40123", "dir:/ws/pipe"), valid
  /// once the job end is open.
  virtual std::string address() const = 0;
};

}  // namespace ember
