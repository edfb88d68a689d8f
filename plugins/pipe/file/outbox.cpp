#include "outbox.hpp"

#include <fcntl.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>

namespace ember::file_pipe {

namespace {

// The peer removes a frame file once it has read it; anything that moves one out counts the same.
constexpr std::uint32_t outbox_mask = IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF;
constexpr std::uint32_t root_mask = IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF;

}  // namespace

Outbox::Outbox(const OpenRoot& root, PipeSide side, std::uint64_t epoch, std::size_t max_frame,
               std::size_t capacity, const Wakeup& wakeup, std::shared_ptr<Logger> logger)
    : root_(root),
      side_(side),
      epoch_(epoch),
      max_frame_(max_frame),
      capacity_(capacity),
      wakeup_(wakeup),
      logger_(std::move(logger)),
      outbox_fd_(root.outbox(side)),
      outbox_(inbox_name(peer_of(side))) {}

Result<void> Outbox::start() {
  auto watch = Watch::create();
  if (!watch) {
    return fail(std::move(watch.error()));
  }
  watch_.emplace(std::move(*watch));
  auto outbox_wd = watch_->add(outbox_fd_, root_.path + "/" + outbox_, outbox_mask);
  if (!outbox_wd) {
    return fail(std::move(outbox_wd.error()));
  }
  if (auto root_wd = watch_->add(root_.root.get(), root_.path, root_mask); !root_wd) {
    return fail(std::move(root_wd.error()));
  }
  outbox_wd_ = *outbox_wd;
  refresh_peer(root_, side_, epoch_, peer_);
  return ok();
}

Result<void> Outbox::send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) {
  if (auto stopped = wakeup_.why_stopped(root_.path)) {
    return fail(std::move(*stopped));
  }
  if (frame.size() > max_frame_) {
    return fail(Errc::invalid_argument, "pipe.file: frame of " + std::to_string(frame.size()) +
                                            " bytes exceeds max_frame_bytes " + std::to_string(max_frame_));
  }
  auto deadline = deadline_after(timeout);
  for (;;) {
    handle_events();
    if (recount_) {
      recount_ = false;
      recount();
    }
    if (peer_.ended) {
      return fail(Errc::closed, "pipe.file dir:" + root_.path + ": " + peer_.why);
    }
    if (in_flight_.size() < capacity_) {
      break;
    }
    if (Clock::now() >= deadline) {
      return fail(Errc::timeout, "pipe.file dir:" + root_.path + ": no room for a frame within " +
                                     std::to_string(timeout.count()) + " ms: the " +
                                     std::string(side_name(peer_of(side_))) + " end has not consumed the " +
                                     std::to_string(in_flight_.size()) + " frames in '" + root_.path + "/" +
                                     outbox_ + "'");
    }
    watch_->wait(wakeup_.fd(), deadline);
    if (auto stopped = wakeup_.why_stopped(root_.path)) {
      return fail(std::move(*stopped));
    }
  }
  return hand_over(frame);
}

std::uint64_t Outbox::seal() noexcept {
  std::lock_guard lock(handover_);
  sealed_ = true;
  return sent_;
}

void Outbox::handle_events() {
  bool look_at_peer = false;
  for (const auto& event : watch_->drain()) {
    if ((event.mask & IN_Q_OVERFLOW) != 0) {
      recount_ = true;
      look_at_peer = true;
    } else if (event.wd == outbox_wd_ && !event.name.empty()) {
      if ((event.mask & (IN_DELETE | IN_MOVED_FROM)) != 0) {
        if (auto parsed = parse_frame_name(event.name); parsed && parsed->epoch == epoch_) {
          in_flight_.erase(parsed->seq);
        }
      }
    } else {
      look_at_peer = true;
    }
  }
  if (look_at_peer) {
    refresh_peer(root_, side_, epoch_, peer_);
  }
}

void Outbox::recount() {
  auto names = list_dir(outbox_fd_);
  if (!names) {
    logger_->warn("pipe.file dir:" + root_.path + ": " + names.error().message);
    return;
  }
  in_flight_.clear();
  for (const auto& name : *names) {
    if (auto parsed = parse_frame_name(name); parsed && parsed->epoch == epoch_ && parsed->seq < sent_) {
      in_flight_.insert(parsed->seq);
    }
  }
}

Result<void> Outbox::hand_over(std::span<const std::byte> frame) {
  // No fsync: the frame goes from one process to another on this host through the page cache, and the
  // rename makes it appear in the inbox whole or not at all. Surviving a crash of the machine would buy
  // nothing (both ends and the session die with it, and the next job end wipes what is left), and an fsync
  // per frame would cost milliseconds.
  const std::uint64_t seq = sent_;
  const auto tmp = tmp_name(side_, epoch_, seq);
  const int tmp_fd = root_.tmp.get();
  constexpr int create_flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  UniqueFd fd(openat(tmp_fd, tmp.c_str(), create_flags, 0600));
  if (!fd && errno == EEXIST) {
    unlinkat(tmp_fd, tmp.c_str(), 0);  // left by a send of ours that failed after creating it
    fd.reset(openat(tmp_fd, tmp.c_str(), create_flags, 0600));
  }
  if (!fd) {
    int err = errno;
    return fail(err == ENOENT ? Errc::closed : Errc::io_error,
                "pipe.file: cannot create '" + root_.shown("tmp", tmp) + "': " + errno_text(err));
  }
  int err = write_all(fd.get(), frame.data(), frame.size());
  if (err == 0 && ::close(fd.release()) != 0) {
    err = errno;
  }
  if (err != 0) {
    unlinkat(tmp_fd, tmp.c_str(), 0);
    return fail(Errc::io_error,
                "pipe.file: cannot write '" + root_.shown("tmp", tmp) + "': " + errno_text(err));
  }
  {
    std::lock_guard lock(handover_);
    if (sealed_) {
      unlinkat(tmp_fd, tmp.c_str(), 0);
      return fail(Errc::closed, "pipe.file dir:" + root_.path + ": this end is closed");
    }
    const auto name = frame_name(epoch_, seq);
    if (renameat(tmp_fd, tmp.c_str(), outbox_fd_, name.c_str()) != 0) {
      err = errno;
      unlinkat(tmp_fd, tmp.c_str(), 0);
      return fail(err == ENOENT ? Errc::closed : Errc::io_error,
                  "pipe.file: cannot move '" + root_.shown("tmp", tmp) + "' into '" + root_.path + "/" +
                      outbox_ + "': " + errno_text(err));
    }
    ++sent_;
  }
  // Counted only now, and the removal event is read only by this thread later: no consumption is missed.
  in_flight_.insert(seq);
  return ok();
}

}  // namespace ember::file_pipe
