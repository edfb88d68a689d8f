#pragma once
// Applets: run a third-party FL system's programs (such as Flower's) inside an ember job, relaying their
// messages through ember's transport.

#include <chrono>
#include <cstddef>
#include <span>
#include <vector>

#include <ember/component.hpp>
#include <ember/launcher.hpp>

namespace ember {

/// An applet component. Thread-bound for start() and relay() (one call at a time, from any thread); state()
/// is thread-safe; stop() is thread-safe and may come while start() or relay() runs, which then return soon.
class EMBER_API Applet : public Component {
 public:
  /// Starts the applet's programs and waits until they answer (bounded by the applet's own timeout).
  virtual Result<void> start() = 0;
  /// The current state.
  virtual RunState state() = 0;
  /// Delivers one message from the other side of the job to the applet's programs and returns their reply.
  virtual Result<std::vector<std::byte>> relay(std::span<const std::byte> message) = 0;
  /// Stops the programs: asks, waits `grace`, then forces. Leaves no process behind. Idempotent.
  virtual Result<void> stop(std::chrono::milliseconds grace) = 0;
};

}  // namespace ember
