#include "frame_io.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace ember::socket_pipe {

FrameReader::FrameReader(std::size_t max_frame, const char* bound_name, std::size_t buffer_bytes)
    : max_frame_(max_frame),
      bound_name_(bound_name),
      capacity_(std::max(buffer_bytes, length_prefix_bytes)),
      buffer_(std::make_unique_for_overwrite<std::byte[]>(capacity_)) {}

Result<std::optional<std::vector<std::byte>>> FrameReader::end_of_stream(const char* how) const {
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

Result<bool> FrameReader::start_frame() {
  std::uint32_t length = decode_length(buffer_.get() + begin_);
  // The bound is checked before the frame's vector exists: a hostile prefix costs nothing.
  if (length > max_frame_) {
    return fail(Errc::malformed, "frame length " + std::to_string(length) + " exceeds " + bound_name_ + " " +
                                     std::to_string(max_frame_));
  }
  begin_ += length_prefix_bytes;
  frame_ = std::vector<std::byte>(length);
  filled_ = 0;
  have_length_ = true;
  return true;
}

Result<std::optional<std::vector<std::byte>>> FrameReader::read(int fd) {
  for (;;) {
    if (!have_length_) {
      if (end_ - begin_ >= length_prefix_bytes) {
        if (auto started = start_frame(); !started) {
          return fail(std::move(started.error()));
        }
      } else {
        if (begin_ > 0) {
          std::memmove(buffer_.get(), buffer_.get() + begin_, end_ - begin_);
          end_ -= begin_;
          begin_ = 0;
        }
        ssize_t n = ::recv(fd, buffer_.get() + end_, capacity_ - end_, 0);
        if (n > 0) {
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
          return std::optional<std::vector<std::byte>>();
        }
        if (errno == ECONNRESET) {
          return end_of_stream("reset the connection");
        }
        return fail(Errc::io_error, std::string("recv: ") + std::strerror(errno));
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
      return std::optional<std::vector<std::byte>>(std::move(frame_));
    }
    // The read-ahead buffer is empty: read the rest of the frame in place, and whatever follows it (the
    // next frames) into the buffer, with one call.
    begin_ = end_ = 0;
    std::size_t missing = frame_.size() - filled_;
    iovec parts[2] = {{frame_.data() + filled_, missing}, {buffer_.get(), capacity_}};
    ssize_t n = ::readv(fd, parts, 2);
    if (n > 0) {
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
      return std::optional<std::vector<std::byte>>();
    }
    if (errno == ECONNRESET) {
      return end_of_stream("reset the connection");
    }
    return fail(Errc::io_error, std::string("readv: ") + std::strerror(errno));
  }
}

}  // namespace ember::socket_pipe
