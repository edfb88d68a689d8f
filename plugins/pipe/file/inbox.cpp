#include "inbox.hpp"

#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace ember::file_pipe {

namespace {

// A frame file arrives by rename (IN_MOVED_TO). A file created (IN_CREATE) or written (IN_CLOSE_WRITE) in
// the inbox itself did not come from a sender: it is judged, and refused, as soon as it appears.
constexpr std::uint32_t inbox_mask = IN_MOVED_TO | IN_CREATE | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF;
// The peer's closed marker and the session file are renamed into the root; the root goes away on close.
constexpr std::uint32_t root_mask = IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF;
// A sender has at most its capacity (≤ 65536) in flight: a seq much further ahead is not from it, and
// remembering it would let a stranger grow our bookkeeping.
constexpr std::uint64_t max_seq_ahead = std::uint64_t{1} << 20;

}  // namespace

Inbox::Inbox(const OpenRoot& root, PipeSide side, std::uint64_t epoch, std::size_t max_frame,
             const Wakeup& wakeup, std::shared_ptr<Logger> logger)
    : root_(root),
      side_(side),
      epoch_(epoch),
      max_frame_(max_frame),
      wakeup_(wakeup),
      logger_(std::move(logger)),
      inbox_fd_(root.inbox(side)),
      inbox_(inbox_name(side)) {}

Result<void> Inbox::start() {
  auto watch = Watch::create();
  if (!watch) {
    return fail(std::move(watch.error()));
  }
  watch_.emplace(std::move(*watch));
  auto inbox_wd = watch_->add(inbox_fd_, root_.path + "/" + inbox_, inbox_mask);
  if (!inbox_wd) {
    return fail(std::move(inbox_wd.error()));
  }
  if (auto root_wd = watch_->add(root_.root.get(), root_.path, root_mask); !root_wd) {
    return fail(std::move(root_wd.error()));
  }
  inbox_wd_ = *inbox_wd;
  refresh_peer(root_, side_, epoch_, peer_);
  scan();  // after the watches, so nothing that arrives meanwhile is missed (a repeat is harmless)
  return ok();
}

Result<std::optional<std::vector<std::byte>>> Inbox::receive(std::chrono::milliseconds timeout) {
  if (auto stopped = wakeup_.why_stopped(root_.path)) {
    return fail(std::move(*stopped));
  }
  auto deadline = deadline_after(timeout);
  for (;;) {
    handle_events();
    if (rescan_) {
      rescan_ = false;
      scan();
    }
    if (!refusals_.empty()) {
      auto message = std::move(refusals_.front());
      refusals_.pop_front();
      return fail(Errc::malformed, std::move(message));
    }
    if (auto next = ready_.find(next_seq_); next != ready_.end()) {
      const auto seq = next_seq_;
      auto frame = take(seq, next->second);  // if it throws (out of memory), the file stays queued
      ready_.erase(seq);
      if (frame) {
        return std::optional<std::vector<std::byte>>(std::move(*frame));
      }
      continue;
    }
    if (peer_.ended) {
      if (auto ended = finish()) {
        return fail(std::move(*ended));
      }
      continue;
    }
    // A gap (frame n missing while n+1 is here) waits like an empty inbox: frames are never reordered.
    if (Clock::now() >= deadline) {
      return std::optional<std::vector<std::byte>>();
    }
    watch_->wait(wakeup_.fd(), deadline);
    if (auto stopped = wakeup_.why_stopped(root_.path)) {
      return fail(std::move(*stopped));
    }
  }
}

void Inbox::handle_events() {
  bool look_at_peer = false;
  for (const auto& event : watch_->drain()) {
    if ((event.mask & IN_Q_OVERFLOW) != 0) {
      rescan_ = true;
      look_at_peer = true;
    } else if (event.wd == inbox_wd_ && !event.name.empty()) {
      consider(event.name, (event.mask & IN_CREATE) != 0);
    } else {
      look_at_peer = true;  // a marker or the session file in the root, or a folder removed (IN_IGNORED)
    }
  }
  if (look_at_peer) {
    refresh_peer(root_, side_, epoch_, peer_);
  }
}

void Inbox::scan() {
  auto names = list_dir(inbox_fd_);
  if (!names) {
    logger_->warn("pipe.file dir:" + root_.path + ": " + names.error().message);
    return;
  }
  for (const auto& name : *names) {
    consider(name, false);
  }
}

void Inbox::consider(const std::string& name, bool just_created) {
  struct stat st {};
  if (fstatat(inbox_fd_, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return;  // gone already: a frame taken since a scan listed it, or a late event for it
  }
  auto parsed = parse_frame_name(name);
  if (!parsed) {
    refuse(name, std::nullopt,
           (S_ISREG(st.st_mode) ? std::string() : "is " + kind_of_mode(st.st_mode) + ", ") +
               "not named like a frame file (<16 hex digits>-<16 hex digits>.frame)");
    return;
  }
  if (parsed->epoch != epoch_) {
    if (auto current = read_session(root_); current && *current == parsed->epoch) {
      // A newer session took over the folder: its frames are not ours to judge, and this end is over.
      refresh_peer(root_, side_, epoch_, peer_);
      return;
    }
    // Left by an earlier session (a sender that outlived it): never delivered, and not an error.
    int err = remove_entry(inbox_fd_, name);
    logger_->info("pipe.file: " + std::string(err == 0 ? "removed" : "could not remove") +
                  " stale frame file '" + root_.shown(inbox_, name) + "' of an earlier session" +
                  (err == 0 ? std::string() : ": " + errno_text(err)));
    return;
  }
  std::uint64_t seq = parsed->seq;
  if (ready_.count(seq) != 0) {
    return;
  }
  if (seq < next_seq_ || consumed_ahead_.count(seq) != 0) {
    refuse(name, std::nullopt,
           "repeats frame " + std::to_string(seq) + ", which was already received or refused");
    return;
  }
  if (seq - next_seq_ > max_seq_ahead) {
    refuse(name, std::nullopt,
           "frame " + std::to_string(seq) + " is too far ahead of the next expected, " +
               std::to_string(next_seq_));
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    refuse(name, seq, "is " + kind_of_mode(st.st_mode) + ", not a regular file");
    return;
  }
  if (st.st_nlink != 1) {
    refuse(name, seq, "has " + std::to_string(st.st_nlink) + " hard links; a frame file has one");
    return;
  }
  if (just_created) {
    return;  // written in place by someone, not renamed in by a sender: judged once it is closed
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_frame_) {
    refuse(name, seq,
           "is " + std::to_string(st.st_size) + " bytes, more than max_frame_bytes " +
               std::to_string(max_frame_));
    return;
  }
  ready_.emplace(seq, name);
}

std::optional<std::vector<std::byte>> Inbox::take(std::uint64_t seq, const std::string& name) {
  // O_NONBLOCK: a fifo swapped in under this name must not block the open; fstat then refuses it.
  UniqueFd fd(openat(inbox_fd_, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    if (err == ENOENT) {
      logger_->warn("pipe.file: frame file '" + root_.shown(inbox_, name) +
                    "' vanished before it was read; waiting for frame " + std::to_string(seq));
    } else {
      refuse(name, seq, err == ELOOP ? "is a symlink" : "cannot be opened: " + errno_text(err));
    }
    return std::nullopt;
  }
  // Judged again on the descriptor: the name may point at another file than the one first looked at.
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) {
    refuse(name, seq, "cannot be examined: " + errno_text(errno));
    return std::nullopt;
  }
  if (!S_ISREG(st.st_mode)) {
    refuse(name, seq, "is " + kind_of_mode(st.st_mode) + ", not a regular file");
    return std::nullopt;
  }
  if (st.st_nlink != 1) {
    refuse(name, seq, "has " + std::to_string(st.st_nlink) + " hard links; a frame file has one");
    return std::nullopt;
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_frame_) {
    refuse(name, seq,
           "is " + std::to_string(st.st_size) + " bytes, more than max_frame_bytes " +
               std::to_string(max_frame_));
    return std::nullopt;
  }
  std::vector<std::byte> frame(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < frame.size()) {
    ssize_t n = ::read(fd.get(), frame.data() + got, frame.size() - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      refuse(name, seq, "cannot be read: " + errno_text(errno));
      return std::nullopt;
    }
    if (n == 0) {
      refuse(name, seq,
             "ended after " + std::to_string(got) + " of its " + std::to_string(frame.size()) + " bytes");
      return std::nullopt;
    }
    got += static_cast<std::size_t>(n);
  }
  // Removing the file is what tells the sender (through its IN_DELETE) that the frame was consumed.
  if (unlinkat(inbox_fd_, name.c_str(), 0) != 0 && errno != ENOENT) {
    logger_->warn("pipe.file: cannot remove delivered frame file '" + root_.shown(inbox_, name) +
                  "': " + errno_text(errno));
  }
  consume(seq);
  return frame;
}

void Inbox::refuse(const std::string& name, std::optional<std::uint64_t> seq, const std::string& why) {
  int err = remove_entry(inbox_fd_, name);
  std::string message = "pipe.file: refused '" + root_.shown(inbox_, name) + "': " + why +
                        (err == 0 ? "; removed it" : "; could not remove it: " + errno_text(err));
  logger_->debug(message);  // the caller hears of it from receive(), and logs it as it sees fit
  refusals_.push_back(std::move(message));
  if (seq) {
    // A refused frame of this session counts as consumed, so the frames after it are not held back.
    consume(*seq);
  }
}

void Inbox::consume(std::uint64_t seq) {
  if (seq == next_seq_) {
    ++next_seq_;
    while (consumed_ahead_.erase(next_seq_) != 0) {
      ++next_seq_;
    }
  } else if (seq > next_seq_) {
    consumed_ahead_.insert(seq);
  }
}

std::optional<Error> Inbox::finish() {
  // The peer renamed every frame into the inbox before it wrote its marker: one more look finds them all,
  // even ones whose events were lost to an overflow.
  if (!final_scan_done_) {
    final_scan_done_ = true;
    scan();
    return std::nullopt;
  }
  if (!ready_.empty()) {
    // The peer is gone, so the frames before these will never come: go on rather than wait forever.
    auto first = ready_.begin()->first;
    logger_->warn("pipe.file dir:" + root_.path + ": frames " + std::to_string(next_seq_) + " to " +
                  std::to_string(first - 1) + " never arrived; " + peer_.why);
    next_seq_ = first;
    consumed_ahead_.erase(consumed_ahead_.begin(), consumed_ahead_.lower_bound(first));
    return std::nullopt;
  }
  if (peer_.sent && *peer_.sent > next_seq_) {
    logger_->warn("pipe.file dir:" + root_.path + ": frames " + std::to_string(next_seq_) + " to " +
                  std::to_string(*peer_.sent - 1) + " never arrived; " + peer_.why);
  }
  return Error{Errc::closed, "pipe.file dir:" + root_.path + ": " + peer_.why};
}

}  // namespace ember::file_pipe
