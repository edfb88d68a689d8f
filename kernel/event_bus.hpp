#pragma once
// The kernel's EventBus.

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include <ember/event_bus.hpp>
#include <ember/logger.hpp>

namespace ember::kernel {

/// Synchronous publish/subscribe. Publishing is serialised; a handler may publish, subscribe or
/// unsubscribe (itself included) from inside a handler.
class LocalEventBus final : public EventBus {
 public:
  /// `logger` reports handlers that throw; may be null.
  explicit LocalEventBus(std::shared_ptr<Logger> logger = nullptr) : logger_(std::move(logger)) {}

  void publish(const Event& event) noexcept override;
  Subscription subscribe(std::string pattern, Handler handler) override;

 protected:
  void unsubscribe(std::uint64_t id) noexcept override;

 private:
  struct Entry {
    std::uint64_t id;
    std::string pattern;
    std::shared_ptr<Handler> handler;
  };
  bool subscribed(std::uint64_t id) const;

  std::shared_ptr<Logger> logger_;
  mutable std::recursive_mutex mutex_;
  std::vector<Entry> entries_;
  std::uint64_t next_id_ = 1;
};

}  // namespace ember::kernel
