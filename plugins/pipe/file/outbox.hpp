#pragma once
// The sending half of an end: writes each frame into tmp/, then renames it into the peer's inbox.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>

#include <ember/logger.hpp>
#include <ember/pipe.hpp>
#include <ember/result.hpp>

#include "layout.hpp"
#include "watch.hpp"

namespace ember::file_pipe {

/// Keeps at most `capacity` of its frames unconsumed in the peer's inbox. It learns that the peer took a
/// frame from the frame file's removal (IN_DELETE on the peer's inbox), never by polling, and recounts
/// the inbox after an event overflow.
class Outbox {
 public:
  Outbox(const OpenRoot& root, PipeSide side, std::uint64_t epoch, std::size_t max_frame,
         std::size_t capacity, const Wakeup& wakeup, std::shared_ptr<Logger> logger);

  /// Watches the peer's inbox and the root.
  Result<void> start();
  /// Hands one frame over whole, waiting at most `timeout` for room.
  Result<void> send(std::span<const std::byte> frame, std::chrono::milliseconds timeout);
  /// Ends sending, for close(): a send still under way fails with closed rather than hand its frame over
  /// after this. Returns how many frames were handed over in all.
  std::uint64_t seal() noexcept;

 private:
  void handle_events();
  void recount();
  Result<void> hand_over(std::span<const std::byte> frame);

  const OpenRoot& root_;
  PipeSide side_;
  std::uint64_t epoch_;
  std::size_t max_frame_;
  std::size_t capacity_;
  const Wakeup& wakeup_;
  std::shared_ptr<Logger> logger_;
  int outbox_fd_;
  const char* outbox_;

  std::optional<Watch> watch_;
  int outbox_wd_ = -1;
  bool recount_ = false;
  PeerState peer_;
  std::set<std::uint64_t> in_flight_;  // our frames still in the peer's inbox

  std::mutex handover_;     // orders a rename against seal()
  bool sealed_ = false;     // guarded by handover_
  std::uint64_t sent_ = 0;  // written under handover_, by the sending thread only; also the next seq
};

}  // namespace ember::file_pipe
