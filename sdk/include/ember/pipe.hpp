#pragma once
// Pipes: move encoded frames between a client job and the trainer it launched. They know nothing of the
// session protocol on top; the kernel's session layer runs over any pipe.

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <ember/component.hpp>

namespace ember {

/// Which end of a pipe is being opened: the job end creates the endpoint, the trainer end attaches to it.
enum class PipeSide { job, trainer };

/// One open end of a pipe. send() and receive() may be called from different threads; each is used by one
/// thread at a time.
class EMBER_API PipeEndpoint {
 public:
  virtual ~PipeEndpoint() = default;

  /// Sends one frame whole; waits at most `timeout` for room. Errc::timeout or Errc::closed on failure.
  virtual Result<void> send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) = 0;
  /// The next frame, or nullopt if none arrived within `timeout`. Errc::closed once the peer has closed
  /// and every frame it sent has been received.
  virtual Result<std::optional<std::vector<std::byte>>> receive(std::chrono::milliseconds timeout) = 0;
  /// Closes this end; never blocks on the peer. Idempotent.
  virtual void close() noexcept = 0;
};

/// A pipe component: configured from TOML, it opens endpoints.
class EMBER_API Pipe : public Component {
 public:
  /// Opens one end; waits at most `timeout` for whatever the end needs (a peer to attach, a directory).
  virtual Result<std::unique_ptr<PipeEndpoint>> open(PipeSide side, std::chrono::milliseconds timeout) = 0;
  /// Where the trainer end attaches ("unix:/run/x.sock", "dir:/ws/pipe"), for the bootstrap file.
  virtual std::string address() const = 0;
};

}  // namespace ember
