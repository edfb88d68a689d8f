#pragma once
// Helpers for the cell network's tests: a logger that keeps what it was told, quick timeouts, raw frames.

#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include <ember/logger.hpp>

#include "cell/cell.hpp"
#include "wire/frame.hpp"

namespace ember::cell::test {

/// Keeps every line (warnings and above also go to stderr, for the test log).
class CaptureLogger final : public Logger {
 public:
  void log(LogLevel level, std::string_view message) noexcept override {
    std::lock_guard lock(mutex_);
    lines_.emplace_back(message);
    if (level >= LogLevel::warn) {
      std::cerr << "[cell] " << message << "\n";
    }
  }
  bool enabled(LogLevel) const noexcept override { return true; }
  std::string_view name() const noexcept override { return "cell-test"; }

  bool contains(std::string_view text) const {
    std::lock_guard lock(mutex_);
    for (const auto& line : lines_) {
      if (line.find(text) != std::string::npos) {
        return true;
      }
    }
    return false;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> lines_;
};

/// A clear-text config with short bounds, for tests on loopback.
inline Config fast_config(const std::string& fqcn, const std::string& listen, const std::string& parent) {
  Config config;
  config.fqcn = fqcn;
  config.listen = listen;
  config.parent = parent;
  config.insecure = true;
  config.connect_timeout = std::chrono::milliseconds(2000);
  config.backoff_initial = std::chrono::milliseconds(50);
  config.backoff_max = std::chrono::milliseconds(500);
  config.keepalive = std::chrono::milliseconds(2000);
  config.keepalive_timeout = std::chrono::milliseconds(2000);
  config.stall_timeout = std::chrono::milliseconds(10000);
  return config;
}

/// One encoded single-frame message, as a packet string.
inline std::string frame(wire::Op op, std::uint64_t msg_id, std::uint64_t req_id,
                         const wire::Headers& headers, std::string_view topic,
                         std::string_view payload = {}) {
  wire::FrameHeader fh;
  fh.op = op;
  fh.type = req_id != 0 ? wire::MessageType::reply : wire::MessageType::request;
  fh.msg_id = msg_id;
  fh.req_id = req_id;
  fh.total_len = payload.size();
  std::vector<std::byte> out;
  auto encoded = wire::encode_frame(out, fh, topic, headers,
                                    {reinterpret_cast<const std::byte*>(payload.data()), payload.size()});
  if (!encoded) {
    return {};
  }
  return {reinterpret_cast<const char*>(out.data()), out.size()};
}

}  // namespace ember::cell::test
