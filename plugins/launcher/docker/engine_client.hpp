#pragma once
// A client of the Docker Engine HTTP API over its Unix socket: one request per connection, each bounded by a
// deadline and cut by a cancel check within a slice (100 ms). Boost.Beast and Asio stay inside
// engine_client.cpp, so the files that include this one compile without them.

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include <ember/result.hpp>

namespace ember::docker_launcher {

/// The API version every request names (/v1.41/...): the oldest that has everything the launcher uses
/// (DeviceRequests, the wait conditions), and the one podman 4.3 serves.
inline constexpr std::string_view api_version = "1.41";

/// An answer: its HTTP status and body (empty for a streamed 2xx body, which went to the callback).
struct EngineReply {
  unsigned status = 0;
  std::string body;
  std::string api_version;  ///< the Api-Version header, which every answer of the engine carries

  bool ok() const noexcept { return status >= 200 && status < 300; }
  /// The engine's own message ("no such image: ..."), from the JSON body of an error answer, or the body.
  std::string message() const;
};

/// Thread-safe: it holds only the socket's path, and each call makes its own connection.
class EngineClient {
 public:
  using Clock = std::chrono::steady_clock;
  /// Polled at least every slice while a call waits; true ends the call with Errc::cancelled.
  using Cancelled = std::function<bool()>;

  explicit EngineClient(std::string socket_path) : socket_path_(std::move(socket_path)) {}

  const std::string& socket_path() const noexcept { return socket_path_; }

  /// Sends `method target` (target without the version prefix: "/containers/json") with a JSON body (empty:
  /// none) and reads the whole answer, at most 16 MiB. Errors: peer_gone when the socket cannot be reached,
  /// timeout, cancelled, io_error for a broken connection, malformed for a bad HTTP answer.
  Result<EngineReply> call(std::string_view method, std::string_view target, std::string_view body,
                           Clock::time_point deadline, const Cancelled& cancelled = {}) const;

  /// The same, but a 2xx answer's body is handed to `on_data` piece by piece as it arrives (a followed log);
  /// an error answer's body is kept in the reply as call() does.
  Result<EngineReply> stream(std::string_view method, std::string_view target, std::string_view body,
                             const std::function<void(std::string_view)>& on_data, Clock::time_point deadline,
                             const Cancelled& cancelled = {}) const;

 private:
  std::string socket_path_;
};

}  // namespace ember::docker_launcher
