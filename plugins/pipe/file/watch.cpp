#include "watch.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace ember::file_pipe {

namespace {

// Room for many events per read: a burst of small frames is taken in one system call.
constexpr std::size_t event_buffer_bytes = 64 * 1024;

bool folder_removed(int fd) noexcept {
  struct stat st {};
  return fstat(fd, &st) == 0 && st.st_nlink == 0;
}

}  // namespace

Clock::time_point deadline_after(std::chrono::milliseconds timeout) noexcept {
  constexpr std::chrono::milliseconds longest = std::chrono::hours(24 * 365 * 10);
  return Clock::now() + std::clamp(timeout, std::chrono::milliseconds(0), longest);
}

Result<std::unique_ptr<Wakeup>> Wakeup::create() {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) {
    return fail(Errc::io_error, "pipe.file: eventfd: " + errno_text(errno));
  }
  return std::unique_ptr<Wakeup>(new Wakeup(std::move(fd)));
}

bool Wakeup::close() noexcept {
  bool first = !closed_.exchange(true, std::memory_order_acq_rel);
  signal();
  return first;
}

void Wakeup::cancel() noexcept {
  cancelled_.store(true, std::memory_order_release);
  signal();
}

void Wakeup::signal() noexcept {
  std::uint64_t one = 1;
  // Never read back: the eventfd stays readable, so every later poll returns at once.
  [[maybe_unused]] auto written = ::write(fd_.get(), &one, sizeof one);
}

std::optional<Error> Wakeup::why_stopped(const std::string& root) const {
  if (closed()) {
    return Error{Errc::closed, "pipe.file dir:" + root + ": this end is closed"};
  }
  if (cancelled()) {
    return Error{Errc::cancelled, "pipe.file dir:" + root + ": the job is stopping"};
  }
  return std::nullopt;
}

Watch::Watch(UniqueFd fd) : fd_(std::move(fd)), buffer_(event_buffer_bytes) {}

Result<Watch> Watch::create() {
  UniqueFd fd(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd) {
    return fail(Errc::io_error, "pipe.file: inotify_init1: " + errno_text(errno));
  }
  return Watch(std::move(fd));
}

Result<int> Watch::add(int dir_fd, const std::string& path, std::uint32_t mask) {
  // Through /proc/self/fd the watch lands on the very folder we opened, even if its path was swapped
  // since; without /proc, the path itself, never through a symlink.
  std::string by_fd = "/proc/self/fd/" + std::to_string(dir_fd);
  int wd = inotify_add_watch(fd_.get(), by_fd.c_str(), mask | IN_ONLYDIR);
  if (wd < 0) {
    wd = inotify_add_watch(fd_.get(), path.c_str(), mask | IN_ONLYDIR | IN_DONT_FOLLOW);
  }
  if (wd < 0) {
    return fail(Errc::io_error, "pipe.file: cannot watch '" + path + "': " + errno_text(errno));
  }
  return wd;
}

const std::vector<Event>& Watch::drain() {
  events_.clear();
  for (;;) {
    ssize_t n = ::read(fd_.get(), buffer_.data(), buffer_.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;  // EAGAIN: nothing more queued
    }
    std::size_t at = 0;
    while (at + sizeof(inotify_event) <= static_cast<std::size_t>(n)) {
      inotify_event header{};
      std::memcpy(&header, buffer_.data() + at, sizeof header);
      const char* name = buffer_.data() + at + sizeof header;
      events_.push_back(Event{header.wd, header.mask, std::string(name, strnlen(name, header.len))});
      at += sizeof header + header.len;
    }
    if (static_cast<std::size_t>(n) < buffer_.size() / 2) {
      break;  // a short read took everything queued; spare the call that would say EAGAIN
    }
  }
  return events_;
}

void Watch::wait(int wake_fd, Clock::time_point deadline) const {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  int wait_ms = static_cast<int>(std::clamp<long long>(left, 0, INT_MAX));
  pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {wake_fd, POLLIN, 0}};  // poll skips a negative fd
  ::poll(fds, 2, wait_ms);  // EINTR: the caller looks again and waits for what is left
}

void refresh_peer(const OpenRoot& root, PipeSide side, std::uint64_t epoch, PeerState& peer) {
  if (peer.ended) {
    return;
  }
  PipeSide other = peer_of(side);
  auto marker = read_small_file(root.root.get(), marker_name(other), 64);
  if (marker && marker->size() == 34 && (*marker)[16] == ' ' && parse_hex64(marker->substr(0, 16)) == epoch) {
    if (auto sent = parse_hex64(marker->substr(17, 16))) {
      peer.ended = true;
      peer.sent = *sent;
      peer.why = "the " + std::string(side_name(other)) + " end closed after sending " +
                 std::to_string(*sent) + " frames";
      return;
    }
  }
  auto session = read_session(root);
  if (!session && session.error().code == Errc::not_found) {
    peer.ended = true;
    peer.why = "the pipe's folder '" + root.path + "' was removed";
  } else if (session && *session != epoch) {
    peer.ended = true;
    peer.why = "another session (" + hex64(*session) + ") began in '" + root.path + "'";
  } else if (folder_removed(root.root.get()) || folder_removed(root.inbox(side)) ||
             folder_removed(root.outbox(side))) {
    peer.ended = true;
    peer.why = "the pipe's folder '" + root.path + "' was removed";
  }
}

std::string marker_text(std::uint64_t epoch, std::uint64_t sent) {
  return hex64(epoch) + " " + hex64(sent) + "\n";
}

}  // namespace ember::file_pipe
