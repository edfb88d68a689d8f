#pragma once
// The kernel's event bus: components publish what happened; the CLI, metrics sinks and tests listen.

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include <ember/abi.hpp>

namespace ember {

/// One event: a dotted topic ("session.peer_gone", "round.done") and flat string fields.
struct Event {
  std::string topic;
  std::string source;  ///< who published it, e.g. "plugin.pipe.socket"
  std::map<std::string, std::string> fields;
};

/// A subscription; dropping it (or calling reset()) unsubscribes.
class Subscription;

/// Publish/subscribe by topic. A subscriber's pattern is an exact topic, a prefix ending in ".*", or "*".
/// Handlers run synchronously on the publishing thread, must be quick, and must not throw (an exception
/// from a handler is caught and logged by the kernel). Thread-safe.
class EMBER_API EventBus {
 public:
  using Handler = std::function<void(const Event&)>;

  virtual ~EventBus() = default;

  /// Delivers `event` to every matching subscriber.
  virtual void publish(const Event& event) noexcept = 0;
  /// Registers a handler; it stays registered while the returned Subscription lives.
  [[nodiscard]] virtual Subscription subscribe(std::string pattern, Handler handler) = 0;

 protected:
  friend class Subscription;
  virtual void unsubscribe(std::uint64_t id) noexcept = 0;
};

class Subscription {
 public:
  Subscription() = default;
  Subscription(EventBus* bus, std::uint64_t id) noexcept : bus_(bus), id_(id) {}
  Subscription(Subscription&& other) noexcept : bus_(other.bus_), id_(other.id_) { other.bus_ = nullptr; }
  Subscription& operator=(Subscription&& other) noexcept {
    if (this != &other) {
      reset();
      bus_ = other.bus_;
      id_ = other.id_;
      other.bus_ = nullptr;
    }
    return *this;
  }
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  ~Subscription() { reset(); }

  /// Unsubscribes now; the handler is not called after reset() returns.
  void reset() noexcept {
    if (bus_ != nullptr) {
      bus_->unsubscribe(id_);
      bus_ = nullptr;
    }
  }

 private:
  EventBus* bus_ = nullptr;
  std::uint64_t id_ = 0;
};

}  // namespace ember
