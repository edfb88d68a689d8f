// Unit tests of pipe.socket's pieces, linked from its static variant: address parsing and the frame reader.

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <base/unique_fd.hpp>

#include "address.hpp"
#include "frame_io.hpp"

namespace ember::socket_pipe {

using base::UniqueFd;
namespace {

using ::testing::HasSubstr;

// --- addresses ---

TEST(SocketAddress, ParsesUnixPathsAndMakesThemAbsolute) {
  auto absolute = parse_address("unix:/tmp/x/ember.sock");
  ASSERT_TRUE(absolute) << absolute.error().message;
  EXPECT_TRUE(absolute->is_unix());
  EXPECT_EQ(absolute->to_string(), "unix:/tmp/x/ember.sock");
  auto relative = parse_address("unix:rel/../ember.sock");
  ASSERT_TRUE(relative);
  EXPECT_TRUE(relative->path.is_absolute());
  EXPECT_EQ(relative->path.filename(), "ember.sock");
}

TEST(SocketAddress, RefusesBadUnixPaths) {
  EXPECT_THAT(parse_address("unix:").error().message, HasSubstr("empty"));
  auto long_path = parse_address("unix:/" + std::string(200, 'a'));
  ASSERT_FALSE(long_path);
  EXPECT_THAT(long_path.error().message, HasSubstr("at most 107"));
}

TEST(SocketAddress, ParsesTcpLiterals) {
  auto v4 = parse_address("tcp:127.0.0.1:40123");
  ASSERT_TRUE(v4) << v4.error().message;
  EXPECT_EQ(v4->to_string(), "tcp:127.0.0.1:40123");
  EXPECT_EQ(v4->port(), 40123);
  EXPECT_TRUE(v4->is_loopback());
  auto v6 = parse_address("tcp:[::1]:0");
  ASSERT_TRUE(v6) << v6.error().message;
  EXPECT_EQ(v6->to_string(), "tcp:[::1]:0");
  EXPECT_TRUE(v6->is_loopback());
  EXPECT_TRUE(parse_address("tcp:127.200.0.9:1")->is_loopback());
  EXPECT_TRUE(parse_address("tcp:[::ffff:127.0.0.1]:1")->is_loopback());
  EXPECT_FALSE(parse_address("tcp:10.0.0.1:1")->is_loopback());
  EXPECT_FALSE(parse_address("tcp:0.0.0.0:1")->is_loopback());
  EXPECT_FALSE(parse_address("tcp:[::]:1")->is_loopback());
  EXPECT_FALSE(parse_address("tcp:[2001:db8::1]:1")->is_loopback());
}

TEST(SocketAddress, RefusesWhatIsNotALiteralAddress) {
  EXPECT_THAT(parse_address("tcp:localhost:1").error().message, HasSubstr("not an IPv4 address literal"));
  EXPECT_THAT(parse_address("tcp:[nope]:1").error().message, HasSubstr("not an IPv6 address literal"));
  EXPECT_THAT(parse_address("tcp:::1:1").error().message, HasSubstr("not an IPv4"));
  EXPECT_THAT(parse_address("tcp:127.0.0.1:65536").error().message, HasSubstr("0 to 65535"));
  EXPECT_THAT(parse_address("tcp:127.0.0.1:").error().message, HasSubstr("0 to 65535"));
  EXPECT_THAT(parse_address("tcp:127.0.0.1:8x").error().message, HasSubstr("0 to 65535"));
  EXPECT_THAT(parse_address("tcp:127.0.0.1").error().message, HasSubstr("want tcp:HOST:PORT"));
  EXPECT_THAT(parse_address("tcp:[::1]").error().message, HasSubstr("want tcp:[IPV6]:PORT"));
  EXPECT_THAT(parse_address("udp:127.0.0.1:1").error().message, HasSubstr("want unix:/abs/path or tcp:"));
}

// --- frame reader ---

class FrameReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    reading_ = UniqueFd(fds[0]);
    writing_ = UniqueFd(fds[1]);
  }

  void write_bytes(const std::vector<std::byte>& bytes) {
    ASSERT_EQ(::write(writing_.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }

  // What the endpoint does: read, and poll the socket while the reader wants more bytes (at most 1 s).
  Result<std::optional<std::vector<std::byte>>> next(FrameReader& reader) {
    for (;;) {
      auto got = reader.read(reading_.get());
      pollfd ready{reading_.get(), POLLIN, 0};
      if (!got || *got || ::poll(&ready, 1, 1000) != 1) {
        return got;
      }
    }
  }

  static std::vector<std::byte> framed(const std::vector<std::byte>& frame) {
    std::byte prefix[length_prefix_bytes];
    encode_length(static_cast<std::uint32_t>(frame.size()), prefix);
    std::vector<std::byte> out(prefix, prefix + length_prefix_bytes);
    out.insert(out.end(), frame.begin(), frame.end());
    return out;
  }

  static std::vector<std::byte> pattern(std::size_t size, int seed) {
    std::vector<std::byte> out(size);
    for (std::size_t i = 0; i < size; ++i) {
      out[i] = static_cast<std::byte>(i * 7 + static_cast<std::size_t>(seed));
    }
    return out;
  }

  UniqueFd reading_;
  UniqueFd writing_;
};

TEST_F(FrameReaderTest, LengthIsLittleEndian) {
  std::byte prefix[length_prefix_bytes];
  encode_length(0x01020304u, prefix);
  EXPECT_EQ(prefix[0], std::byte{0x04});
  EXPECT_EQ(prefix[3], std::byte{0x01});
  EXPECT_EQ(decode_length(prefix), 0x01020304u);
}

TEST_F(FrameReaderTest, FramesFedOneByteAtATimeComeOutWholeAtTheirBoundaries) {
  std::vector<std::vector<std::byte>> frames = {pattern(0, 1), pattern(1, 2), pattern(5, 3), pattern(300, 4)};
  std::vector<std::byte> stream;
  for (const auto& frame : frames) {
    auto one = framed(frame);
    stream.insert(stream.end(), one.begin(), one.end());
  }
  for (std::size_t buffer : {std::size_t{4}, std::size_t{7}, std::size_t{65536}}) {
    FrameReader reader(1024, "max_frame_bytes", buffer);
    std::size_t next = 0;
    for (std::byte b : stream) {
      write_bytes({b});
      for (;;) {
        auto got = reader.read(reading_.get());
        ASSERT_TRUE(got) << got.error().message;
        if (!*got) {
          break;
        }
        ASSERT_LT(next, frames.size());
        EXPECT_EQ(**got, frames[next]) << "frame " << next << " buffer " << buffer;
        ++next;
      }
    }
    EXPECT_EQ(next, frames.size()) << "buffer " << buffer;
    EXPECT_FALSE(reader.holds_bytes());
  }
}

TEST_F(FrameReaderTest, ManyFramesInOneReadAndALargeOneReadInPlace) {
  std::vector<std::byte> stream;
  for (int i = 0; i < 100; ++i) {
    auto one = framed(pattern(static_cast<std::size_t>(i), i));
    stream.insert(stream.end(), one.begin(), one.end());
  }
  write_bytes(stream);
  FrameReader reader(1 << 20, "max_frame_bytes", 4096);
  for (int i = 0; i < 100; ++i) {
    auto got = next(reader);
    ASSERT_TRUE(got && *got) << i;
    EXPECT_EQ(**got, pattern(static_cast<std::size_t>(i), i));
  }
  auto big = pattern(100000, 9);
  auto big_framed = framed(big);
  std::thread writer([&] {
    std::size_t off = 0;
    while (off < big_framed.size()) {
      ssize_t n = ::write(writing_.get(), big_framed.data() + off, big_framed.size() - off);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  });
  std::optional<std::vector<std::byte>> frame;
  for (int spins = 0; spins < 10000 && !frame; ++spins) {
    auto got = reader.read(reading_.get());
    ASSERT_TRUE(got) << got.error().message;
    frame = std::move(*got);
    if (!frame) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  writer.join();
  ASSERT_TRUE(frame);
  EXPECT_EQ(*frame, big);
}

TEST_F(FrameReaderTest, FramesWaitingInTheBufferAreTakenWithoutTouchingTheSocketIntoTheCallersVector) {
  std::vector<std::byte> stream;
  for (int i = 0; i < 3; ++i) {
    auto one = framed(pattern(static_cast<std::size_t>(10 + i), i));
    stream.insert(stream.end(), one.begin(), one.end());
  }
  auto partial = framed(pattern(50, 7));
  stream.insert(stream.end(), partial.begin(), partial.end() - 1);  // the last byte is still to come
  write_bytes(stream);
  FrameReader reader(1024, "max_frame_bytes", 4096);
  EXPECT_FALSE(reader.frame_buffered());
  std::vector<std::byte> frame;
  frame.reserve(64);
  const std::byte* storage = frame.data();
  auto got = reader.read_into(reading_.get(), frame);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ(frame, pattern(10, 0));
  // The next two are in the buffer: fd -1 would fail any system call, so none is made.
  for (int i = 1; i < 3; ++i) {
    ASSERT_TRUE(reader.frame_buffered()) << i;
    got = reader.read_into(-1, frame);
    ASSERT_TRUE(got) << got.error().message;
    ASSERT_TRUE(*got);
    EXPECT_EQ(frame, pattern(static_cast<std::size_t>(10 + i), i));
    EXPECT_EQ(frame.data(), storage) << "a small frame reuses the vector handed in";
  }
  // One byte short of whole: not buffered, and the reader goes to the socket for the rest.
  EXPECT_FALSE(reader.frame_buffered());
  write_bytes({partial.back()});
  auto last = next(reader);
  ASSERT_TRUE(last && *last);
  EXPECT_EQ(**last, pattern(50, 7));
}

TEST_F(FrameReaderTest, ABufferedLengthOverTheBoundIsStillRefused) {
  std::byte prefix[length_prefix_bytes];
  encode_length(200, prefix);
  std::vector<std::byte> stream(prefix, prefix + length_prefix_bytes);
  stream.resize(stream.size() + 200, std::byte{1});
  write_bytes(stream);
  FrameReader reader(100, "max_frame_bytes", 4096);
  std::vector<std::byte> frame;
  auto got = reader.read_into(reading_.get(), frame);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::malformed);
  EXPECT_THAT(got.error().message, HasSubstr("exceeds max_frame_bytes 100"));
}

TEST_F(FrameReaderTest, EndOfStreamBetweenFramesIsClosedAndInsideOneIsTruncated) {
  {
    FrameReader reader(1024);
    write_bytes(framed(pattern(3, 1)));
    writing_.reset();
    ASSERT_TRUE(*next(reader));
    auto end = next(reader);
    ASSERT_FALSE(end);
    EXPECT_EQ(end.error().code, Errc::closed);
  }
  SetUp();
  {
    FrameReader reader(1024);
    auto partial = framed(pattern(10, 1));
    partial.resize(length_prefix_bytes + 6);
    write_bytes(partial);
    writing_.reset();
    auto end = next(reader);
    ASSERT_FALSE(end);
    EXPECT_EQ(end.error().code, Errc::malformed);
    EXPECT_THAT(end.error().message, HasSubstr("truncated frame: 6 of 10 bytes"));
  }
  SetUp();
  {
    FrameReader reader(1024);
    write_bytes({std::byte{1}, std::byte{0}, std::byte{0}});
    writing_.reset();
    auto end = next(reader);
    ASSERT_FALSE(end);
    EXPECT_EQ(end.error().code, Errc::malformed);
    EXPECT_THAT(end.error().message, HasSubstr("truncated length prefix: 3 of 4 bytes"));
  }
}

TEST_F(FrameReaderTest, LengthAboveTheBoundIsRefused) {
  FrameReader reader(1000);
  write_bytes(framed(pattern(1000, 1)));
  ASSERT_TRUE(*next(reader));
  write_bytes({std::byte{0xe9}, std::byte{0x03}, std::byte{0}, std::byte{0}});  // 1001
  auto refused = next(reader);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::malformed);
  EXPECT_THAT(refused.error().message, HasSubstr("frame length 1001 exceeds max_frame_bytes 1000"));
}

}  // namespace
}  // namespace ember::socket_pipe
