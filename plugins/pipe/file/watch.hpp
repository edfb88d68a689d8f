#pragma once
// How an end learns what happens in the pipe's folder without polling: one inotify instance per direction
// (send and receive run in different threads, so each reads only its own events), a wakeup that close()
// and the kernel's stop request fire, and what the peer's markers say about the peer.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ember/pipe.hpp>
#include <ember/result.hpp>

#include <base/unique_fd.hpp>
#include "layout.hpp"

namespace ember::file_pipe {

using base::UniqueFd;

using Clock = std::chrono::steady_clock;

/// The point `timeout` from now; a negative timeout counts as zero and a huge one does not overflow.
Clock::time_point deadline_after(std::chrono::milliseconds timeout) noexcept;

/// Wakes one endpoint's blocked calls, through an eventfd in every wait's poll set. Once fired it stays
/// fired: every later wait returns at once.
class Wakeup {
 public:
  static Result<std::unique_ptr<Wakeup>> create();
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;

  int fd() const noexcept { return fd_.get(); }
  /// Marks the end closed and wakes its waits. True only for the first call.
  bool close() noexcept;
  /// Marks the end cancelled (the kernel is stopping the job) and wakes its waits.
  void cancel() noexcept;
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }
  /// Errc::closed or Errc::cancelled once fired, naming the pipe; nullopt before.
  std::optional<Error> why_stopped(const std::string& root) const;

 private:
  explicit Wakeup(UniqueFd fd) : fd_(std::move(fd)) {}
  void signal() noexcept;

  UniqueFd fd_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> cancelled_{false};
};

/// One inotify event; `name` is empty for an event on a watched folder itself. An IN_Q_OVERFLOW has wd -1.
struct Event {
  int wd = -1;
  std::uint32_t mask = 0;
  std::string name;
};

/// One inotify instance, read by one thread at a time.
class Watch {
 public:
  static Result<Watch> create();

  /// Watches the folder open as `dir_fd` (known as `path`, for messages and as a fallback) for `mask`.
  Result<int> add(int dir_fd, const std::string& path, std::uint32_t mask);
  /// The events queued so far, without waiting (valid until the next call).
  const std::vector<Event>& drain();
  /// Waits until an event is queued, `wake_fd` (a Wakeup's, or -1 for none) is readable or `deadline`
  /// passes, whichever comes first.
  void wait(int wake_fd, Clock::time_point deadline) const;

 private:
  explicit Watch(UniqueFd fd);

  UniqueFd fd_;
  std::vector<char> buffer_;
  std::vector<Event> events_;
};

/// What an end knows of its peer.
struct PeerState {
  bool ended = false;                 ///< the peer closed, its folder was removed, or another session began
  std::optional<std::uint64_t> sent;  ///< how many frames the peer sent in all, from its closed marker
  std::string why;                    ///< for messages: "the trainer end closed after sending 12 frames"
};

/// Looks again at the peer's closed marker, the session file, and whether the folders still exist.
void refresh_peer(const OpenRoot& root, PipeSide side, std::uint64_t epoch, PeerState& peer);

/// What an end writes into its closed marker: "<epoch> <frames sent>\n", both as 16 hex digits.
std::string marker_text(std::uint64_t epoch, std::uint64_t sent);

}  // namespace ember::file_pipe
