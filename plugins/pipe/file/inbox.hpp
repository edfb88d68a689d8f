#pragma once
// The receiving half of an end: takes frame files out of its inbox in seq order, each exactly once.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ember/logger.hpp>
#include <ember/pipe.hpp>
#include <ember/result.hpp>

#include "layout.hpp"
#include "watch.hpp"

namespace ember::file_pipe {

/// Learns of arrivals from inotify (a rename into the inbox; a file created or written there directly
/// is a foreign one), and scans the folder at start, after an event overflow and once the peer has
/// ended. Validates every name and file before it reads a byte; removes and reports what it refuses.
class Inbox {
 public:
  Inbox(const OpenRoot& root, PipeSide side, std::uint64_t epoch, std::size_t max_frame, const Wakeup& wakeup,
        std::shared_ptr<Logger> logger);

  /// Watches the inbox and the root, then scans what is already there.
  Result<void> start();
  /// The next frame in seq order; nullopt if none within `timeout`; Errc::malformed for a file it
  /// refused (once per file; the next call goes on); Errc::closed once the peer ended and all it sent
  /// was taken.
  Result<std::optional<std::vector<std::byte>>> receive(std::chrono::milliseconds timeout);

 private:
  void handle_events();
  void scan();
  // Classifies one entry of the inbox: queued, stale (removed), refused (removed and reported), or left
  // alone for now (gone already, or a regular file still being written by someone).
  void consider(const std::string& name, bool just_created);
  // Opens, checks and reads the frame file that is next in order; nullopt if it was refused or vanished.
  std::optional<std::vector<std::byte>> take(std::uint64_t seq, const std::string& name);
  void refuse(const std::string& name, std::optional<std::uint64_t> seq, const std::string& why);
  void consume(std::uint64_t seq);
  // Once the peer has ended: nullopt to go on (a last scan, or skipping frames that can no longer come),
  // else the closed error to return.
  std::optional<Error> finish();

  const OpenRoot& root_;
  PipeSide side_;
  std::uint64_t epoch_;
  std::size_t max_frame_;
  const Wakeup& wakeup_;
  std::shared_ptr<Logger> logger_;
  int inbox_fd_;
  const char* inbox_;

  std::optional<Watch> watch_;
  int inbox_wd_ = -1;
  bool rescan_ = false;
  bool final_scan_done_ = false;
  PeerState peer_;

  std::uint64_t next_seq_ = 0;
  std::map<std::uint64_t, std::string> ready_;  // valid frame files of this session, by seq
  std::set<std::uint64_t> consumed_ahead_;      // refused seqs beyond next_seq_, skipped when reached
  std::deque<std::string> refusals_;            // messages not yet returned by receive()
};

}  // namespace ember::file_pipe
