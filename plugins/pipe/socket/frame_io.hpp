#pragma once
// Stream framing of pipe.socket. A connection carries frames back to back in both directions, each as
//
//   offset 0  length  u32, little-endian: the number of bytes that follow, 0 .. max_frame_bytes
//   offset 4  frame   `length` opaque bytes (an ember wire frame; this layer never looks inside)
//
// and nothing else: no magic, padding or trailer (the ember frame carries its own magic, version and
// checksum). A reader refuses a length above its max_frame_bytes before allocating anything for it, and
// treats end of stream inside a length prefix or a frame as a truncated frame (Errc::malformed). End of
// stream exactly between two frames is an orderly close (Errc::closed). Since the length is a u32, no frame
// is larger than 4 GiB - 1 bytes whatever max_frame_bytes says.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <ember/result.hpp>

namespace ember::socket_pipe {

/// Size of the length prefix in front of every frame.
inline constexpr std::size_t length_prefix_bytes = 4;
/// The largest length a prefix can carry.
inline constexpr std::uint64_t max_encodable_frame = 0xffff'ffffu;

/// Writes `length` as the u32 little-endian prefix.
inline void encode_length(std::uint32_t length, std::byte (&out)[length_prefix_bytes]) noexcept {
  for (std::size_t i = 0; i < length_prefix_bytes; ++i) {
    out[i] = static_cast<std::byte>((length >> (8 * i)) & 0xffu);
  }
}

/// Reads the u32 little-endian prefix.
inline std::uint32_t decode_length(const std::byte* in) noexcept {
  std::uint32_t length = 0;
  for (std::size_t i = 0; i < length_prefix_bytes; ++i) {
    length |= static_cast<std::uint32_t>(in[i]) << (8 * i);
  }
  return length;
}

/// Takes frames apart from a non-blocking stream socket. What it has read of a frame stays here between
/// calls, so a read that would block loses nothing. Small frames come through a read-ahead buffer (one
/// recv() picks up many of them); the body of a large frame is read straight into the vector returned.
class FrameReader {
 public:
  /// Reads frames of at most `max_frame` bytes (`bound_name` says which bound, in messages) through a
  /// read-ahead buffer of `buffer_bytes`.
  explicit FrameReader(std::size_t max_frame, const char* bound_name = "max_frame_bytes",
                       std::size_t buffer_bytes = 64 * 1024);

  /// Changes the bound for frames whose length has not been read yet.
  void set_max_frame(std::size_t max_frame, const char* bound_name) noexcept {
    max_frame_ = max_frame;
    bound_name_ = bound_name;
  }

  /// The next whole frame, or nullopt when the socket has no more bytes for now (what was read is kept):
  /// wait for more, then call again. With `wait`, the first read blocks, for at most the socket's
  /// SO_RCVTIMEO (a blocking socket), or until shutdown(). Errors: Errc::closed at end of stream between
  /// frames, Errc::malformed for a length above the bound or end of stream inside a frame,
  /// Errc::io_error when the socket fails otherwise.
  Result<std::optional<std::vector<std::byte>>> read(int fd, bool wait = false);
  /// Like read(), into `frame`: true when a whole frame is there. A large vector handed in is kept for a
  /// later frame of its size, so a caller that passes the same vector each time reuses a few buffers
  /// instead of allocating and zero-filling one per frame.
  Result<bool> read_into(int fd, std::vector<std::byte>& frame, bool wait = false);

  /// How many large buffers handed back are kept for reuse.
  static constexpr std::size_t max_retired = 3;

  /// Whether a frame is partly read (or a whole one waits in the read-ahead buffer).
  bool holds_bytes() const noexcept { return have_length_ || begin_ != end_; }
  /// Whether a whole small frame waits in the read-ahead buffer: read_into() then returns it at once,
  /// without a system call (so a caller need not even compute how long it may wait).
  bool frame_buffered() const noexcept { return !have_length_ && whole_frame_in_buffer(); }

 private:
  Result<bool> end_of_stream(const char* how) const;
  Result<bool> start_frame();
  bool take_buffered(std::vector<std::byte>& frame);
  // The prefix at begin_ and all the bytes it announces are in the buffer (so the frame is smaller than it).
  bool whole_frame_in_buffer() const noexcept {
    return end_ - begin_ >= length_prefix_bytes &&
           end_ - begin_ - length_prefix_bytes >= decode_length(buffer_.get() + begin_);
  }
  // How much to read ahead into the buffer: all of it while frames are small (one read picks up many),
  // a little after a large frame, whose successor is likely large too and better read in place than copied.
  std::size_t read_ahead() const noexcept {
    return large_ ? std::min<std::size_t>(capacity_, 4096) : capacity_;
  }

  std::size_t max_frame_;
  const char* bound_name_;
  std::size_t capacity_;
  std::unique_ptr<std::byte[]> buffer_;  // read-ahead: [begin_, end_) not consumed yet
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  bool have_length_ = false;                     // a prefix was read: frame_ has its final size
  std::vector<std::byte> frame_;                 // the frame being filled
  std::size_t filled_ = 0;                       // bytes of frame_ received so far
  bool large_ = false;                           // the last frame did not fit the read-ahead buffer
  std::vector<std::vector<std::byte>> retired_;  // large buffers to fill again, oldest first
};

}  // namespace ember::socket_pipe
