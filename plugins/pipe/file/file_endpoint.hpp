#pragma once
// One open end of a file pipe: an inbox to receive from, an outbox to send through, and close().

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <vector>

#include <ember/logger.hpp>
#include <ember/pipe.hpp>

#include "inbox.hpp"
#include "layout.hpp"
#include "outbox.hpp"
#include "watch.hpp"

namespace ember::file_pipe {

/// Shared by a job end and the component that opened it. A job end that closes while the trainer has not
/// yet read all it sent leaves the root in place for it; the component removes the root when it is
/// destroyed, if no other session has taken it over by then.
struct RootKeeper {
  std::mutex mutex;
  bool left_behind = false;
  std::uint64_t epoch = 0;
};

/// What an end is, beyond its folders.
struct EndSettings {
  PipeSide side = PipeSide::job;
  std::uint64_t epoch = 0;
  std::size_t max_frame = 0;
  std::size_t capacity = 0;
};

class FileEndpoint final : public PipeEndpoint {
 public:
  /// Starts both halves on an opened root. `keeper` is the component's, for a job end; null otherwise.
  static Result<std::unique_ptr<FileEndpoint>> open(OpenRoot root, const EndSettings& settings,
                                                    std::shared_ptr<Logger> logger,
                                                    const std::stop_token& stop,
                                                    std::shared_ptr<RootKeeper> keeper);
  ~FileEndpoint() override;
  FileEndpoint(const FileEndpoint&) = delete;
  FileEndpoint& operator=(const FileEndpoint&) = delete;

  Result<void> send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) override;
  Result<std::optional<std::vector<std::byte>>> receive(std::chrono::milliseconds timeout) override;
  /// Wakes blocked calls, then leaves a closed marker for the peer. A job end removes the root, or leaves
  /// it (with the marker) while the trainer still has frames of it to read; a trainer end removes its own
  /// leftovers in tmp/. Touches only a few small files: never waits for the peer.
  void close() noexcept override;
  /// "dir:/ws/pipe (trainer end)": the folder, and which end is on the other side.
  std::string describe() const override;

 private:
  FileEndpoint(OpenRoot root, const EndSettings& settings, std::shared_ptr<Logger> logger,
               std::shared_ptr<RootKeeper> keeper, std::unique_ptr<Wakeup> wakeup);
  void close_job_end(std::uint64_t sent);
  void close_trainer_end(std::uint64_t sent);
  void write_marker(std::uint64_t sent);

  struct StopWaker {
    Wakeup* wakeup;
    void operator()() const noexcept { wakeup->cancel(); }
  };

  OpenRoot root_;
  EndSettings settings_;
  std::shared_ptr<Logger> logger_;
  std::shared_ptr<RootKeeper> keeper_;
  std::unique_ptr<Wakeup> wakeup_;
  Inbox inbox_;
  Outbox outbox_;
  std::optional<std::stop_callback<StopWaker>> on_stop_;  // last: unregistered before the rest goes
};

}  // namespace ember::file_pipe
