#include "socket_endpoint.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <base/strings.hpp>
#include <base/unique_fd.hpp>

#include "frame_io.hpp"

// How an endpoint works.
// - The job end starts with a listening socket. Its first send() or receive() drives admission in poll():
//   it accepts connections, refuses Unix peers of another uid (SO_PEERCRED), reads each candidate's first
//   frame (bounded in size and time) and asks the admission check; the first candidate admitted becomes
//   the peer, and the listener, its socket file and the other candidates go away. A call that times out
//   leaves that state for the next call, which carries on.
// - Once a peer is attached its socket blocks: send() writes the length prefix and the frame with one
//   sendmsg(), receive() reads through a FrameReader; each waits inside the system call, bounded by
//   SO_SNDTIMEO / SO_RCVTIMEO. A frame the peer takes no byte of for stall_patience is copied to a
//   background writer thread, so send() returns; the next send() waits for that frame to go out first.
// - close() marks the end closed, writes the eventfd (wakes poll()), shutdown()s the socket (wakes calls
//   blocked in it) and removes the socket file; descriptors are released when the last call in progress,
//   or the background writer, has returned.

namespace ember::socket_pipe {

using base::UniqueFd;

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Frame = std::vector<std::byte>;

constexpr int listen_backlog = 16;
// Connections accepted but not yet admitted. A newcomer beyond this pushes out the oldest candidate, so a
// crowd of idle strangers costs a bounded amount of memory and cannot keep the real peer waiting in the
// listen backlog: every connection is taken in promptly, and the real peer sends its HELLO at once.
constexpr std::size_t max_candidates = 16;
// A candidate must send its first frame (a HELLO: small, sent right after connecting) within this time and
// size, or it is dropped.
constexpr auto first_frame_time = 3s;
constexpr std::size_t first_frame_bound = std::size_t{1} << 20;
constexpr auto connect_retry = 20ms;
// How long send() waits for room without any progress before it hands the rest of the frame to the
// background writer: a peer that reads concurrently frees room within microseconds, and one that does not
// (it is sending, or busy) must not make our send() wait for it. (SO_SNDTIMEO counts in jiffies: at
// HZ=250 this is up to 4 ms.)
constexpr auto stall_patience = 2ms;
// The most iovecs one sendmsg() takes (IOV_MAX on Linux); a frame of more parts takes several calls.
constexpr std::size_t max_iov = 1024;

std::string millis(std::chrono::milliseconds timeout) {
  return std::to_string(timeout.count()) + " ms";
}

// Deadlines are taken once per call; "forever" is capped so the arithmetic cannot overflow.
Clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  auto now = Clock::now();
  if (timeout <= 0ms) {
    return now;
  }
  return now + std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365));
}

// ppoll() until `deadline`, restarted after signals. The number of ready entries, 0 on timeout, -1 on error.
int poll_until(pollfd* fds, nfds_t count, Clock::time_point deadline) {
  for (;;) {
    auto left = std::max<Clock::duration>(deadline - Clock::now(), Clock::duration::zero());
    auto seconds = std::chrono::duration_cast<std::chrono::seconds>(left);
    timespec wait{
        static_cast<time_t>(seconds.count()),
        static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(left - seconds).count())};
    int ready = ::ppoll(fds, count, &wait, nullptr);
    if (ready >= 0 || errno != EINTR) {
      return ready;
    }
  }
}

void set_buffers(int fd, int bytes) {
  if (bytes > 0) {
    // Best effort, like the system default it replaces: the kernel clamps to its own limits.
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  }
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Once attached, a socket blocks: send() and receive() wait inside sendmsg()/recvmsg(), bounded by
// SO_SNDTIMEO/SO_RCVTIMEO, instead of in poll(), which saves a poll() and a retried call per chunk of a
// large frame. Calls that must not wait pass MSG_DONTWAIT.
bool set_blocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0;
}

std::optional<ucred> peer_credentials(int fd) {
  ucred cred{};
  socklen_t length = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) {
    return std::nullopt;
  }
  return cred;
}

std::string describe_credentials(const ucred& cred) {
  return "peer pid " + std::to_string(cred.pid) + " uid " + std::to_string(cred.uid);
}

// The socket file the job end created, so that it removes that file and not one another endpoint has
// since put at the same path.
struct SocketFile {
  std::string path;
  dev_t device = 0;
  ino_t inode = 0;

  void remove() {
    struct stat st {};
    if (!path.empty() && ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == device &&
        st.st_ino == inode) {
      ::unlink(path.c_str());
    }
    path.clear();
  }
};

// A connection accepted by the job end that has not passed admission yet.
struct Candidate {
  UniqueFd fd;
  FrameReader reader;
  Clock::time_point expires;
  std::string who;
};

// The job end's listening socket and its candidates; touched only by the thread driving admission.
struct Acceptor {
  UniqueFd listener;
  std::vector<Candidate> candidates;
};

enum class Wait { ready, timeout, closed, failed };

class SocketEndpoint final : public PipeEndpoint {
 public:
  // The job end, before any peer.
  SocketEndpoint(const EndpointSettings& settings, std::string address, UniqueFd wake, UniqueFd listener,
                 std::optional<SocketFile> socket_file, PeerAdmission admit, bool is_unix)
      : settings_(settings),
        address_(std::move(address)),
        is_unix_(is_unix),
        wake_(std::move(wake)),
        admit_(std::move(admit)),
        reader_(settings.max_frame),
        description_(address_ + " (no peer yet)"),
        socket_file_(std::move(socket_file)),
        acceptor_(std::make_unique<Acceptor>()) {
    acceptor_->listener = std::move(listener);
  }

  // The trainer end, connected.
  SocketEndpoint(const EndpointSettings& settings, std::string address, UniqueFd wake, UniqueFd peer,
                 std::string description)
      : settings_(settings),
        address_(std::move(address)),
        wake_(std::move(wake)),
        peer_(std::move(peer)),
        reader_(settings.max_frame),
        description_(std::move(description)) {
    attached_.store(true);
  }

  ~SocketEndpoint() override {
    close();
    if (writer_.joinable()) {
      writer_.join();  // prompt: close() woke it
    }
  }

  Result<void> send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) override {
    const std::span<const std::byte> parts[1] = {frame};
    return send_parts(parts, timeout);
  }

  Result<void> send_parts(std::span<const std::span<const std::byte>> parts,
                          std::chrono::milliseconds timeout) override {
    const std::span<const std::span<const std::byte>> frames[1] = {parts};
    return send_frames(frames, timeout);
  }

  Result<void> send_frames(std::span<const std::span<const std::span<const std::byte>>> frames,
                           std::chrono::milliseconds timeout) override {
    try {
      return write_frames(frames, timeout);
    } catch (const std::exception& e) {
      return fail(Errc::internal, "pipe.socket " + describe() + ": " + e.what());
    }
  }

  Result<std::optional<Frame>> receive(std::chrono::milliseconds timeout) override {
    Frame frame;
    auto got = receive_into(frame, timeout);
    if (!got) {
      return fail(std::move(got.error()));
    }
    return *got ? std::optional<Frame>(std::move(frame)) : std::optional<Frame>();
  }

  Result<bool> receive_into(Frame& frame, std::chrono::milliseconds timeout) override {
    try {
      return receive_frame(frame, timeout);
    } catch (const std::bad_alloc&) {
      close();
      return fail(Errc::io_error,
                  "pipe.socket " + describe() + ": out of memory for a frame; this end is closed");
    } catch (const std::exception& e) {
      return fail(Errc::internal, "pipe.socket " + describe() + ": " + e.what());
    }
  }

  void close() noexcept override {
    std::lock_guard lock(mutex_);
    if (closed_) {
      return;
    }
    closed_ = true;
    closing_.store(true, std::memory_order_release);
    // Wakes a send() or receive() polling in another thread; the eventfd stays readable from now on.
    std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(wake_.get(), &one, sizeof one);
    if (peer_) {
      // Wakes a send() or receive() blocked on the socket in another thread, and the peer sees the end of
      // the stream now, after what we sent, even while a thread of ours still holds the descriptor.
      ::shutdown(peer_.get(), SHUT_RDWR);
    }
    if (socket_file_) {
      socket_file_->remove();
      socket_file_.reset();
    }
    cv_.notify_all();
    backlog_cv_.notify_all();
    if (users_ == 0) {
      release_locked();
    }
  }

  std::string describe() const override {
    std::lock_guard lock(mutex_);
    return description_;
  }

 private:
  // Marks a send() or receive() in progress, so close() from another thread leaves the descriptors open
  // (only signalled and shut down) until the last call in progress returns.
  class Use {
   public:
    explicit Use(SocketEndpoint& endpoint) : endpoint_(endpoint) {
      std::lock_guard lock(endpoint_.mutex_);
      entered_ = !endpoint_.closed_;
      if (entered_) {
        ++endpoint_.users_;
      }
    }
    ~Use() {
      if (entered_) {
        std::lock_guard lock(endpoint_.mutex_);
        if (--endpoint_.users_ == 0 && endpoint_.closed_) {
          endpoint_.release_locked();
        }
      }
    }
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;
    explicit operator bool() const noexcept { return entered_; }

   private:
    SocketEndpoint& endpoint_;
    bool entered_ = false;
  };

  void release_locked() noexcept {
    acceptor_.reset();
    peer_.reset();
    wake_.reset();
  }

  tl::unexpected<Error> error(Errc code, const std::string& what) const {
    return fail(code, "pipe.socket " + describe() + ": " + what);
  }

  Error closed_error_locked() const {
    return Error{Errc::closed, "pipe.socket " + description_ + ": this end is closed" +
                                   (close_reason_.empty() ? "" : " (" + close_reason_ + ")")};
  }

  tl::unexpected<Error> closed_error() const {
    std::lock_guard lock(mutex_);
    return fail(closed_error_locked());
  }

  void close_because(const std::string& why) {
    {
      std::lock_guard lock(mutex_);
      if (close_reason_.empty() && !closed_) {
        close_reason_ = why;
      }
    }
    close();
  }

  // Closes the endpoint after an error that leaves the stream unusable, and reports the error.
  tl::unexpected<Error> break_with(Errc code, const std::string& what) {
    auto failure = error(code, what);
    close_because(what);
    return failure;
  }

  Wait wait_ready(int fd, short events, Clock::time_point deadline) const {
    pollfd fds[2] = {{fd, events, 0}, {wake_.get(), POLLIN, 0}};
    int ready = poll_until(fds, 2, deadline);
    if (ready < 0) {
      return Wait::failed;
    }
    if (fds[1].revents != 0) {
      return Wait::closed;
    }
    return ready == 0 ? Wait::timeout : Wait::ready;
  }

  // Writes the frames, each behind its length prefix, with as few sendmsg() calls as the socket allows.
  Result<void> write_frames(std::span<const std::span<const std::span<const std::byte>>> frames,
                            std::chrono::milliseconds timeout) {
    // Each length prefix and every part in one sendmsg(): a frame's payload is sent from where it lies.
    // Laid out first, so a batch with a frame over the bound is refused before any of it is sent.
    prefixes_.resize(frames.size());
    iov_.clear();
    std::size_t total = 0;
    for (std::size_t f = 0; f < frames.size(); ++f) {
      iov_.push_back({prefixes_[f].bytes, length_prefix_bytes});
      std::size_t frame_size = 0;
      for (const auto& part : frames[f]) {
        frame_size += part.size();
        if (!part.empty()) {
          iov_.push_back({const_cast<std::byte*>(part.data()), part.size()});
        }
      }
      if (frame_size > settings_.max_frame) {
        return error(Errc::invalid_argument, "frame of " + std::to_string(frame_size) +
                                                 " bytes exceeds max_frame_bytes " +
                                                 std::to_string(settings_.max_frame));
      }
      encode_length(static_cast<std::uint32_t>(frame_size), prefixes_[f].bytes);
      total += length_prefix_bytes + frame_size;
    }
    auto deadline = deadline_after(timeout);
    Use use(*this);
    if (!use) {
      return closed_error();
    }
    if (frames.empty()) {
      return ok();
    }
    auto attached = attach(deadline);
    if (!attached) {
      return fail(std::move(attached.error()));
    }
    if (!*attached) {
      return error(Errc::timeout, "no peer attached within " + millis(timeout));
    }
    auto drained = wait_for_backlog(deadline);
    if (!drained) {
      return fail(std::move(drained.error()));
    }
    if (!*drained) {
      return error(Errc::timeout, "the previous frame is still being written after " + millis(timeout) +
                                      " (the peer is not reading); nothing of this frame was sent");
    }
    // `message` holds every part left; each sendmsg() takes at most max_iov of them.
    msghdr message{};
    message.msg_iov = iov_.data();
    message.msg_iovlen = iov_.size();
    std::size_t left = total;
    const int fd = peer_.get();
    // The peer is attached, so its socket blocks: sendmsg() waits for room itself, each wait bounded by
    // SO_SNDTIMEO = stall_patience (or what is left of the timeout), and close()'s shutdown() wakes it.
    for (;;) {
      auto wait = std::min<Clock::duration>(stall_patience, deadline - Clock::now());
      if (wait > Clock::duration::zero() && !bound_wait(fd, SO_SNDTIMEO, wait, send_timeout_)) {
        return break_with(Errc::io_error, "setsockopt SO_SNDTIMEO: " + base::errno_text(errno));
      }
      msghdr some = message;
      some.msg_iovlen = std::min<std::size_t>(message.msg_iovlen, max_iov);
      ssize_t n = ::sendmsg(fd, &some, MSG_NOSIGNAL | (wait > Clock::duration::zero() ? 0 : MSG_DONTWAIT));
      if (n > 0) {
        left -= static_cast<std::size_t>(n);
        if (left == 0) {
          return ok();
        }
        skip(message, static_cast<std::size_t>(n));
        if (closing_.load(std::memory_order_acquire)) {
          return closed_error();
        }
        continue;
      }
      const int cause = n < 0 ? errno : EAGAIN;
      if (closing_.load(std::memory_order_acquire)) {
        return closed_error();
      }
      if (cause == EPIPE || cause == ECONNRESET) {
        return break_with(Errc::closed, "the peer has gone (" + base::errno_text(cause) + ")");
      }
      if (cause == EAGAIN || cause == EWOULDBLOCK) {
        return hand_over(message, left);  // no room for a while: the peer is not reading now
      }
      if (cause != EINTR) {
        return break_with(Errc::io_error, "sendmsg: " + base::errno_text(cause));
      }
    }
  }

  // Sets SO_RCVTIMEO or SO_SNDTIMEO to `wait`, unless the current setting (`current`) is close enough: not
  // longer than `wait` by over 1 ms, nor shorter than half of it (the caller then waits again). Saves a
  // system call per frame when the timeouts a caller passes do not change.
  static bool bound_wait(int fd, int option, Clock::duration wait, Clock::duration& current) {
    if (current > Clock::duration::zero() && current <= wait + 1ms && current >= wait / 2) {
      return true;
    }
    auto micros =
        std::max<std::int64_t>(std::chrono::duration_cast<std::chrono::microseconds>(wait).count(), 1);
    timeval tv{static_cast<time_t>(micros / 1000000), static_cast<suseconds_t>(micros % 1000000)};
    if (::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv) != 0) {
      return false;
    }
    current = wait;
    return true;
  }

  static void skip(msghdr& message, std::size_t bytes) {
    while (bytes >= message.msg_iov->iov_len) {
      bytes -= message.msg_iov->iov_len;
      ++message.msg_iov;
      --message.msg_iovlen;
    }
    message.msg_iov->iov_base = static_cast<std::byte*>(message.msg_iov->iov_base) + bytes;
    message.msg_iov->iov_len -= bytes;
  }

  // Frames never interleave on the stream: the rest of an earlier frame goes out before the next one.
  // True once the background writer is idle, false if it is still busy at the deadline.
  Result<bool> wait_for_backlog(Clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    if (!backlog_busy_ && !closed_) {
      return true;
    }
    backlog_cv_.wait_until(lock, deadline, [&] { return !backlog_busy_ || closed_; });
    if (closed_) {
      return fail(closed_error_locked());
    }
    return !backlog_busy_;
  }

  // The peer is not reading now: the rest of the frames is copied and written by the background writer,
  // so that send() returns (a peer that sends before it reads cannot deadlock us, and a frame larger than
  // the socket buffers can be sent before the peer starts reading). One send's rest at most waits there.
  Result<void> hand_over(const msghdr& message, std::size_t left) {
    try {
      Frame rest;
      rest.reserve(left);
      for (std::size_t i = 0; i < message.msg_iovlen; ++i) {
        const auto* from = static_cast<const std::byte*>(message.msg_iov[i].iov_base);
        rest.insert(rest.end(), from, from + message.msg_iov[i].iov_len);
      }
      std::lock_guard lock(mutex_);
      if (closed_) {
        return fail(closed_error_locked());
      }
      if (!writer_.joinable()) {
        writer_ = std::thread([this] { write_backlogs(); });
        ++users_;  // the writer holds the descriptors open until it ends (it waits for this lock to start)
      }
      backlog_ = std::move(rest);
      backlog_busy_ = true;
      backlog_cv_.notify_all();
      return ok();
    } catch (const std::exception& e) {
      // Part of the frame may be out already: the stream cannot go on.
      return break_with(Errc::io_error,
                        std::string("cannot hand the rest of a frame to the background writer: ") + e.what() +
                            "; this end is closed");
    }
  }

  // The background writer's thread: writes each backlog handed over, until this end is closed.
  void write_backlogs() noexcept {
    const int fd = peer_.get();
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        backlog_cv_.wait(lock, [&] { return closed_ || backlog_busy_; });
        if (closed_) {
          break;
        }
      }
      std::optional<std::string> failure;
      try {
        failure = write_backlog(fd);
      } catch (const std::exception& e) {
        failure = std::string("background writer: ") + e.what();
      }
      {
        std::lock_guard lock(mutex_);
        backlog_ = Frame();
        backlog_busy_ = false;
        backlog_cv_.notify_all();
      }
      if (failure) {
        try {
          close_because(*failure);
        } catch (...) {
          close();
        }
        break;
      }
    }
    std::lock_guard lock(mutex_);
    if (--users_ == 0 && closed_) {
      release_locked();
    }
  }

  // Writes backlog_ whole; why it could not, or nothing (also when this end was closed meanwhile: a
  // frame handed over is then dropped, and the peer sees it truncated).
  std::optional<std::string> write_backlog(int fd) {
    std::size_t offset = 0;
    while (offset < backlog_.size()) {
      ssize_t n = ::send(fd, backlog_.data() + offset, backlog_.size() - offset, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        offset += static_cast<std::size_t>(n);
        continue;
      }
      if (errno == EINTR) {
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) {
        return "the peer has gone while a frame was written in the background (" + base::errno_text(errno) +
               ")";
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        return "background send: " + base::errno_text(errno);
      }
      switch (wait_ready(fd, POLLOUT, deadline_after(std::chrono::hours(1)))) {
        case Wait::ready:
        case Wait::timeout:
          break;
        case Wait::closed:
          return std::nullopt;
        case Wait::failed:
          return "poll: " + base::errno_text(errno);
      }
    }
    return std::nullopt;
  }

  Result<bool> receive_frame(Frame& frame, std::chrono::milliseconds timeout) {
    Use use(*this);
    if (!use) {
      return closed_error();
    }
    // Frames sent together arrive together: the ones after the first wait in the read-ahead buffer, and
    // are taken from there without a clock reading or a system call.
    if (attached_.load(std::memory_order_acquire) && !first_frame_ && reader_.frame_buffered()) {
      auto got = reader_.read_into(peer_.get(), frame);
      if (!got) {
        return break_with(got.error().code, got.error().message);
      }
      return *got;
    }
    auto deadline = deadline_after(timeout);
    auto attached = attach(deadline);
    if (!attached) {
      return fail(std::move(attached.error()));
    }
    if (!*attached) {
      return false;
    }
    if (first_frame_) {
      frame = std::move(*first_frame_);
      first_frame_.reset();
      return true;
    }
    const int fd = peer_.get();
    // The peer is attached, so its socket blocks: the read waits for bytes itself, bounded by SO_RCVTIMEO
    // (what is left of the timeout), and close()'s shutdown() wakes it.
    for (;;) {
      auto left = deadline - Clock::now();
      const bool wait = left > Clock::duration::zero();
      if (wait && !bound_wait(fd, SO_RCVTIMEO, left, receive_timeout_)) {
        return break_with(Errc::io_error, "setsockopt SO_RCVTIMEO: " + base::errno_text(errno));
      }
      auto got = reader_.read_into(fd, frame, wait);
      if (got && *got) {
        return true;
      }
      if (closing_.load(std::memory_order_acquire)) {
        return closed_error();  // our close() shut the socket down under the read
      }
      if (!got) {
        return break_with(got.error().code, got.error().message);
      }
      if (!wait) {
        return false;
      }
    }
  }

  // Waits until a peer is attached: true, false on timeout, or an error. One thread at a time drives the
  // acceptor; a second caller (send and receive may both be waiting) waits for it, and takes over when
  // the driver's own timeout ends first. The acceptor keeps its state between calls.
  Result<bool> attach(Clock::time_point deadline) {
    if (attached_.load(std::memory_order_acquire)) {
      return true;
    }
    std::unique_lock lock(mutex_);
    for (;;) {
      if (closed_) {
        lock.unlock();
        return closed_error();
      }
      if (attached_.load(std::memory_order_relaxed)) {
        return true;
      }
      if (!driving_) {
        driving_ = true;
        lock.unlock();
        auto outcome = drive_admission(deadline);
        lock.lock();
        driving_ = false;
        cv_.notify_all();
        return outcome;
      }
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && driving_ && !closed_) {
        return attached_.load(std::memory_order_relaxed);
      }
    }
  }

  Result<bool> drive_admission(Clock::time_point deadline) {
    Acceptor& acceptor = *acceptor_;
    std::vector<pollfd> fds;
    for (;;) {
      auto now = Clock::now();
      drop_expired(acceptor, now);
      auto until = deadline;
      for (const auto& candidate : acceptor.candidates) {
        until = std::min(until, candidate.expires);
      }
      fds.clear();
      fds.push_back({wake_.get(), POLLIN, 0});
      fds.push_back({acceptor.listener.get(), POLLIN, 0});
      for (const auto& candidate : acceptor.candidates) {
        fds.push_back({candidate.fd.get(), POLLIN, 0});
      }
      if (poll_until(fds.data(), fds.size(), until) < 0) {
        return error(Errc::io_error, "poll: " + base::errno_text(errno));
      }
      if (fds[0].revents != 0) {
        return closed_error();
      }
      std::vector<Candidate> kept;
      for (std::size_t i = 0; i < acceptor.candidates.size(); ++i) {
        Candidate& candidate = acceptor.candidates[i];
        if (fds[2 + i].revents == 0) {
          kept.push_back(std::move(candidate));
          continue;
        }
        auto got = candidate.reader.read(candidate.fd.get());
        if (!got) {
          warn("dropped " + candidate.who + " before admission: " + got.error().message);
        } else if (!*got) {
          kept.push_back(std::move(candidate));
        } else if (screen(**got, candidate.who)) {
          return admit_peer(std::move(candidate.fd), candidate.who, std::move(candidate.reader),
                            std::move(*got));
        }
      }
      acceptor.candidates = std::move(kept);
      if (fds[1].revents != 0) {
        auto accepted = accept_candidates(acceptor);
        if (!accepted || *accepted) {
          return accepted;
        }
      }
      if (Clock::now() >= deadline) {
        return false;
      }
    }
  }

  // Accepts what the listen backlog holds (at most max_candidates per call, so a flood cannot keep this
  // loop from reading the candidates' first frames). True when a peer was admitted outright (no admission
  // check).
  Result<bool> accept_candidates(Acceptor& acceptor) {
    for (std::size_t taken = 0; taken < max_candidates; ++taken) {
      sockaddr_storage from{};
      socklen_t length = sizeof from;
      int raw = ::accept4(acceptor.listener.get(), reinterpret_cast<sockaddr*>(&from), &length,
                          SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (raw < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          return false;
        }
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) {
          continue;
        }
        return error(Errc::io_error, "accept: " + base::errno_text(errno));
      }
      UniqueFd fd(raw);
      std::string who;
      if (is_unix_) {
        auto cred = peer_credentials(raw);
        if (!cred) {
          warn("refused a peer whose credentials cannot be read: " + base::errno_text(errno));
          continue;
        }
        who = describe_credentials(*cred);
        if (cred->uid != ::geteuid()) {
          warn("refused " + who + ": not our uid " + std::to_string(::geteuid()));
          continue;
        }
      } else {
        who = "peer " + describe_inet(from);
        set_nodelay(raw);
      }
      set_buffers(raw, settings_.socket_buffer);
      if (!admit_) {
        return admit_peer(std::move(fd), who, FrameReader(settings_.max_frame), std::nullopt);
      }
      if (acceptor.candidates.size() >= max_candidates) {
        // Full: the oldest candidate has had the longest to say HELLO and has not; it makes room.
        warn("dropped " + acceptor.candidates.front().who + ": no first frame yet, and " +
             std::to_string(max_candidates) + " connections wait for admission (the oldest goes first)");
        acceptor.candidates.erase(acceptor.candidates.begin());
      }
      acceptor.candidates.push_back(
          Candidate{std::move(fd),
                    FrameReader(std::min(first_frame_bound, settings_.max_frame), "the first-frame bound"),
                    Clock::now() + first_frame_time, who});
    }
    return false;
  }

  void drop_expired(Acceptor& acceptor, Clock::time_point now) {
    std::erase_if(acceptor.candidates, [&](const Candidate& candidate) {
      if (candidate.expires > now) {
        return false;
      }
      warn("dropped " + candidate.who + ": no first frame within " +
           std::to_string(std::chrono::duration_cast<std::chrono::seconds>(first_frame_time).count()) + " s");
      return true;
    });
  }

  // Runs the admission check on a candidate's first frame; the check's exceptions refuse the candidate.
  bool screen(const Frame& first, const std::string& who) {
    try {
      if (admit_(first)) {
        return true;
      }
      warn("refused " + who + ": the admission check rejected its first frame (" +
           std::to_string(first.size()) + " bytes)");
    } catch (const std::exception& e) {
      warn("refused " + who + ": the admission check threw: " + e.what());
    } catch (...) {
      warn("refused " + who + ": the admission check threw");
    }
    return false;
  }

  // Makes a candidate the peer: one peer per endpoint, so the listener, its socket file and every other
  // candidate go away.
  Result<bool> admit_peer(UniqueFd fd, std::string who, FrameReader reader, std::optional<Frame> first) {
    reader.set_max_frame(settings_.max_frame, "max_frame_bytes");
    if (!set_blocking(fd.get())) {
      return error(Errc::io_error, "fcntl on " + who + ": " + base::errno_text(errno));
    }
    std::string description;
    {
      std::lock_guard lock(mutex_);
      if (closed_) {
        return fail(Errc::closed, "pipe.socket " + description_ + ": this end is closed");
      }
      peer_ = std::move(fd);
      reader_ = std::move(reader);
      first_frame_ = std::move(first);
      description_ = address_ + " " + who;
      description = description_;
      if (socket_file_) {
        socket_file_->remove();
        socket_file_.reset();
      }
      acceptor_.reset();
      attached_.store(true, std::memory_order_release);
    }
    if (settings_.logger->enabled(LogLevel::info)) {
      settings_.logger->info("admitted " + description);
    }
    return true;
  }

  void warn(const std::string& what) { settings_.logger->warn(address_ + ": " + what); }

  const EndpointSettings settings_;
  const std::string address_;
  const bool is_unix_ = false;

  // Guarded by mutex_: closed_, users_, driving_, description_, close_reason_, socket_file_, the backlog
  // hand-over, and the descriptors' lifetime (released only when closed and no call or writer uses them).
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool closed_ = false;
  int users_ = 0;
  bool driving_ = false;
  std::atomic<bool> attached_ = false;
  std::string close_reason_;           // what closed this end, when an error did
  std::atomic<bool> closing_ = false;  // closed_, readable without the lock

  Clock::duration receive_timeout_{};  // SO_RCVTIMEO as last set (the receiving thread's)
  Clock::duration send_timeout_{};     // SO_SNDTIMEO as last set (the sending thread's)
  std::vector<iovec> iov_;             // the sending thread's sendmsg() parts, reused
  struct Prefix {
    std::byte bytes[length_prefix_bytes];
  };
  std::vector<Prefix> prefixes_;  // and the length prefixes they point to

  // The background writer: backlog_ is the rest of one send, owned by the writer while backlog_busy_.
  std::condition_variable backlog_cv_;
  Frame backlog_;
  bool backlog_busy_ = false;
  std::thread writer_;  // started at the first hand-over, joined by the destructor

  UniqueFd wake_;                     // eventfd: readable once close() was called
  const PeerAdmission admit_;         // empty: the first connection from our uid is the peer
  UniqueFd peer_;                     // set once, when attached_ becomes true
  FrameReader reader_;                // the receiving thread's, once attached
  std::optional<Frame> first_frame_;  // the admitted peer's first frame, for the first receive()
  std::string description_;
  std::optional<SocketFile> socket_file_;  // job end, until a peer is admitted or the end closes
  std::unique_ptr<Acceptor> acceptor_;     // job end, until a peer is admitted
};

std::string in_use(const Address& address) {
  return "pipe.socket " + address.to_string() +
         ": another job end listens on this path (two sites or jobs given the same address?); refusing to "
         "take it over";
}

// Whether something listens on the Unix socket at `address`: a socket file left by a job end that ended
// refuses the connection, a live one accepts it (or has a full backlog). The probe sends nothing, so a job
// end with an admission check (every job's) drops it as a candidate that left without a word.
bool listener_answers(const Address& address) {
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!probe) {
    return false;
  }
  if (::connect(probe.get(), address.sockaddr_ptr(), address.length) == 0) {
    return true;
  }
  return errno == EAGAIN || errno == EINPROGRESS;
}

// Makes room for the job end's socket file: creates the folder, removes a stale socket, refuses anything
// else at that path, and a socket another job end still listens on.
Result<void> prepare_socket_path(const Address& address) {
  std::error_code ec;
  std::filesystem::create_directories(address.path.parent_path(), ec);
  if (ec) {
    return fail(Errc::io_error, "pipe.socket " + address.to_string() + ": cannot create the folder " +
                                    address.path.parent_path().string() + ": " + ec.message());
  }
  struct stat st {};
  if (::lstat(address.path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return ok();
    }
    return fail(Errc::io_error, "pipe.socket " + address.to_string() + ": " + base::errno_text(errno));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return fail(Errc::invalid_argument, "pipe.socket " + address.to_string() +
                                            ": the path exists and is not a socket; refusing to replace it");
  }
  if (listener_answers(address)) {
    return fail(Errc::invalid_argument, in_use(address));
  }
  if (::unlink(address.path.c_str()) != 0 && errno != ENOENT) {
    return fail(Errc::io_error, "pipe.socket " + address.to_string() +
                                    ": cannot remove the stale socket file: " + base::errno_text(errno));
  }
  return ok();
}

Result<SocketFile> bind_unix(int fd, const Address& address) {
  if (auto prepared = prepare_socket_path(address); !prepared) {
    return fail(std::move(prepared.error()));
  }
  if (::bind(fd, address.sockaddr_ptr(), address.length) != 0) {
    if (errno == EADDRINUSE) {  // another job end bound it since the check above
      return fail(Errc::invalid_argument, in_use(address));
    }
    return fail(Errc::io_error, "pipe.socket " + address.to_string() + ": bind: " + base::errno_text(errno));
  }
  // Before listen(), so no one can connect while the file still has the umask's mode.
  struct stat st {};
  if (::chmod(address.path.c_str(), 0600) != 0 || ::lstat(address.path.c_str(), &st) != 0) {
    int saved = errno;
    ::unlink(address.path.c_str());
    return fail(Errc::io_error,
                "pipe.socket " + address.to_string() + ": chmod 0600: " + base::errno_text(saved));
  }
  return SocketFile{address.path.string(), st.st_dev, st.st_ino};
}

Result<void> bind_tcp(int fd, Address& address, int socket_buffer) {
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (address.domain() == AF_INET6) {
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  }
  // Set on the listener so that TCP's window scaling, fixed at the handshake, can use them.
  set_buffers(fd, socket_buffer);
  if (::bind(fd, address.sockaddr_ptr(), address.length) != 0) {
    return fail(Errc::io_error, "pipe.socket " + address.to_string() + ": bind: " + base::errno_text(errno));
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    return fail(Errc::io_error,
                "pipe.socket " + address.to_string() + ": getsockname: " + base::errno_text(errno));
  }
  address.set_port(bound.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                                              : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port));
  return ok();
}

Result<UniqueFd> make_wake() {
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) {
    return fail(Errc::io_error, "pipe.socket: eventfd: " + base::errno_text(errno));
  }
  return wake;
}

}  // namespace

Result<std::unique_ptr<PipeEndpoint>> open_job_end(Address& address, const EndpointSettings& settings,
                                                   const PeerAdmission& admit) {
  try {
    UniqueFd listener(::socket(address.domain(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listener) {
      return fail(Errc::io_error,
                  "pipe.socket " + address.to_string() + ": socket: " + base::errno_text(errno));
    }
    std::optional<SocketFile> socket_file;
    if (address.is_unix()) {
      auto bound = bind_unix(listener.get(), address);
      if (!bound) {
        return fail(std::move(bound.error()));
      }
      socket_file = std::move(*bound);
    } else if (auto bound = bind_tcp(listener.get(), address, settings.socket_buffer); !bound) {
      return fail(std::move(bound.error()));
    }
    if (::listen(listener.get(), listen_backlog) != 0) {
      int saved = errno;
      if (socket_file) {
        socket_file->remove();
      }
      return fail(Errc::io_error,
                  "pipe.socket " + address.to_string() + ": listen: " + base::errno_text(saved));
    }
    auto wake = make_wake();
    if (!wake) {
      if (socket_file) {
        socket_file->remove();
      }
      return fail(std::move(wake.error()));
    }
    if (settings.logger->enabled(LogLevel::debug)) {
      settings.logger->debug("job end listening on " + address.to_string());
    }
    return std::unique_ptr<PipeEndpoint>(
        std::make_unique<SocketEndpoint>(settings, address.to_string(), std::move(*wake), std::move(listener),
                                         std::move(socket_file), admit, address.is_unix()));
  } catch (const std::exception& e) {
    return fail(Errc::internal, "pipe.socket " + address.to_string() + ": " + e.what());
  }
}

namespace {

// One connection attempt: 0 when connected, else the errno that refused it.
int try_connect(int fd, const Address& address, Clock::time_point deadline) {
  if (::connect(fd, address.sockaddr_ptr(), address.length) == 0) {
    return 0;
  }
  int error = errno;
  if (error != EINPROGRESS && error != EINTR) {
    return error;
  }
  pollfd wait{fd, POLLOUT, 0};
  int ready = poll_until(&wait, 1, deadline);
  if (ready < 0) {
    return errno;
  }
  if (ready == 0) {
    return ETIMEDOUT;
  }
  socklen_t length = sizeof error;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
    return errno;
  }
  return error;
}

std::string describe_trainer_end(int fd, const Address& address) {
  std::string text = address.to_string();
  if (address.is_unix()) {
    if (auto cred = peer_credentials(fd)) {
      text += " " + describe_credentials(*cred);
    }
    return text;
  }
  sockaddr_storage local{};
  socklen_t length = sizeof local;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0) {
    text += " from " + describe_inet(local);
  }
  return text;
}

}  // namespace

Result<std::unique_ptr<PipeEndpoint>> open_trainer_end(const Address& address,
                                                       const EndpointSettings& settings,
                                                       std::chrono::milliseconds timeout,
                                                       const std::stop_token& stop) {
  try {
    const auto deadline = deadline_after(timeout);
    for (;;) {
      UniqueFd fd(::socket(address.domain(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!fd) {
        return fail(Errc::io_error,
                    "pipe.socket " + address.to_string() + ": socket: " + base::errno_text(errno));
      }
      set_buffers(fd.get(), settings.socket_buffer);
      int error = try_connect(fd.get(), address, deadline);
      if (error == 0 && !set_blocking(fd.get())) {
        error = errno;
      }
      if (error == 0) {
        if (!address.is_unix()) {
          set_nodelay(fd.get());
        }
        auto wake = make_wake();
        if (!wake) {
          return fail(std::move(wake.error()));
        }
        std::string description = describe_trainer_end(fd.get(), address);
        if (settings.logger->enabled(LogLevel::debug)) {
          settings.logger->debug("trainer end connected: " + description);
        }
        return std::unique_ptr<PipeEndpoint>(std::make_unique<SocketEndpoint>(
            settings, address.to_string(), std::move(*wake), std::move(fd), std::move(description)));
      }
      // Nothing listens yet (no socket file, or a port or stale file with no listener), or the job end's
      // backlog is full: the job end may still be starting, so try again until the timeout.
      if (error != ENOENT && error != ECONNREFUSED && error != EAGAIN && error != ETIMEDOUT) {
        return fail(Errc::io_error,
                    "pipe.socket: cannot connect to " + address.to_string() + ": " + base::errno_text(error));
      }
      auto now = Clock::now();
      if (now >= deadline) {
        return fail(Errc::timeout, "pipe.socket: no job end at " + address.to_string() + " within " +
                                       millis(timeout) + " (last attempt: " + base::errno_text(error) + ")");
      }
      if (stop.stop_requested()) {
        return fail(Errc::cancelled, "pipe.socket: stopped while connecting to " + address.to_string());
      }
      std::this_thread::sleep_for(std::min<Clock::duration>(connect_retry, deadline - now));
    }
  } catch (const std::exception& e) {
    return fail(Errc::internal, "pipe.socket " + address.to_string() + ": " + e.what());
  }
}

}  // namespace ember::socket_pipe
