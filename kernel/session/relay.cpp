#include "session/relay.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>

namespace ember::session {

// The bytes of one forwarded message between upstream and downstream: filled by the upstream sink in
// order, read by the downstream session's writer, let go of as the downstream peer confirms them.
class Relay::Stream final : public PayloadSource {
 public:
  Stream(Session& downstream, std::uint64_t size, const Options& options,
         std::shared_ptr<std::atomic<std::uint64_t>> peak)
      : downstream_(downstream), size_(size), options_(options), peak_(std::move(peak)) {}

  std::uint64_t size() const override { return size_; }

  bool ready(std::uint64_t offset, std::size_t size) const override {
    std::lock_guard lock(mutex_);
    return failure_.has_value() || offset + size <= received_;  // a failure is reported by read()
  }

  Result<void> read(std::uint64_t offset, std::span<std::byte> out) const override {
    std::lock_guard lock(mutex_);
    if (failure_) {
      return fail(Errc::io_error, "relayed payload: " + *failure_);
    }
    if (offset < base_ || offset + out.size() > received_) {
      return fail(Errc::internal, "relayed payload: bytes " + std::to_string(offset) + ".." +
                                      std::to_string(offset + out.size()) + " are not held (held " +
                                      std::to_string(base_) + ".." + std::to_string(received_) + ")");
    }
    std::size_t done = 0;
    std::uint64_t at = base_;
    for (const auto& block : blocks_) {
      if (done == out.size()) {
        break;
      }
      std::uint64_t end = at + block.size();
      if (offset + done < end) {
        auto from = static_cast<std::size_t>(offset + done - at);
        auto n = std::min(out.size() - done, block.size() - from);
        std::memcpy(out.data() + done, block.data() + from, n);
        done += n;
      }
      at = end;
    }
    return ok();
  }

  // The session never reads below `bytes` again: whole blocks below it go, and the upstream gets room.
  void confirmed(std::uint64_t bytes) const override {
    std::lock_guard lock(mutex_);
    while (!blocks_.empty() && base_ + blocks_.front().size() <= bytes) {
      base_ += blocks_.front().size();
      held_ -= blocks_.front().size();
      spare_ = std::move(blocks_.front());
      blocks_.pop_front();
    }
    room_.notify_all();
  }

  // Upstream: the next bytes of the payload, in order. Waits (bounded by `stall`) while the window is full.
  Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) {
    {
      std::unique_lock lock(mutex_);
      if (failure_) {
        return fail(Errc::io_error, "relayed payload: " + *failure_);
      }
      if (offset != received_ || received_ + bytes.size() > size_) {
        return fail(Errc::internal, "relayed payload: " + std::to_string(bytes.size()) + " bytes at " +
                                        std::to_string(offset) + ", expected them at " +
                                        std::to_string(received_) + " of " + std::to_string(size_));
      }
      bool roomy = room_.wait_for(lock, options_.stall, [&] {
        return held_ == 0 || held_ + bytes.size() <= options_.window || failure_.has_value();
      });
      if (failure_) {
        return fail(Errc::io_error, "relayed payload: " + *failure_);
      }
      if (!roomy) {
        failure_ = "the downstream peer confirmed nothing for " + std::to_string(options_.stall.count()) +
                   " ms while " + std::to_string(held_) + " bytes waited";
        return fail(Errc::timeout, "relayed payload: " + *failure_);
      }
      std::vector<std::byte> block = std::move(spare_);
      spare_.clear();
      block.assign(bytes.begin(), bytes.end());
      blocks_.push_back(std::move(block));
      received_ += bytes.size();
      held_ += bytes.size();
      std::uint64_t peak = peak_->load();
      while (held_ > peak && !peak_->compare_exchange_weak(peak, held_)) {
      }
    }
    downstream_.poke();
    return ok();
  }

  // Whether the copy failed (the upstream broke off, or the downstream never confirmed in time).
  bool failed() const {
    std::lock_guard lock(mutex_);
    return failure_.has_value();
  }

  void abort(std::string why) {
    {
      std::lock_guard lock(mutex_);
      if (!failure_) {
        failure_ = std::move(why);
      }
      room_.notify_all();
    }
    downstream_.poke();
  }

 private:
  Session& downstream_;
  const std::uint64_t size_;
  const Options options_;
  std::shared_ptr<std::atomic<std::uint64_t>> peak_;
  mutable std::mutex mutex_;
  mutable std::condition_variable room_;
  mutable std::deque<std::vector<std::byte>> blocks_;  // the held bytes, [base_, received_)
  mutable std::vector<std::byte> spare_;               // a block's memory, for the next write
  mutable std::uint64_t base_ = 0;
  mutable std::uint64_t held_ = 0;
  std::uint64_t received_ = 0;
  std::optional<std::string> failure_;
};

// The upstream end of a Stream.
class Relay::Sink final : public PayloadSink {
 public:
  explicit Sink(std::shared_ptr<Stream> stream) : stream_(std::move(stream)) {}
  ~Sink() override {
    if (!finished_) {
      stream_->abort("the upstream transfer broke off");
    }
  }
  Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) override {
    return stream_->write(offset, bytes);
  }
  // The upstream sender starts again from byte 0: the downstream copy under way cannot follow it back (its
  // bytes may be let go of), so it fails; the message's new first frame starts a new downstream copy.
  void reset() override { stream_->abort("the upstream sender restarted the message"); }
  Result<void> finish() override {
    finished_ = true;
    return ok();
  }

 private:
  std::shared_ptr<Stream> stream_;
  bool finished_ = false;
};

namespace {

// The sink of a message that cannot be forwarded: every write fails, so the upstream gets no receipt.
class RefusingSink final : public PayloadSink {
 public:
  explicit RefusingSink(Error why) : why_(std::move(why)) {}
  Result<void> write(std::uint64_t, std::span<const std::byte>) override { return fail(why_); }
  void reset() override {}
  Result<void> finish() override { return fail(why_); }

 private:
  Error why_;
};

}  // namespace

Relay::Relay(Session& downstream, Route route, Options options)
    : downstream_(downstream),
      route_(std::move(route)),
      options_(options),
      peak_(std::make_shared<std::atomic<std::uint64_t>>(0)) {}

SinkFactory Relay::sink_factory(SinkFactory others) {
  return [this, others = std::move(others)](const Message& header) -> std::unique_ptr<PayloadSink> {
    auto req_id = route_(header);
    if (!req_id) {
      return others ? others(header) : nullptr;
    }
    auto stream = std::make_shared<Stream>(downstream_, header.payload_size, options_, peak_);
    auto ticket = downstream_.post(header.op, header.topic, header.headers, stream, *req_id);
    std::lock_guard lock(mutex_);
    if (!ticket) {
      Error why{ticket.error().code, "cannot relay " + std::string(wire::to_string(header.op)) + " msg_id " +
                                         std::to_string(header.msg_id) + ": " + ticket.error().message};
      failed_.insert_or_assign(header.msg_id, why);
      return std::make_unique<RefusingSink>(std::move(why));
    }
    failed_.erase(header.msg_id);
    // Copies whose upstream message broke off are never forward()ed: they go here.
    std::erase_if(copies_, [](const auto& entry) { return entry.second.stream->failed(); });
    copies_.insert_or_assign(header.msg_id, Copy{std::move(*ticket), stream});
    return std::make_unique<Sink>(std::move(stream));
  };
}

Result<std::uint64_t> Relay::forward(const Message& received) {
  std::shared_ptr<Session::Ticket> ticket;
  {
    std::lock_guard lock(mutex_);
    if (auto it = copies_.find(received.msg_id); it != copies_.end()) {
      ticket = std::move(it->second.ticket);
      copies_.erase(it);
    } else if (auto f = failed_.find(received.msg_id); f != failed_.end()) {
      auto why = f->second;
      failed_.erase(f);
      return fail(std::move(why));
    }
  }
  if (ticket) {
    return downstream_.wait(ticket);
  }
  auto req_id = route_(received);
  if (!req_id) {
    return fail(Errc::invalid_argument, std::string(wire::to_string(received.op)) + " msg_id " +
                                            std::to_string(received.msg_id) +
                                            " is not one this relay forwards");
  }
  std::shared_ptr<const PayloadSource> payload;
  if (!received.payload.empty()) {
    payload = std::make_shared<BytesSource>(received.payload);
  }
  return downstream_.send(received.op, received.topic, received.headers, std::move(payload), *req_id);
}

std::uint64_t Relay::peak_held() const {
  return peak_->load();
}

}  // namespace ember::session
