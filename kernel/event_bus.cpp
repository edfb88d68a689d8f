#include "event_bus.hpp"

#include <algorithm>
#include <exception>

#include "logging.hpp"

namespace ember::kernel {

void LocalEventBus::publish(const Event& event) noexcept {
  // The recursive mutex is held through the calls, so reset() on a Subscription returns only once no
  // handler of it is running on another thread, and a handler can still publish or unsubscribe.
  std::lock_guard lock(mutex_);
  std::vector<Entry> snapshot;
  try {
    snapshot = entries_;
  } catch (...) {
    return;
  }
  for (const auto& entry : snapshot) {
    if (!pattern_matches(entry.pattern, event.topic) || !subscribed(entry.id)) {
      continue;
    }
    try {
      (*entry.handler)(event);
    } catch (const std::exception& e) {
      if (logger_) {
        logger_->error("event handler for '" + entry.pattern + "' threw on '" + event.topic +
                       "': " + e.what());
      }
    } catch (...) {
      if (logger_) {
        logger_->error("event handler for '" + entry.pattern + "' threw on '" + event.topic + "'");
      }
    }
  }
}

Subscription LocalEventBus::subscribe(std::string pattern, Handler handler) {
  std::lock_guard lock(mutex_);
  auto id = next_id_++;
  entries_.push_back({id, std::move(pattern), std::make_shared<Handler>(std::move(handler))});
  return Subscription(this, id);
}

void LocalEventBus::unsubscribe(std::uint64_t id) noexcept {
  std::lock_guard lock(mutex_);
  std::erase_if(entries_, [id](const Entry& e) { return e.id == id; });
}

bool LocalEventBus::subscribed(std::uint64_t id) const {
  return std::any_of(entries_.begin(), entries_.end(), [id](const Entry& e) { return e.id == id; });
}

}  // namespace ember::kernel
