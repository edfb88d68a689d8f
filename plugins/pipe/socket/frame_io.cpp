#include "frame_io.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

namespace ember::socket_pipe {

FrameReader::FrameReader(std::size_t max_frame, const char* bound_name, std::size_t buffer_bytes)
    : max_frame_(max_frame),
      bound_name_(bound_name),
      capacity_(std::max(buffer_bytes, length_prefix_bytes)),
      buffer_(std::make_unique_for_overwrite<std::byte[]>(capacity_)) {}

Result<bool> FrameReader::end_of_stream(const char* how) const {
  if (!have_length_ && begin_ == end_) {
    return fail(Errc::closed, std::string("the peer ") + how);
  }
  if (!have_length_) {
    return fail(Errc::malformed, "truncated length prefix: " + std::to_string(end_ - begin_) + " of " +
                                     std::to_string(length_prefix_bytes) + " bytes (the peer " + how + ")");
  }
  return fail(Errc::malformed, "truncated frame: " + std::to_string(filled_) + " of " +
                                   std::to_string(frame_.size()) + " bytes (the peer " + how + ")");
}

// A frame wholly in the read-ahead buffer is copied into the caller's vector, whose capacity it reuses: no
// allocation per frame. False leaves everything as it was (a frame not all here yet, or a length over the
// bound, which start_frame() reports).
bool FrameReader::take_buffered(std::vector<std::byte>& frame) {
  const std::uint32_t length = decode_length(buffer_.get() + begin_);
  if (!whole_frame_in_buffer() || length > max_frame_) {
    return false;
  }
  const std::byte* body = buffer_.get() + begin_ + length_prefix_bytes;
  frame.assign(body, body + length);
  begin_ += length_prefix_bytes + length;
  large_ = false;
  return true;
}

Result<bool> FrameReader::start_frame() {
  std::uint32_t length = decode_length(buffer_.get() + begin_);
  // The bound is checked before the frame's vector exists: a hostile prefix costs nothing.
  if (length > max_frame_) {
    return fail(Errc::malformed, "frame length " + std::to_string(length) + " exceeds " + bound_name_ + " " +
                                     std::to_string(max_frame_));
  }
  begin_ += length_prefix_bytes;
  // A large frame goes into a retired buffer of exactly its size when there is one (the chunks of a large
  // message all have one size), so it is neither allocated nor zero-filled again.
  if (length >= capacity_) {
    auto same = std::find_if(retired_.begin(), retired_.end(),
                             [&](const std::vector<std::byte>& b) { return b.size() == length; });
    if (same == retired_.end() && !retired_.empty()) {
      same = std::max_element(retired_.begin(), retired_.end(),
                              [](const auto& a, const auto& b) { return a.capacity() < b.capacity(); });
    }
    if (same != retired_.end()) {
      frame_ = std::move(*same);
      retired_.erase(same);
    }
  }
  frame_.resize(length);
  filled_ = 0;
  have_length_ = true;
  return true;
}

Result<std::optional<std::vector<std::byte>>> FrameReader::read(int fd, bool wait) {
  std::vector<std::byte> frame;
  auto got = read_into(fd, frame, wait);
  if (!got) {
    return fail(std::move(got.error()));
  }
  return *got ? std::optional<std::vector<std::byte>>(std::move(frame))
              : std::optional<std::vector<std::byte>>();
}

Result<bool> FrameReader::read_into(int fd, std::vector<std::byte>& frame, bool wait) {
  // The caller's buffer from the last frame comes back here: a large one is kept for a later large frame.
  if (frame.capacity() >= capacity_) {
    if (retired_.size() == max_retired) {
      retired_.erase(retired_.begin());
    }
    retired_.push_back(std::move(frame));
    frame = std::vector<std::byte>();
  }
  // Only the first read may block (for as long as the socket's SO_RCVTIMEO allows): it returns as soon as
  // bytes arrive, and the caller decides whether there is time to wait again.
  int flags = wait ? 0 : MSG_DONTWAIT;
  // A read that returns less than asked for has emptied the socket: the next read would only fail with
  // EAGAIN, so control goes back to the caller instead (one system call less per chunk of a large frame).
  bool drained = false;
  for (;;) {
    if (!have_length_) {
      if (end_ - begin_ >= length_prefix_bytes) {
        if (take_buffered(frame)) {
          return true;
        }
        if (auto started = start_frame(); !started) {
          return fail(std::move(started.error()));
        }
      } else {
        if (drained) {
          return false;
        }
        if (begin_ > 0) {
          std::memmove(buffer_.get(), buffer_.get() + begin_, end_ - begin_);
          end_ -= begin_;
          begin_ = 0;
        }
        const std::size_t want = read_ahead() - end_;
        ssize_t n = ::recv(fd, buffer_.get() + end_, want, flags);
        flags = MSG_DONTWAIT;
        if (n > 0) {
          drained = static_cast<std::size_t>(n) < want;
          end_ += static_cast<std::size_t>(n);
          continue;
        }
        if (n == 0) {
          return end_of_stream("closed the connection");
        }
        if (errno == EINTR) {
          continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          return false;
        }
        if (errno == ECONNRESET) {
          return end_of_stream("reset the connection");
        }
        return fail(Errc::io_error, "recv: " + std::system_category().message(errno));
      }
    }
    std::size_t take = std::min(end_ - begin_, frame_.size() - filled_);
    if (take > 0) {
      std::memcpy(frame_.data() + filled_, buffer_.get() + begin_, take);
      filled_ += take;
      begin_ += take;
    }
    if (filled_ == frame_.size()) {
      have_length_ = false;
      large_ = frame_.size() >= capacity_;
      frame = std::move(frame_);
      frame_ = std::vector<std::byte>();
      return true;
    }
    // The read-ahead buffer is empty: read the rest of the frame in place, and whatever follows it (the
    // next frames) into the buffer, with one call.
    if (drained) {
      return false;
    }
    begin_ = end_ = 0;
    std::size_t missing = frame_.size() - filled_;
    iovec parts[2] = {{frame_.data() + filled_, missing}, {buffer_.get(), read_ahead()}};
    msghdr message{};
    message.msg_iov = parts;
    message.msg_iovlen = 2;
    ssize_t n = ::recvmsg(fd, &message, flags);
    flags = MSG_DONTWAIT;
    if (n > 0) {
      drained = static_cast<std::size_t>(n) < missing + parts[1].iov_len;
      std::size_t body = std::min(static_cast<std::size_t>(n), missing);
      filled_ += body;
      end_ = static_cast<std::size_t>(n) - body;
      continue;
    }
    if (n == 0) {
      return end_of_stream("closed the connection");
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return false;
    }
    if (errno == ECONNRESET) {
      return end_of_stream("reset the connection");
    }
    return fail(Errc::io_error, "recvmsg: " + std::system_category().message(errno));
  }
}

}  // namespace ember::socket_pipe
