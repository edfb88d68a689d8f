#include "wire/frame.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "expect_error.hpp"

#include "wire/crc32c.hpp"

namespace ember::wire {
namespace {

using test::expect_invalid;
using test::expect_malformed;
using test::pattern;
using test::to_bytes;

using Bytes = std::vector<std::byte>;

void put_le(Bytes& frame, std::size_t at, std::uint64_t value, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    frame[at + i] = static_cast<std::byte>(value >> (8 * i));
  }
}

// Recomputes the trailing checksum after a test tampered with a frame, so decoding reaches the check the
// test aims at rather than stopping at the checksum.
void reseal(Bytes& frame) {
  auto body = std::span<const std::byte>(frame).first(frame.size() - frame_trailer_size);
  put_le(frame, frame.size() - frame_trailer_size, crc32c(0, body), 4);
}

// A frame assembled byte by byte, for header regions the encoder would never write.
Bytes raw_frame(std::string_view topic, const Bytes& headers,
                std::uint8_t flag_bits = flags::first | flags::last) {
  Bytes frame(frame_header_size);
  std::memcpy(frame.data(), "EMBR", 4);
  frame[4] = std::byte{frame_version};
  frame[5] = std::byte{1};
  frame[6] = static_cast<std::byte>(Op::log);
  frame[7] = std::byte{flag_bits};
  put_le(frame, 8, 42, 8);
  put_le(frame, 40, topic.size(), 2);
  put_le(frame, 42, headers.size(), 2);
  auto t = to_bytes(topic);
  frame.insert(frame.end(), t.begin(), t.end());
  frame.insert(frame.end(), headers.begin(), headers.end());
  frame.resize(frame.size() + frame_trailer_size);
  reseal(frame);
  return frame;
}

Bytes encode(const FrameHeader& header, std::string_view topic = {}, const Headers& headers = {},
             std::span<const std::byte> payload = {}, const Limits& limits = {}) {
  Bytes out;
  auto encoded = encode_frame(out, header, topic, headers, payload, limits);
  EXPECT_TRUE(encoded) << encoded.error().message;
  return out;
}

FrameHeader header_for(std::size_t payload_len) {
  FrameHeader h;
  h.op = Op::task_ready;
  h.msg_id = 7;
  h.total_len = payload_len;
  return h;
}

// ---- UTF-8

TEST(Utf8, AcceptsWellFormedTextAtEveryBoundary) {
  for (std::string_view ok : {"", "plain ASCII", "\x7F", "\xC2\x80", "\xDF\xBF", "\xE0\xA0\x80",
                              "\xED\x9F\xBF", "\xEE\x80\x80", "\xEF\xBF\xBF", "\xF0\x90\x80\x80",
                              "\xF4\x8F\xBF\xBF", "caf\xC3\xA9 \xE8\xAE\xAD\xE7\xBB\x83 \xF0\x9F\x9A\x80"}) {
    EXPECT_TRUE(valid_utf8(ok)) << ok;
  }
  EXPECT_TRUE(valid_utf8(std::string_view("nul\0inside", 10)));
}

const std::vector<std::pair<const char*, std::string_view>>& bad_utf8() {
  static const std::vector<std::pair<const char*, std::string_view>> cases = {
      {"overlong 2-byte '/'", "\xC0\xAF"},
      {"overlong 2-byte U+007F", "\xC1\xBF"},
      {"overlong 3-byte", "\xE0\x80\xAF"},
      {"overlong 3-byte U+07FF", "\xE0\x9F\xBF"},
      {"overlong 4-byte", "\xF0\x80\x80\xAF"},
      {"overlong 4-byte U+FFFF", "\xF0\x8F\xBF\xBF"},
      {"surrogate U+D800", "\xED\xA0\x80"},
      {"surrogate U+DFFF", "\xED\xBF\xBF"},
      {"past U+10FFFF", "\xF4\x90\x80\x80"},
      {"lead byte F5", "\xF5\x80\x80\x80"},
      {"lead byte F8", "\xF8\x88\x80\x80\x80"},
      {"lead byte FF", "\xFF"},
      {"lone continuation", "\x80"},
      {"truncated 2-byte", "\xC3"},
      {"truncated 3-byte", "\xE2\x82"},
      {"truncated 4-byte", "\xF0\x9F\x9A"},
      {"bad continuation", "\xE2\x28\xA1"},
  };
  return cases;
}

TEST(Utf8, RejectsOverlongsSurrogatesOutOfRangeAndTruncated) {
  for (const auto& [what, text] : bad_utf8()) {
    EXPECT_FALSE(valid_utf8(text)) << what;
    EXPECT_FALSE(valid_utf8("ok " + std::string(text))) << what << " after text";
  }
}

// ---- round trips

TEST(Frame, RoundTripsEveryOpTypeFlagAndId) {
  auto payload = pattern(100);
  for (auto type : {MessageType::request, MessageType::reply}) {
    for (int op = 1; op <= static_cast<int>(Op::ack); ++op) {
      for (std::uint8_t fl = 0; fl <= flags::all; ++fl) {
        FrameHeader h;
        h.type = type;
        h.op = static_cast<Op>(op);
        h.flags = fl;
        h.msg_id = 0xFEDCBA9876543210ull + static_cast<unsigned>(op);
        h.req_id = std::numeric_limits<std::uint64_t>::max() - static_cast<unsigned>(op);
        h.total_len = Limits{}.max_message;  // the largest allowed
        h.chunk_index = 0xFFFF'FFF0u + fl;
        bool first = (fl & flags::first) != 0;
        auto frame = encode(h, first ? "topic" : "", first ? Headers{{"k", "v"}} : Headers{}, payload);
        auto view = decode_frame(frame);
        ASSERT_TRUE(view) << view.error().message;
        EXPECT_EQ(view->header.type, type);
        EXPECT_EQ(view->header.op, h.op);
        EXPECT_EQ(view->header.flags, fl);
        EXPECT_EQ(view->header.msg_id, h.msg_id);
        EXPECT_EQ(view->header.req_id, h.req_id);
        EXPECT_EQ(view->header.total_len, h.total_len);
        EXPECT_EQ(view->header.chunk_index, h.chunk_index);
        EXPECT_EQ(view->header.payload_len, payload.size());
        EXPECT_EQ(view->topic, first ? "topic" : "");
        EXPECT_EQ(view->headers.size(), first ? 1u : 0u);
        ASSERT_EQ(view->payload.size(), payload.size());
        EXPECT_EQ(std::memcmp(view->payload.data(), payload.data(), payload.size()), 0);
      }
    }
  }
}

TEST(Frame, OpNames) {
  EXPECT_EQ(to_string(Op::hello), "HELLO");
  EXPECT_EQ(to_string(Op::task_ready), "TASK_READY");
  EXPECT_EQ(to_string(Op::result_rejected), "RESULT_REJECTED");
  EXPECT_EQ(to_string(Op::ack), "ACK");
  for (int op = 1; op <= static_cast<int>(Op::ack); ++op) {
    EXPECT_NE(to_string(static_cast<Op>(op)), "UNKNOWN") << op;
  }
}

TEST(Frame, RoundTripsUtf8TopicsAndHeaders) {
  const std::string max_topic(Limits{}.max_topic, 't');
  for (std::string_view topic :
       {std::string_view(""), std::string_view("a"), std::string_view("session.task-ready v2"),
        std::string_view("train/round 3 - site-1.example"), std::string_view("\xE8\xAE\xAD\xE7\xBB\x83"),
        std::string_view("caf\xC3\xA9 \xF0\x9F\x9A\x80"), std::string_view(max_topic)}) {
    Headers headers = {{"empty", ""},
                       {"trace-id", "4bf92f3577b34da6"},
                       {"x.dotted key", "with spaces - and dots."},
                       {"\xC3\xBC\x62\x65r", "\xE4\xB8\xAD\xE6\x96\x87"},
                       {"empty", "again, kept in order"}};
    auto frame = encode(header_for(0), topic, headers);
    ASSERT_EQ(frame.size(), encoded_size(topic, encoded_headers_size(headers), 0));
    auto view = decode_frame(frame);
    ASSERT_TRUE(view) << view.error().message;
    EXPECT_EQ(view->topic, topic);
    EXPECT_EQ(view->headers, headers);
    ASSERT_NE(view->header_value("trace-id"), nullptr);
    EXPECT_EQ(*view->header_value("trace-id"), "4bf92f3577b34da6");
    EXPECT_EQ(*view->header_value("empty"), "");  // the first of two
    EXPECT_EQ(view->header_value("missing"), nullptr);
    EXPECT_TRUE(view->payload.empty());
  }
}

TEST(Frame, RoundTripsTheMostHeadersAllowed) {
  Headers headers;
  for (std::uint32_t i = 0; i < Limits{}.max_header_count; ++i) {
    headers.emplace_back("h" + std::to_string(i), std::string(i % 7, 'v'));
  }
  auto frame = encode(header_for(0), "t", headers);
  auto view = decode_frame(frame);
  ASSERT_TRUE(view) << view.error().message;
  EXPECT_EQ(view->headers, headers);
}

TEST(Frame, RoundTripsEmptyAndOneMebibytePayloads) {
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{1} << 20}) {
    auto payload = pattern(size, 9);
    auto frame = encode(header_for(size), "p", {}, payload);
    EXPECT_EQ(frame.size(), frame_overhead + 1 + size);
    auto view = decode_frame(frame);
    ASSERT_TRUE(view) << view.error().message;
    ASSERT_EQ(view->payload.size(), size);
    EXPECT_TRUE(std::equal(payload.begin(), payload.end(), view->payload.begin()));
    // The payload points into the frame, not into a copy.
    if (size != 0) {
      EXPECT_EQ(view->payload.data(), frame.data() + frame_header_size + 1);
    }
  }
}

TEST(Frame, RoundTripsAMessageSplitIntoChunks) {
  auto message = pattern(10'000, 4);
  std::vector<Bytes> frames;
  constexpr std::size_t chunk = 3000;
  for (std::size_t at = 0, index = 0; at < message.size(); at += chunk, ++index) {
    FrameHeader h = header_for(message.size());
    h.chunk_index = static_cast<std::uint32_t>(index);
    h.flags = (at == 0 ? flags::first : 0) | (at + chunk >= message.size() ? flags::last : 0);
    auto part = std::span<const std::byte>(message).subspan(at, std::min(chunk, message.size() - at));
    frames.push_back(encode(h, at == 0 ? "bulk" : "", at == 0 ? Headers{{"k", "v"}} : Headers{}, part));
  }
  Bytes joined;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    auto view = decode_frame(frames[i]);
    ASSERT_TRUE(view) << view.error().message;
    EXPECT_EQ(view->header.chunk_index, i);
    EXPECT_EQ(view->header.total_len, message.size());
    EXPECT_EQ((view->header.flags & flags::first) != 0, i == 0);
    EXPECT_EQ((view->header.flags & flags::last) != 0, i + 1 == frames.size());
    joined.insert(joined.end(), view->payload.begin(), view->payload.end());
  }
  EXPECT_EQ(joined, message);
}

TEST(Frame, EncodeWithFillWritesThePayloadInPlace) {
  auto payload = pattern(5000, 6);
  Bytes copied = encode(header_for(payload.size()), "fill", {{"k", "v"}}, payload);
  Bytes filled;
  int calls = 0;
  auto encoded = encode_frame_with(filled, header_for(payload.size()), "fill", {{"k", "v"}}, payload.size(),
                                   [&](std::span<std::byte> into) {
                                     ++calls;
                                     EXPECT_EQ(into.size(), payload.size());
                                     std::memcpy(into.data(), payload.data(), into.size());
                                     return ok();
                                   });
  ASSERT_TRUE(encoded) << encoded.error().message;
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(filled, copied);

  // No payload, no call; a failing fill is the encoder's error.
  Bytes out;
  EXPECT_TRUE(encode_frame_with(out, header_for(0), "", {}, 0, [&](std::span<std::byte>) {
    ADD_FAILURE() << "called for an empty payload";
    return ok();
  }));
  auto failed = encode_frame_with(out, header_for(10), "", {}, 10, [](std::span<std::byte>) -> Result<void> {
    return fail(Errc::io_error, "source went away");
  });
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, Errc::io_error);
  // The limits are checked before the fill runs.
  Limits small;
  small.max_chunk = 9;
  expect_invalid(encode_frame_with(
                     out, header_for(10), "", {}, 10,
                     [&](std::span<std::byte>) {
                       ADD_FAILURE() << "called for a chunk over the limit";
                       return ok();
                     },
                     small),
                 "chunk of 10 bytes exceeds the limit of 9");
}

TEST(Frame, EncodeReplacesTheOutputsContents) {
  Bytes out(1000, std::byte{0x55});
  ASSERT_TRUE(encode_frame(out, header_for(0), "t", {}, {}));
  EXPECT_EQ(out.size(), frame_overhead + 1);
  EXPECT_TRUE(decode_frame(out));
}

// ---- frame_size

TEST(FrameSize, ReadsTheWholeSizeFromTheFixedHeaderAlone) {
  auto payload = pattern(777);
  Headers headers = {{"a", "bc"}, {"d", ""}};
  auto frame = encode(header_for(payload.size()), "topic", headers, payload);
  auto size = frame_size(std::span<const std::byte>(frame).first(frame_header_size));
  ASSERT_TRUE(size) << size.error().message;
  EXPECT_EQ(*size, frame.size());
  EXPECT_EQ(*size, frame_overhead + 5 + encoded_headers_size(headers) + payload.size());
  EXPECT_EQ(encoded_headers_size(headers), 4u + 1 + 2 + 4 + 1);
}

TEST(FrameSize, RejectsFewerThanFortyEightBytes) {
  auto frame = encode(header_for(0));
  for (std::size_t n : {0, 1, 4, 47}) {
    expect_malformed(frame_size(std::span<const std::byte>(frame).first(n)),
                     "truncated header: " + std::to_string(n) + " of 48 bytes");
  }
  expect_malformed(decode_frame(std::span<const std::byte>(frame).first(47)), "truncated header");
}

// ---- rejections of the fixed header

struct FieldCase {
  const char* name;
  std::size_t offset;
  std::uint64_t value;
  std::size_t size;
  const char* message;
};

TEST(Decode, RejectsEveryBadFixedField) {
  const FieldCase cases[] = {
      {"magic", 0, 0x52424D46, 4, "bad magic"},
      {"magic byte", 3, 0, 1, "bad magic"},
      {"version 0", 4, 0, 1, "unsupported version 0"},
      {"version 2", 4, 2, 1, "unsupported version 2"},
      {"type 0", 5, 0, 1, "unknown message type 0"},
      {"type 3", 5, 3, 1, "unknown message type 3"},
      {"op 0", 6, 0, 1, "unknown op 0"},
      {"op 16", 6, 16, 1, "unknown op 16"},
      {"op 255", 6, 255, 1, "unknown op 255"},
      {"flag 8", 7, 0x08 | flags::first, 1, "unknown flags 0x09"},
      {"flag 0x80", 7, 0x80, 1, "unknown flags 0x80"},
      {"reserved byte 0", 44, 1, 1, "reserved field is not zero"},
      {"reserved byte 3", 47, 0x80, 1, "reserved field is not zero"},
  };
  auto original = encode(header_for(3), "topic", {{"k", "v"}}, pattern(3));
  for (const auto& c : cases) {
    auto frame = original;
    put_le(frame, c.offset, c.value, c.size);
    reseal(frame);
    SCOPED_TRACE(c.name);
    expect_malformed(decode_frame(frame), c.message);
    expect_malformed(frame_size(std::span<const std::byte>(frame).first(frame_header_size)), c.message);
  }
}

TEST(Decode, MessagesNameTheMessageAndChunk) {
  FrameHeader h = header_for(0);
  h.msg_id = 123456;
  h.chunk_index = 0;
  auto frame = encode(h);
  frame[6] = std::byte{99};
  expect_malformed(decode_frame(frame), "malformed frame: msg_id 123456 chunk 0: unknown op 99");
}

TEST(Decode, RejectsTopicOrHeadersOnALaterChunk) {
  for (auto [topic, headers] :
       {std::pair<std::string, Headers>{"topic", {}}, std::pair<std::string, Headers>{"", {{"k", "v"}}}}) {
    FrameHeader h = header_for(0);
    auto frame = encode(h, topic, headers);
    frame[7] = std::byte{flags::last};  // no longer the first chunk
    reseal(frame);
    expect_malformed(decode_frame(frame), "topic or headers on a chunk that is not the first");
  }
}

TEST(Decode, RejectsSizesOverTheLimits) {
  auto payload = pattern(100);
  auto frame = encode(header_for(1000), "topic", {{"key", "value"}}, payload);
  Limits small_chunk;
  small_chunk.max_chunk = 99;
  expect_malformed(decode_frame(frame, small_chunk), "chunk of 100 bytes exceeds the limit of 99");
  Limits small_message;
  small_message.max_message = 999;
  expect_malformed(decode_frame(frame, small_message), "message of 1000 bytes exceeds the limit of 999");
  Limits small_topic;
  small_topic.max_topic = 4;
  expect_malformed(decode_frame(frame, small_topic), "topic of 5 bytes exceeds the limit of 4");
  Limits small_headers;
  small_headers.max_headers = 11;
  expect_malformed(decode_frame(frame, small_headers), "headers of 12 bytes exceed the limit of 11");
  // Exactly at each limit is fine.
  Limits exact{5, 12, 1, 100, 1000};
  EXPECT_TRUE(decode_frame(frame, exact));
  // Over the default limits, from the fixed header alone.
  auto huge = frame;
  put_le(huge, 24, (std::uint64_t{1} << 40) + 1, 8);
  expect_malformed(frame_size(std::span<const std::byte>(huge).first(frame_header_size)), "message of");
  huge = frame;
  put_le(huge, 24, std::uint64_t{1} << 40, 8);
  put_le(huge, 36, (64u << 20) + 1, 4);
  expect_malformed(frame_size(std::span<const std::byte>(huge).first(frame_header_size)),
                   "exceeds the limit of 67108864");
  huge = frame;
  put_le(huge, 40, 1025, 2);
  expect_malformed(frame_size(std::span<const std::byte>(huge).first(frame_header_size)),
                   "topic of 1025 bytes");
  huge = frame;
  put_le(huge, 42, 60 * 1024 + 1, 2);
  expect_malformed(frame_size(std::span<const std::byte>(huge).first(frame_header_size)),
                   "headers of 61441 bytes");
}

TEST(Decode, RejectsAChunkLongerThanItsMessage) {
  auto frame = encode(header_for(10), "", {}, pattern(10));
  put_le(frame, 24, 9, 8);
  reseal(frame);
  expect_malformed(decode_frame(frame), "chunk of 10 bytes is longer than its message of 9");
}

TEST(Decode, RejectsTruncatedFramesAndTrailingBytes) {
  auto frame = encode(header_for(20), "topic", {{"k", "v"}}, pattern(20));
  auto size = std::to_string(frame.size());
  for (std::size_t cut :
       {std::size_t{1}, std::size_t{4}, std::size_t{20}, frame.size() - frame_header_size}) {
    expect_malformed(decode_frame(std::span<const std::byte>(frame).first(frame.size() - cut)),
                     "frame is " + std::to_string(frame.size() - cut) + " bytes, its header says " + size);
  }
  for (std::size_t extra : {1, 4, 1000}) {
    auto longer = frame;
    longer.resize(frame.size() + extra);
    expect_malformed(decode_frame(longer),
                     "frame is " + std::to_string(longer.size()) + " bytes, its header says " + size);
  }
}

TEST(Decode, RejectsAnySingleFlippedBit) {
  auto frame = encode(header_for(16), "topic", {{"key", "value"}}, pattern(16));
  ASSERT_TRUE(decode_frame(frame));
  for (std::size_t byte = 0; byte < frame.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      auto flipped = frame;
      flipped[byte] ^= static_cast<std::byte>(1 << bit);
      auto view = decode_frame(flipped);
      ASSERT_FALSE(view) << "byte " << byte << " bit " << bit;
      EXPECT_EQ(view.error().code, Errc::malformed);
      // Flips the fixed header's checks cannot see (ids, chunk index) and every flip after the fixed
      // header are caught by the checksum.
      bool unchecked_field = (byte >= 8 && byte < 24) || (byte >= 32 && byte < 36);
      if (unchecked_field || byte >= frame_header_size) {
        EXPECT_NE(view.error().message.find("checksum mismatch"), std::string::npos)
            << "byte " << byte << ": " << view.error().message;
      }
    }
  }
}

// ---- rejections after the checksum: UTF-8 and the header entries

TEST(Decode, RejectsATopicThatIsNotUtf8) {
  for (const auto& [what, bad] : bad_utf8()) {
    std::string topic = "topic." + std::string(bad);
    auto frame = raw_frame(topic, {});
    SCOPED_TRACE(what);
    expect_malformed(decode_frame(frame), "topic is not valid UTF-8");
  }
}

Bytes header_entry(std::string_view key, std::string_view value) {
  Bytes out(2);
  put_le(out, 0, key.size(), 2);
  auto k = to_bytes(key);
  out.insert(out.end(), k.begin(), k.end());
  out.resize(out.size() + 2);
  put_le(out, out.size() - 2, value.size(), 2);
  auto v = to_bytes(value);
  out.insert(out.end(), v.begin(), v.end());
  return out;
}

TEST(Decode, RejectsHeaderKeysAndValuesThatAreNotUtf8) {
  for (const auto& [what, bad] : bad_utf8()) {
    SCOPED_TRACE(what);
    expect_malformed(decode_frame(raw_frame("t", header_entry("key" + std::string(bad), "v"))),
                     "header is not valid UTF-8");
    expect_malformed(decode_frame(raw_frame("t", header_entry("key", "value " + std::string(bad)))),
                     "header is not valid UTF-8");
  }
}

TEST(Decode, RejectsBrokenHeaderEntries) {
  auto good = header_entry("key", "value");
  ASSERT_TRUE(decode_frame(raw_frame("t", good)));

  Bytes one_byte = {std::byte{3}};
  expect_malformed(decode_frame(raw_frame("t", one_byte)), "truncated header entry");
  Bytes key_only(good.begin(), good.begin() + 5);  // key length and key, no value length
  expect_malformed(decode_frame(raw_frame("t", key_only)), "truncated header entry");
  Bytes half_value_length(good.begin(), good.begin() + 6);
  expect_malformed(decode_frame(raw_frame("t", half_value_length)), "truncated header entry");
  Bytes short_key(good.begin(), good.begin() + 4);  // says 3 bytes of key, has 2
  expect_malformed(decode_frame(raw_frame("t", short_key)), "header entry runs past the headers");
  Bytes short_value(good.begin(), good.end() - 1);
  expect_malformed(decode_frame(raw_frame("t", short_value)), "header entry runs past the headers");
  auto trailing = good;
  trailing.push_back(std::byte{0});
  expect_malformed(decode_frame(raw_frame("t", trailing)), "truncated header entry");
  auto huge_key = good;
  put_le(huge_key, 0, 0xFFFF, 2);
  expect_malformed(decode_frame(raw_frame("t", huge_key)), "header entry runs past the headers");
  expect_malformed(decode_frame(raw_frame("t", header_entry("", "value"))), "header with an empty key");
}

TEST(Decode, RejectsMoreHeadersThanTheLimit) {
  Headers headers = {{"a", "1"}, {"b", "2"}, {"c", "3"}};
  auto frame = encode(header_for(0), "t", headers);
  Limits two;
  two.max_header_count = 2;
  expect_malformed(decode_frame(frame, two), "more than 2 headers");
  Limits three;
  three.max_header_count = 3;
  EXPECT_TRUE(decode_frame(frame, three));
}

// ---- encoder errors

TEST(Encode, RejectsWhatTheDecoderWouldReject) {
  Bytes out;
  auto h = header_for(0);
  expect_invalid(encode_frame(out, h, std::string(1025, 't'), {}, {}),
                 "topic of 1025 bytes exceeds the limit");
  Limits wide;
  wide.max_topic = 100'000;
  expect_invalid(encode_frame(out, h, std::string(0x10000, 't'), {}, {}, wide), "topic of 65536 bytes");
  for (const auto& [what, bad] : bad_utf8()) {
    SCOPED_TRACE(what);
    expect_invalid(encode_frame(out, h, std::string("t") + std::string(bad), {}, {}),
                   "topic is not valid UTF-8");
    expect_invalid(encode_frame(out, h, "t", {{"key" + std::string(bad), "v"}}, {}), "not UTF-8");
    expect_invalid(encode_frame(out, h, "t", {{"key", std::string(bad)}}, {}), "not UTF-8");
  }
  Headers many(257, {"k", "v"});
  expect_invalid(encode_frame(out, h, "t", many, {}), "257 headers exceed the limit of 256");
  Headers big = {{"k", std::string(60 * 1024, 'v')}};
  expect_invalid(encode_frame(out, h, "t", big, {}), "headers of 61445 bytes exceed the limit");
  expect_invalid(encode_frame(out, h, "t", {{"", "v"}}, {}), "is empty");

  auto payload = pattern(17);
  Limits small_chunk;
  small_chunk.max_chunk = 16;
  expect_invalid(encode_frame(out, header_for(17), "t", {}, payload, small_chunk),
                 "chunk of 17 bytes exceeds the limit of 16");
  expect_invalid(encode_frame(out, header_for(16), "t", {}, payload), "chunk of 17 bytes in a message of 16");
  Limits small_message;
  small_message.max_message = 16;
  expect_invalid(encode_frame(out, header_for(17), "t", {}, payload, small_message), "limit 16");

  auto bad_flags = h;
  bad_flags.flags = 0x10;
  expect_invalid(encode_frame(out, bad_flags, "", {}, {}), "unknown frame flags 0x10");
  auto later = h;
  later.flags = flags::last;
  expect_invalid(encode_frame(out, later, "t", {}, {}), "only the first chunk");
  expect_invalid(encode_frame(out, later, "", {{"k", "v"}}, {}), "only the first chunk");
  auto bad_op = h;
  bad_op.op = static_cast<Op>(0);
  expect_invalid(encode_frame(out, bad_op, "", {}, {}), "unknown op 0");
  bad_op.op = static_cast<Op>(16);
  expect_invalid(encode_frame(out, bad_op, "", {}, {}), "unknown op 16");
  auto bad_type = h;
  bad_type.type = static_cast<MessageType>(3);
  expect_invalid(encode_frame(out, bad_type, "", {}, {}), "unknown message type 3");
}

}  // namespace
}  // namespace ember::wire
