#include "wire/safetensors.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include "expect_error.hpp"

#include "support.hpp"
#include "wire/frame.hpp"

namespace ember::wire {
namespace {

using test::expect_invalid;
using test::expect_malformed;
using test::pattern;
using test::to_bytes;

using Bytes = std::vector<std::byte>;
using Metadata = std::map<std::string, std::string>;

constexpr DType all_dtypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::I16, DType::U16,
                                DType::I32,  DType::U32, DType::I64, DType::U64, DType::F16,
                                DType::BF16, DType::F32, DType::F64};

// A tensor owning `bytes` (patterned unless given).
WireTensor make_tensor(std::string name, DType dtype, std::vector<std::int64_t> shape, unsigned seed = 1) {
  WireTensor t{std::move(name), dtype, std::move(shape), {}, nullptr};
  auto buffer = std::make_shared<Bytes>(pattern(*t.element_count() * element_size(dtype), seed));
  t.bytes = *buffer;
  t.owner = buffer;
  return t;
}

Bytes whole_file(const SafetensorsSource& source) {
  Bytes out(source.size());
  auto read = source.read(0, out);
  EXPECT_TRUE(read) << read.error().message;
  return out;
}

// A file whose header is `json` as given (no padding), followed by `data`.
Bytes file_from(std::string_view json, const Bytes& data = {}) {
  Bytes out(8);
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<std::byte>(std::uint64_t{json.size()} >> (8 * i));
  }
  auto text = to_bytes(json);
  out.insert(out.end(), text.begin(), text.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Bytes length_prefix(std::uint64_t n) {
  Bytes out(8);
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<std::byte>(n >> (8 * i));
  }
  return out;
}

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

void expect_same_tensors(const std::vector<WireTensor>& got, const std::vector<WireTensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(want[i].name);
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].dtype, want[i].dtype);
    EXPECT_EQ(got[i].shape, want[i].shape);
    EXPECT_TRUE(same_bytes(got[i].bytes, want[i].bytes));
    EXPECT_TRUE(got[i].consistent());
  }
}

struct Collected {
  std::vector<WireTensor> tensors;
  Metadata metadata;
};

// Reads `file` through the stream reader in chunks of `chunk` bytes (0: all at once).
Result<Collected> read_stream(std::span<const std::byte> file, std::size_t chunk = 0,
                              const SafetensorsLimits& limits = {}) {
  CollectingConsumer consumer;
  SafetensorsStreamReader reader(consumer, limits);
  if (chunk == 0) {
    chunk = std::max<std::size_t>(file.size(), 1);
  }
  for (std::size_t at = 0; at < file.size(); at += chunk) {
    if (auto fed = reader.feed(file.subspan(at, std::min(chunk, file.size() - at))); !fed) {
      return fail(fed.error());
    }
  }
  if (auto done = reader.finish(); !done) {
    return fail(done.error());
  }
  return Collected{consumer.take_tensors(), consumer.take_metadata()};
}

// Every tensor kind the format has: each dtype, a scalar, zero-size tensors first, between and last.
std::vector<WireTensor> sample_tensors() {
  std::vector<WireTensor> tensors;
  tensors.push_back(make_tensor("empty.first", DType::F32, {0}));
  unsigned seed = 10;
  for (auto dtype : all_dtypes) {
    tensors.push_back(make_tensor("layer." + std::string(to_string(dtype)), dtype, {2, 3}, seed++));
  }
  tensors.push_back(make_tensor("scalar", DType::F64, {}, seed++));
  tensors.push_back(make_tensor("empty.middle", DType::BF16, {3, 0, 2}));
  tensors.push_back(make_tensor("\xE6\x9D\x83\xE9\x87\x8D w", DType::U8, {5}, seed++));
  tensors.push_back(make_tensor("empty.last", DType::I64, {0, 4}));
  return tensors;
}

const Metadata sample_metadata = {
    {"format", "pt"}, {"empty", ""}, {"note", "quotes \" and \\ and \xC3\xA9"}, {"ember.round", "3"}};

// ---- writing and reading back

TEST(Safetensors, RoundTripsEveryDTypeWithScalarsAndEmptyTensors) {
  auto tensors = sample_tensors();
  auto source = SafetensorsSource::make(tensors, sample_metadata);
  ASSERT_TRUE(source) << source.error().message;
  auto file = whole_file(*source);
  EXPECT_EQ(source->header().size() % 8, 0u) << "the data starts 8-byte aligned";

  auto header = parse_safetensors_header(file);
  ASSERT_TRUE(header) << header.error().message;
  EXPECT_EQ(header->header_bytes, source->header().size());
  EXPECT_EQ(header->file_size(), file.size());
  EXPECT_EQ(header->metadata, sample_metadata);
  ASSERT_EQ(header->tensors.size(), tensors.size());
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& entry = header->tensors[i];
    EXPECT_EQ(entry.name, tensors[i].name) << "data order is the order given";
    EXPECT_EQ(entry.dtype, tensors[i].dtype);
    EXPECT_EQ(entry.shape, tensors[i].shape);
    EXPECT_EQ(entry.begin, at);
    EXPECT_EQ(entry.size(), tensors[i].bytes.size());
    at = entry.end;
  }
  EXPECT_EQ(header->data_bytes, at);

  auto read = read_stream(file);
  ASSERT_TRUE(read) << read.error().message;
  expect_same_tensors(read->tensors, tensors);
  EXPECT_EQ(read->metadata, sample_metadata);
}

TEST(Safetensors, WritesNoMetadataKeyWhenThereIsNone) {
  auto source = SafetensorsSource::make({make_tensor("a", DType::U8, {1})});
  ASSERT_TRUE(source);
  std::string text(reinterpret_cast<const char*>(source->header().data()) + 8, source->header().size() - 8);
  EXPECT_EQ(text.find("__metadata__"), std::string::npos) << text;
  auto empty = SafetensorsSource::make({});
  ASSERT_TRUE(empty);
  auto read = read_stream(whole_file(*empty));
  ASSERT_TRUE(read) << read.error().message;
  EXPECT_TRUE(read->tensors.empty());
}

TEST(Safetensors, CollectedTensorsOwnTheirBuffers) {
  auto tensors = sample_tensors();
  auto file = whole_file(*SafetensorsSource::make(tensors));
  std::vector<WireTensor> kept;
  {
    CollectingConsumer consumer;
    SafetensorsStreamReader reader(consumer);
    ASSERT_TRUE(reader.feed(file));
    ASSERT_TRUE(reader.finish());
    kept = consumer.take_tensors();
  }
  file.assign(file.size(), std::byte{0});  // the reader kept no pointer into the input
  expect_same_tensors(kept, tensors);
  for (const auto& t : kept) {
    EXPECT_EQ(t.owner != nullptr, !t.bytes.empty()) << t.name;
  }
}

// Records what a reader reports, joining the data of each tensor so chunkings compare equal.
class Recorder final : public SafetensorsStreamReader::Consumer {
 public:
  struct Event {
    char kind;  // 'd' data, 'e' end
    std::size_t index;
    Bytes bytes;
    bool operator==(const Event&) const = default;
  };

  Result<void> on_header(const SafetensorsHeader& header) override {
    header_ = header;
    received_.assign(header.tensors.size(), 0);
    return ok();
  }
  Result<void> on_tensor_data(std::size_t index, std::uint64_t offset,
                              std::span<const std::byte> bytes) override {
    EXPECT_FALSE(bytes.empty());
    EXPECT_EQ(offset, received_.at(index)) << "data arrives in order, without gaps";
    received_[index] += bytes.size();
    if (last_input_ != nullptr) {
      EXPECT_TRUE(bytes.data() >= last_input_->data() &&
                  bytes.data() < last_input_->data() + last_input_->size())
          << "data is handed on from the chunk fed, not copied";
    }
    if (!events_.empty() && events_.back().kind == 'd' && events_.back().index == index) {
      events_.back().bytes.insert(events_.back().bytes.end(), bytes.begin(), bytes.end());
    } else {
      events_.push_back({'d', index, Bytes(bytes.begin(), bytes.end())});
    }
    return ok();
  }
  Result<void> on_tensor_end(std::size_t index) override {
    EXPECT_EQ(received_.at(index), header_->tensors[index].size());
    events_.push_back({'e', index, {}});
    return ok();
  }

  const std::span<const std::byte>* last_input_ = nullptr;
  std::optional<SafetensorsHeader> header_;
  std::vector<std::uint64_t> received_;
  std::vector<Event> events_;
};

TEST(Safetensors, EveryChunkSizeGivesTheSameResult) {
  std::vector<WireTensor> tensors = {
      make_tensor("e0", DType::F32, {0}),   make_tensor("a", DType::F32, {3}, 2),
      make_tensor("s", DType::U8, {}, 3),   make_tensor("e1", DType::I8, {0}),
      make_tensor("e2", DType::I8, {2, 0}), make_tensor("b", DType::F16, {2, 2}, 4),
      make_tensor("c", DType::I64, {1}, 5), make_tensor("e3", DType::U64, {0})};
  auto file = whole_file(*SafetensorsSource::make(tensors, {{"k", "v"}}));
  Recorder whole;
  {
    SafetensorsStreamReader reader(whole);
    std::span<const std::byte> input(file);
    whole.last_input_ = &input;
    ASSERT_TRUE(reader.feed(input));
    ASSERT_TRUE(reader.finish());
  }
  // Every tensor ends once, in data order, zero-size ones included.
  std::vector<std::size_t> ends;
  for (const auto& e : whole.events_) {
    if (e.kind == 'e') {
      ends.push_back(e.index);
    }
  }
  EXPECT_EQ(ends, (std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6, 7}));

  for (std::size_t chunk = 1; chunk <= file.size() + 1; ++chunk) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    Recorder recorder;
    SafetensorsStreamReader reader(recorder);
    for (std::size_t at = 0; at < file.size(); at += chunk) {
      std::span<const std::byte> input =
          std::span<const std::byte>(file).subspan(at, std::min(chunk, file.size() - at));
      recorder.last_input_ = &input;
      ASSERT_TRUE(reader.feed(input));
      recorder.last_input_ = nullptr;
    }
    ASSERT_TRUE(reader.finish());
    ASSERT_TRUE(recorder.header_);
    EXPECT_EQ(recorder.header_->tensors.size(), tensors.size());
    EXPECT_EQ(recorder.events_, whole.events_);
    auto collected = read_stream(file, chunk);
    ASSERT_TRUE(collected) << collected.error().message;
    expect_same_tensors(collected->tensors, tensors);
    EXPECT_EQ(collected->metadata, (Metadata{{"k", "v"}}));
  }
}

TEST(Safetensors, EmptyFeedsAndRepeatedFinishAreHarmless) {
  auto file = whole_file(*SafetensorsSource::make({make_tensor("a", DType::U8, {4})}));
  CollectingConsumer consumer;
  SafetensorsStreamReader reader(consumer);
  EXPECT_EQ(reader.header(), nullptr);
  EXPECT_TRUE(reader.feed({}));
  EXPECT_TRUE(reader.feed(file));
  EXPECT_TRUE(reader.feed({}));
  ASSERT_NE(reader.header(), nullptr);
  EXPECT_EQ(reader.header()->tensors.size(), 1u);
  EXPECT_TRUE(reader.finish());
  EXPECT_TRUE(reader.finish());
}

TEST(Safetensors, RandomAccessReadsAcrossEveryBoundary) {
  std::vector<WireTensor> tensors = {make_tensor("a", DType::I32, {3}, 1), make_tensor("z", DType::F32, {0}),
                                     make_tensor("b", DType::U8, {5}, 2), make_tensor("s", DType::F64, {}, 3),
                                     make_tensor("z2", DType::U8, {0})};
  auto source = SafetensorsSource::make(tensors, {{"m", "v"}});
  ASSERT_TRUE(source);
  // What the file must be, built independently: the header, then each tensor's bytes.
  Bytes expected(source->header().begin(), source->header().end());
  for (const auto& t : tensors) {
    expected.insert(expected.end(), t.bytes.begin(), t.bytes.end());
  }
  ASSERT_EQ(source->size(), expected.size());
  for (std::size_t offset = 0; offset <= expected.size(); ++offset) {
    for (std::size_t len = 0; offset + len <= expected.size(); ++len) {
      Bytes out(len, std::byte{0xEE});
      ASSERT_TRUE(source->read(offset, out)) << offset << "+" << len;
      ASSERT_TRUE(std::equal(out.begin(), out.end(), expected.begin() + static_cast<std::ptrdiff_t>(offset)))
          << offset << "+" << len;
    }
  }
  Bytes one(1);
  expect_invalid(source->read(source->size(), one), "runs past the end");
  Bytes two(2);
  expect_invalid(source->read(source->size() - 1, two), "runs past the end");
  expect_invalid(source->read(std::numeric_limits<std::uint64_t>::max(), one), "runs past the end");
  EXPECT_TRUE(source->read(source->size(), {}));
}

TEST(Safetensors, SourceRejectsTensorsItCannotWrite) {
  auto a = make_tensor("a", DType::F32, {2});
  auto short_bytes = a;
  short_bytes.bytes = short_bytes.bytes.first(7);
  expect_invalid(SafetensorsSource::make({short_bytes}), "tensor 'a': 7 bytes do not match its dtype F32");
  auto negative = a;
  negative.shape = {-2};
  expect_invalid(SafetensorsSource::make({negative}), "tensor 'a'");
  expect_invalid(SafetensorsSource::make({a, make_tensor("b", DType::U8, {1}), a}),
                 "two tensors are named 'a'");
  expect_invalid(SafetensorsSource::make({make_tensor("", DType::U8, {1})}), "tensor name '' is empty");
  expect_invalid(SafetensorsSource::make({make_tensor("__metadata__", DType::U8, {1})}), "reserved");
  expect_invalid(SafetensorsSource::make({make_tensor("bad\xC3", DType::U8, {1})}), "not UTF-8");
  expect_invalid(SafetensorsSource::make({a}, {{"k", "bad\xFF"}}), "metadata 'k' is not UTF-8");
}

// ---- the header on its own

TEST(SafetensorsHeader, LengthIsCheckedBeforeAnythingElse) {
  auto n = safetensors_header_length(length_prefix(1234));
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 1234u);
  expect_malformed(safetensors_header_length(Bytes(7)), "needs 8 bytes, only 7 given");
  auto limit = SafetensorsLimits{}.max_header;
  EXPECT_TRUE(safetensors_header_length(length_prefix(limit)));
  expect_malformed(safetensors_header_length(length_prefix(limit + 1)),
                   "header of 104857601 bytes exceeds the limit of 104857600");
  expect_malformed(safetensors_header_length(length_prefix(std::numeric_limits<std::uint64_t>::max())),
                   "exceeds the limit");
  // Nothing but the 8 bytes: the length is refused, not the missing header.
  expect_malformed(parse_safetensors_header(length_prefix(limit + 1)), "exceeds the limit");
  SafetensorsLimits small;
  small.max_header = 16;
  expect_malformed(
      parse_safetensors_header(file_from(R"({"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}})"), small),
      "exceeds the limit of 16");
}

TEST(SafetensorsHeader, NeedsTheWholeHeaderInThePrefixAndIgnoresWhatFollows) {
  auto file = whole_file(*SafetensorsSource::make(sample_tensors(), sample_metadata));
  auto header = parse_safetensors_header(file);
  ASSERT_TRUE(header);
  auto exact = parse_safetensors_header(std::span<const std::byte>(file).first(header->header_bytes));
  ASSERT_TRUE(exact) << exact.error().message;
  EXPECT_EQ(exact->tensors.size(), header->tensors.size());
  expect_malformed(parse_safetensors_header(std::span<const std::byte>(file).first(header->header_bytes - 1)),
                   "but only " + std::to_string(header->header_bytes - 9) + " follow the length");
}

TEST(SafetensorsHeader, SortsTensorsByOffsetWhateverTheirOrderInTheJson) {
  auto file = file_from(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},)"
                        R"("__metadata__":{"a":"b"},"z":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},)"
                        R"("b":{"dtype":"I16","shape":[1],"data_offsets":[0,2]}})",
                        pattern(10));
  auto header = parse_safetensors_header(file);
  ASSERT_TRUE(header) << header.error().message;
  ASSERT_EQ(header->tensors.size(), 3u);
  EXPECT_EQ(header->tensors[0].name, "b");
  EXPECT_EQ(header->tensors[1].name, "z");
  EXPECT_EQ(header->tensors[2].name, "w");
  EXPECT_EQ(header->data_bytes, 10u);
  // Whitespace and escapes a JSON writer may use are fine.
  auto spaced = file_from(
      " {\n \"\\u0061\\u00e9\" : { \"shape\" : [ ] , \"data_offsets\" : [ 0 , 1 ] , "
      "\"dtype\" : \"BOOL\" } }\t\r\n   ",
      pattern(1));
  auto parsed = parse_safetensors_header(spaced);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->tensors.at(0).name, "a\xC3\xA9");
}

struct BadHeader {
  const char* what;
  std::string json;
  std::string message;
};

const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

std::string one(const std::string& name, const std::string& entry) {
  return "{\"" + name + "\":" + entry + "}";
}

TEST(SafetensorsHeader, RejectsEveryMalformedHeaderNamingTheFault) {
  const BadHeader cases[] = {
      {"empty", "", "header is not valid JSON"},
      {"spaces only", "        ", "header is not valid JSON"},
      {"truncated", R"({"a":{"dtype":"F32")", "header is not valid JSON"},
      {"not json", "hello", "header is not valid JSON"},
      {"trailing garbage", one("a", ok_entry) + " x", "header is not valid JSON"},
      {"trailing NUL padding", one("a", ok_entry) + std::string("\0\0", 2),
       "header is not valid JSON: a NUL byte at offset 54"},
      {"NUL then garbage", one("a", ok_entry) + std::string("\0garbage", 8), "a NUL byte at offset 54"},
      {"NUL between tokens", std::string("{\0}", 3), "a NUL byte at offset 1"},
      {"invalid UTF-8", "{\"a\xFF\":" + ok_entry + "}", "header is not valid JSON"},
      {"lone surrogate escape", R"({"\ud800":)" + ok_entry + "}", "header is not valid JSON"},
      {"number overflow", R"({"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,8]}})",
       "header is not valid JSON"},
      {"array", "[]", "header is an array, not a JSON object"},
      {"number", "1", "header is a number, not a JSON object"},
      {"null", "null", "header is null, not a JSON object"},
      {"tensor not an object", R"({"a":[1]})", "tensor 'a': is an array, not an object"},
      {"tensor a string", R"({"a":"F32"})", "tensor 'a': is a string, not an object"},
      {"empty name", one("", ok_entry), "a tensor has an empty name"},
      {"duplicate name", R"({"a":)" + ok_entry + R"(,"a":)" + ok_entry + "}",
       "tensor 'a': the name appears twice"},
      {"missing dtype", one("a", R"({"shape":[2],"data_offsets":[0,8]})"),
       "tensor 'a': needs dtype, shape and data_offsets"},
      {"missing shape", one("a", R"({"dtype":"F32","data_offsets":[0,8]})"), "tensor 'a': needs dtype"},
      {"missing offsets", one("a", R"({"dtype":"F32","shape":[2]})"), "tensor 'a': needs dtype"},
      {"unknown key", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"stride":[1]})"),
       "tensor 'a': unknown key 'stride'"},
      {"duplicate key", one("a", R"({"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]})"),
       "tensor 'a': dtype appears twice"},
      {"unknown dtype", one("a", R"({"dtype":"F8","shape":[2],"data_offsets":[0,8]})"),
       "tensor 'a': unknown dtype 'F8'"},
      {"lower-case dtype", one("a", R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})"),
       "tensor 'a': unknown dtype 'f32'"},
      {"dtype a number", one("a", R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"),
       "tensor 'a': dtype is a number"},
      {"shape a number", one("a", R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"),
       "tensor 'a': shape is a number"},
      {"negative dimension", one("a", R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]})"),
       "tensor 'a': shape has a negative dimension -1"},
      {"fractional dimension", one("a", R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,8]})"),
       "tensor 'a': shape holds 1.5, not an integer"},
      {"dimension past int64",
       one("a", R"({"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]})"),
       "tensor 'a': shape dimension 9223372036854775808 is too large"},
      {"dimension past uint64",
       one("a", R"({"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]})"),
       "tensor 'a': shape holds 18446744073709551616, not an integer"},
      {"nested shape", one("a", R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})"),
       "tensor 'a': shape holds an array, not a dimension"},
      {"string dimension", one("a", R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"),
       "tensor 'a': shape holds a string"},
      {"element count overflows",
       one("a", R"({"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8]})"),
       "tensor 'a': shape's byte size overflows 64 bits"},
      {"byte size overflows",
       one("a", R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]})"),
       "tensor 'a': shape's byte size overflows 64 bits"},
      {"one offset", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[8]})"),
       "tensor 'a': data_offsets needs two offsets"},
      {"three offsets", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,16]})"),
       "tensor 'a': data_offsets has more than two offsets"},
      {"negative offset", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"),
       "tensor 'a': data_offsets has a negative offset -8"},
      {"fractional offset", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[0,8.0]})"),
       "tensor 'a': data_offsets holds 8.0, not an integer"},
      {"offsets an object", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":{"b":0}})"),
       "tensor 'a': data_offsets is an object"},
      {"offsets wrong size", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[0,7]})"),
       "tensor 'a': data_offsets [0, 7] hold 7 bytes, but F32 with 2 elements needs 8"},
      {"offsets reversed", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"),
       "tensor 'a': data_offsets [8, 0] end before they begin"},
      {"not from zero", one("a", R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})"),
       "tensor 'a': data_offsets [4, 12] leave a gap: the data continues at 0"},
      {"gap", R"({"a":)" + ok_entry + R"(,"b":{"dtype":"U8","shape":[1],"data_offsets":[9,10]}})",
       "tensor 'b': data_offsets [9, 10] leave a gap: the data after tensor 'a' continues at 8"},
      {"overlap", R"({"a":)" + ok_entry + R"(,"b":{"dtype":"U8","shape":[2],"data_offsets":[7,9]}})",
       "tensor 'b': data_offsets [7, 9] overlap tensor 'a' [0, 8]"},
      {"same range twice", R"({"a":)" + ok_entry + R"(,"b":)" + ok_entry + "}", "overlap tensor 'a' [0, 8]"},
      {"empty tensor inside another",
       R"({"a":)" + ok_entry + R"(,"b":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})",
       "tensor 'b': data_offsets [4, 4] overlap tensor 'a'"},
      {"beyond the data limit",
       one("a", R"({"dtype":"U8","shape":[1099511627777],"data_offsets":[0,1099511627777]})"),
       "data of 1099511627777 bytes exceeds the limit of 1099511627776"},
      {"metadata a string", R"({"__metadata__":"x"})", "__metadata__ is a string, not an object"},
      {"metadata an array", R"({"__metadata__":[]})", "__metadata__ is an array, not an object"},
      {"metadata value a number", R"({"__metadata__":{"epoch":1}})",
       "metadata 'epoch' is a number, not a string"},
      {"metadata value null", R"({"__metadata__":{"k":null}})", "metadata 'k' is null, not a string"},
      {"metadata value an object", R"({"__metadata__":{"k":{}}})", "metadata 'k' is an object, not a string"},
      {"metadata value a boolean", R"({"__metadata__":{"k":true}})", "metadata 'k' is a boolean"},
      {"metadata key twice", R"({"__metadata__":{"k":"a","k":"b"}})", "metadata key 'k' appears twice"},
      {"metadata twice", R"({"__metadata__":{},"__metadata__":{}})", "__metadata__ appears twice"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    auto file = file_from(c.json, pattern(16));
    expect_malformed(parse_safetensors_header(file), c.message);
    // The stream reader reports the same fault, whether the header arrives whole or byte by byte.
    expect_malformed(read_stream(file), c.message);
    expect_malformed(read_stream(file, 1), c.message);
  }
}

TEST(SafetensorsHeader, ParserMessagesAreShortAndUtf8WhateverTheInput) {
  std::string json = "{\"" + std::string(5000, 'x') + "\xC3\xA9\xFF\xFE" + std::string(5000, 'y') + "\":1}";
  auto result = parse_safetensors_header(file_from(json));
  expect_malformed(result, "header is not valid JSON");
  EXPECT_LT(result.error().message.size(), 400u);
  EXPECT_TRUE(valid_utf8(result.error().message)) << result.error().message;
  auto invalid = parse_safetensors_header(file_from("{\"a\xFF\":1}"));
  expect_malformed(invalid, "header is not valid JSON");
  EXPECT_TRUE(valid_utf8(invalid.error().message)) << invalid.error().message;
}

TEST(SafetensorsHeader, NamesInMessagesAreCut) {
  std::string name(300, 'n');
  auto result =
      parse_safetensors_header(file_from(one(name, R"({"dtype":"X","shape":[],"data_offsets":[0,1]})")));
  expect_malformed(result, "tensor '" + std::string(80, 'n') + "...': unknown dtype 'X'");
}

TEST(SafetensorsHeader, LimitsTheNumberOfTensors) {
  std::string json = "{";
  for (int i = 0; i < 3; ++i) {
    json += (i ? "," : "") + std::string("\"t") + std::to_string(i) +
            R"(":{"dtype":"U8","shape":[1],"data_offsets":[)" + std::to_string(i) + "," +
            std::to_string(i + 1) + "]}";
  }
  json += "}";
  SafetensorsLimits two;
  two.max_tensors = 2;
  expect_malformed(parse_safetensors_header(file_from(json), two), "more than 2 tensors");
  SafetensorsLimits three;
  three.max_tensors = 3;
  EXPECT_TRUE(parse_safetensors_header(file_from(json), three));
}

// ---- the stream reader's own faults

TEST(SafetensorsStream, RejectsAHugeHeaderLengthBeforeBufferingIt) {
  CollectingConsumer consumer;
  SafetensorsStreamReader reader(consumer);
  auto prefix = length_prefix(std::uint64_t{1} << 40);
  EXPECT_TRUE(reader.feed(std::span<const std::byte>(prefix).first(5)));
  expect_malformed(reader.feed(std::span<const std::byte>(prefix).subspan(5)),
                   "header of 1099511627776 bytes exceeds the limit");
  // The reader stays failed until reset.
  expect_malformed(reader.feed(Bytes(10)), "exceeds the limit");
  expect_malformed(reader.finish(), "exceeds the limit");
  reader.reset();
  auto file = whole_file(*SafetensorsSource::make({make_tensor("a", DType::U8, {3})}));
  EXPECT_TRUE(reader.feed(file));
  EXPECT_TRUE(reader.finish());
}

TEST(SafetensorsStream, RejectsMissingAndTrailingBytes) {
  auto tensors = sample_tensors();
  auto file = whole_file(*SafetensorsSource::make(tensors));
  auto header = *parse_safetensors_header(file);
  auto span = std::span<const std::byte>(file);

  expect_malformed(read_stream(span.first(0)),
                   "the file ended after 0 bytes, inside the 8-byte header length");
  expect_malformed(read_stream(span.first(5)),
                   "the file ended after 5 bytes, inside the 8-byte header length");
  expect_malformed(read_stream(span.first(20)), "the file ended inside the header, after 20 of " +
                                                    std::to_string(header.header_bytes) + " bytes");
  expect_malformed(read_stream(span.first(file.size() - 1), 7),
                   "the file ended after " + std::to_string(header.data_bytes - 1) + " of " +
                       std::to_string(header.data_bytes) + " data bytes, inside tensor '" +
                       header.tensors[header.tensors.size() - 2].name + "'");
  expect_malformed(read_stream(span.first(header.header_bytes)), "the file ended after 0 of");

  for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{13}}) {
    auto longer = file;
    longer.push_back(std::byte{0});
    expect_malformed(read_stream(longer, chunk),
                     "1 trailing bytes after the data's end at byte " + std::to_string(file.size()));
  }
  // Offsets past the end of the file: the header promises more data than comes.
  auto promise = file_from(one("a", R"({"dtype":"U8","shape":[100],"data_offsets":[0,100]})"), pattern(10));
  EXPECT_TRUE(parse_safetensors_header(promise));
  expect_malformed(read_stream(promise), "the file ended after 10 of 100 data bytes, inside tensor 'a'");
}

TEST(SafetensorsStream, PassesOnAConsumersError) {
  struct Refuser final : SafetensorsStreamReader::Consumer {
    int calls = 0;
    Result<void> on_header(const SafetensorsHeader&) override { return ok(); }
    Result<void> on_tensor_data(std::size_t, std::uint64_t, std::span<const std::byte>) override {
      ++calls;
      return fail(Errc::cancelled, "stop");
    }
    Result<void> on_tensor_end(std::size_t) override { return ok(); }
  } refuser;
  SafetensorsStreamReader reader(refuser);
  auto file = whole_file(*SafetensorsSource::make({make_tensor("a", DType::U8, {3})}));
  auto fed = reader.feed(file);
  ASSERT_FALSE(fed);
  EXPECT_EQ(fed.error().code, Errc::cancelled);
  EXPECT_EQ(fed.error().message, "stop");
  EXPECT_EQ(reader.feed(file).error().code, Errc::cancelled);
  EXPECT_EQ(refuser.calls, 1);
}

// ---- params bundles

TEST(ParamsBundle, RoundTripsATaskData) {
  TaskData task;
  task.name = "train \xE2\x80\x94 site-1";
  task.round = 7;
  task.total_rounds = std::numeric_limits<std::uint64_t>::max();
  task.params_type = ParamsType::diff;
  task.params = {make_tensor("w", DType::F32, {2, 2}), make_tensor("b", DType::F32, {2}, 2)};
  task.metrics = {{"loss", 0.1},
                  {"third", 1.0 / 3.0},
                  {"tiny", 4.9406564584124654e-324},
                  {"huge", std::numeric_limits<double>::max()},
                  {"neg zero", -0.0},
                  {"inf", std::numeric_limits<double>::infinity()},
                  {"-inf", -std::numeric_limits<double>::infinity()},
                  {"nan", std::numeric_limits<double>::quiet_NaN()},
                  {"-nan", -std::numeric_limits<double>::quiet_NaN()},
                  {"num_samples", 60000}};
  task.meta = {{"site", "site-1"}, {"empty", ""}, {"ember.nested", "prefix inside a key"}};
  auto bundle = make_params_bundle(task);
  ASSERT_TRUE(bundle) << bundle.error().message;
  auto read = read_stream(whole_file(*bundle));
  ASSERT_TRUE(read) << read.error().message;
  EXPECT_EQ(read->metadata.at("ember.metric.loss"), "0.1");
  EXPECT_EQ(read->metadata.at("ember.params_type"), "diff");

  TaskData base;
  base.meta = {{"from base", "kept"}};
  auto back = params_bundle_from(read->tensors, read->metadata, base);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->name, task.name);
  EXPECT_EQ(back->round, task.round);
  EXPECT_EQ(back->total_rounds, task.total_rounds);
  EXPECT_EQ(back->params_type, ParamsType::diff);
  expect_same_tensors(back->params, task.params);
  ASSERT_EQ(back->metrics.size(), task.metrics.size());
  for (const auto& [name, value] : task.metrics) {
    SCOPED_TRACE(name);
    double got = back->metrics.at(name);
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(got));
    } else {
      EXPECT_EQ(std::memcmp(&got, &value, sizeof value), 0) << got << " != " << value;
    }
  }
  auto meta = task.meta;
  meta["from base"] = "kept";
  EXPECT_EQ(back->meta, meta);
}

TEST(ParamsBundle, KeepsTheBasesFieldsTheMetadataLacksAndIgnoresForeignKeys) {
  TaskData base;
  base.name = "evaluate";
  base.round = 2;
  auto back = params_bundle_from({}, {{"format", "pt"}, {"ember.round", "5"}}, base);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->name, "evaluate");
  EXPECT_EQ(back->round, 5u);
  EXPECT_TRUE(back->meta.empty());
}

TEST(ParamsBundle, ReadsTheParamsTypeInEitherCaseAndWritesLowerCase) {
  for (const auto& [text, type] :
       {std::pair{"full", ParamsType::full}, std::pair{"FULL", ParamsType::full},
        std::pair{"diff", ParamsType::diff}, std::pair{"DIFF", ParamsType::diff}}) {
    SCOPED_TRACE(text);
    auto back = params_bundle_from({}, {{"ember.params_type", text}});
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->params_type, type);
  }
  auto mixed = params_bundle_from({}, {{"ember.params_type", "Diff"}});
  ASSERT_FALSE(mixed);
  EXPECT_NE(mixed.error().message.find("not \"full\" or \"diff\""), std::string::npos)
      << mixed.error().message;
}

TEST(ParamsBundle, AChecksumOfTheDataIsWrittenOnRequestAndChecked) {
  TaskData task;
  task.params = {make_tensor("w", DType::F32, {2, 2}), make_tensor("b", DType::F32, {2}, 2)};
  auto plain = make_params_bundle(task);
  ASSERT_TRUE(plain) << plain.error().message;
  auto plain_read = read_stream(whole_file(*plain));
  ASSERT_TRUE(plain_read) << plain_read.error().message;
  EXPECT_EQ(plain_read->metadata.count("ember.data_crc32c"), 0u);
  auto summed = make_params_bundle(task, true);
  ASSERT_TRUE(summed) << summed.error().message;
  auto bytes = whole_file(*summed);
  auto read = read_stream(bytes);
  ASSERT_TRUE(read) << read.error().message;
  ASSERT_EQ(read->metadata.at("ember.data_crc32c").size(), 8u);
  ASSERT_TRUE(params_bundle_from(read->tensors, read->metadata));
  bytes.back() ^= std::byte{0x01};  // the last byte of the last tensor
  auto damaged = read_stream(bytes);
  ASSERT_TRUE(damaged) << damaged.error().message;
  auto refused = params_bundle_from(damaged->tensors, damaged->metadata);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::malformed);
  EXPECT_NE(refused.error().message.find("metadata 'ember.data_crc32c' is '"), std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("the data is damaged"), std::string::npos)
      << refused.error().message;
}

TEST(ParamsBundle, RejectsValuesThatDoNotParseNamingTheKey) {
  const std::pair<Metadata, std::string> cases[] = {
      {{{"ember.round", "x"}}, "metadata 'ember.round' is 'x', not an unsigned decimal integer"},
      {{{"ember.round", ""}}, "metadata 'ember.round' is ''"},
      {{{"ember.round", "-1"}}, "metadata 'ember.round' is '-1'"},
      {{{"ember.round", "+1"}}, "metadata 'ember.round' is '+1'"},
      {{{"ember.round", " 1"}}, "metadata 'ember.round' is ' 1'"},
      {{{"ember.round", "1.5"}}, "metadata 'ember.round' is '1.5'"},
      {{{"ember.round", "18446744073709551616"}}, "metadata 'ember.round'"},
      {{{"ember.total_rounds", "0x10"}}, "metadata 'ember.total_rounds' is '0x10'"},
      {{{"ember.params_type", "partial"}},
       "metadata 'ember.params_type' is 'partial', not \"full\" or \"diff\""},
      {{{"ember.metric.loss", "abc"}}, "metadata 'ember.metric.loss' is 'abc', not a decimal number"},
      {{{"ember.metric.loss", "1,5"}}, "metadata 'ember.metric.loss' is '1,5'"},
      {{{"ember.metric.loss", " 1"}}, "metadata 'ember.metric.loss' is ' 1'"},
      {{{"ember.metric.loss", "1 "}}, "metadata 'ember.metric.loss' is '1 '"},
      {{{"ember.metric.loss", ""}}, "metadata 'ember.metric.loss' is ''"},
      {{{"ember.metric.loss", "1e999"}}, "metadata 'ember.metric.loss' is '1e999'"},
      {{{"ember.metric.", "1"}}, "metadata 'ember.metric.' is not a key ember writes"},
      {{{"ember.meta.", "1"}}, "metadata 'ember.meta.' is not a key ember writes"},
      {{{"ember.bogus", "1"}}, "metadata 'ember.bogus' is not a key ember writes"},
  };
  for (const auto& [metadata, message] : cases) {
    SCOPED_TRACE(message);
    expect_malformed(params_bundle_from({}, metadata), message);
  }
  auto hex = params_bundle_from({}, {{"ember.metric.x", "0x10"}});
  EXPECT_FALSE(hex);
}

TEST(ParamsBundle, RejectsParamsTheSourceCannotWrite) {
  TaskData task;
  task.params = {make_tensor("w", DType::F32, {2}), make_tensor("w", DType::F32, {2})};
  expect_invalid(make_params_bundle(task), "two tensors are named 'w'");
}

// ---- interoperability with Python's standard library, as a peer with stock tools reads and writes

std::optional<std::filesystem::path> find_python() {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/usr/bin:/bin";
  while (!dirs.empty()) {
    auto colon = dirs.find(':');
    auto dir = dirs.substr(0, colon);
    std::filesystem::path candidate = std::filesystem::path(dir.empty() ? "." : std::string(dir)) / "python3";
    if (access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
  }
  return std::nullopt;
}

// Reads a safetensors file with struct and json only and prints what it found as JSON.
constexpr const char* python_reader = R"PY(
import json, struct, sys
with open(sys.argv[1], 'rb') as f:
    blob = f.read()
(n,) = struct.unpack('<Q', blob[:8])
header = json.loads(blob[8:8 + n].decode('utf-8'))
data = blob[8 + n:]
meta = header.pop('__metadata__', {})
sizes = {'BOOL': 1, 'U8': 1, 'I8': 1, 'I16': 2, 'U16': 2, 'F16': 2, 'BF16': 2, 'I32': 4, 'U32': 4, 'F32': 4,
         'I64': 8, 'U64': 8, 'F64': 8}
out = {'n': n, 'metadata': meta, 'tensors': {}}
end = 0
for name, info in header.items():
    b, e = info['data_offsets']
    count = 1
    for d in info['shape']:
        count *= d
    assert e - b == count * sizes[info['dtype']], name
    raw = data[b:e]
    entry = {'dtype': info['dtype'], 'shape': info['shape'], 'hex': raw.hex()}
    if info['dtype'] == 'F32':
        entry['values'] = list(struct.unpack('<%df' % count, raw))
    out['tensors'][name] = entry
    end = max(end, e)
assert end == len(data), 'trailing or missing data'
print(json.dumps(out))
)PY";

// Writes a safetensors file with struct and json only, its data in another order than its JSON.
constexpr const char* python_writer = R"PY(
import json, struct, sys
parts = [
    ('bias', 'I64', [3], struct.pack('<3q', 1, -1, 2 ** 40)),
    ('weight', 'F32', [2, 2], struct.pack('<4f', 1.5, -2.0, 3.25, 0.0)),
    ('half', 'F16', [2], struct.pack('<2e', 0.5, -1.0)),
    ('empty', 'F16', [0], b''),
    ('flags', 'BOOL', [2], bytes([1, 0])),
    ('scalar', 'F64', [], struct.pack('<d', 3.141592653589793)),
    ('\u6743\u91cd', 'U8', [1], bytes([200])),
]
header = {'__metadata__': {'format': 'pt', 'ember.round': '3'}}
data = b''
for name, dtype, shape, raw in parts:
    header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [len(data), len(data) + len(raw)]}
    data += raw
# JSON order differs from data order: the reader must go by the offsets.
header = dict(reversed(list(header.items())))
text = json.dumps(header).encode('utf-8')
text += b' ' * ((8 - len(text) % 8) % 8)
with open(sys.argv[1], 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text + data)
)PY";

std::string hex(std::span<const std::byte> bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (auto b : bytes) {
    auto v = std::to_integer<unsigned>(b);
    out += digits[v >> 4];
    out += digits[v & 0xF];
  }
  return out;
}

void write_file(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Bytes read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return Bytes(reinterpret_cast<const std::byte*>(chars.data()),
               reinterpret_cast<const std::byte*>(chars.data()) + chars.size());
}

TEST(SafetensorsInterop, PythonReadsWhatEmberWrites) {
  auto python = find_python();
  if (!python) {
    GTEST_SKIP() << "python3 not found on PATH";
  }
  test::TempDir dir;
  auto tensors = sample_tensors();
  float values[] = {1.5f, -2.0f, 0.0f, 1e-3f, 3.4e38f, -0.0f};
  auto f32 = std::make_shared<std::vector<float>>(std::begin(values), std::end(values));
  tensors.push_back(
      WireTensor{"values", DType::F32, {2, 3}, std::as_bytes(std::span<const float>(*f32)), f32});
  auto source = SafetensorsSource::make(tensors, sample_metadata);
  ASSERT_TRUE(source);
  write_file(dir.path() / "model.safetensors", whole_file(*source));
  auto script = dir.write("reader.py", python_reader);

  auto run =
      test::run_program({python->string(), script.string(), (dir.path() / "model.safetensors").string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto out = nlohmann::json::parse(run.out);
  EXPECT_EQ(out["n"].get<std::uint64_t>() % 8, 0u);
  EXPECT_EQ(out["metadata"].get<Metadata>(), sample_metadata);
  ASSERT_EQ(out["tensors"].size(), tensors.size());
  for (const auto& t : tensors) {
    SCOPED_TRACE(t.name);
    const auto& entry = out["tensors"].at(t.name);
    EXPECT_EQ(entry["dtype"], std::string(to_string(t.dtype)));
    EXPECT_EQ(entry["shape"].get<std::vector<std::int64_t>>(), t.shape);
    EXPECT_EQ(entry["hex"], hex(t.bytes));
  }
  EXPECT_EQ(out["tensors"]["values"]["values"].get<std::vector<float>>(), *f32);
}

TEST(SafetensorsInterop, EmberReadsWhatPythonWrites) {
  auto python = find_python();
  if (!python) {
    GTEST_SKIP() << "python3 not found on PATH";
  }
  test::TempDir dir;
  auto script = dir.write("writer.py", python_writer);
  auto path = dir.path() / "from_python.safetensors";
  auto run = test::run_program({python->string(), script.string(), path.string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto file = read_file(path);

  for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{5}}) {
    auto read = read_stream(file, chunk);
    ASSERT_TRUE(read) << read.error().message;
    EXPECT_EQ(read->metadata, (Metadata{{"format", "pt"}, {"ember.round", "3"}}));
    const auto& t = read->tensors;
    ASSERT_EQ(t.size(), 7u);
    std::vector<std::string> names;
    for (const auto& x : t) {
      names.push_back(x.name);
    }
    EXPECT_EQ(names, (std::vector<std::string>{"bias", "weight", "half", "empty", "flags", "scalar",
                                               "\xE6\x9D\x83\xE9\x87\x8D"}));
    std::int64_t bias[3];
    ASSERT_EQ(t[0].bytes.size(), sizeof bias);
    std::memcpy(bias, t[0].bytes.data(), sizeof bias);
    EXPECT_EQ(bias[0], 1);
    EXPECT_EQ(bias[1], -1);
    EXPECT_EQ(bias[2], std::int64_t{1} << 40);
    float weight[4];
    ASSERT_EQ(t[1].bytes.size(), sizeof weight);
    std::memcpy(weight, t[1].bytes.data(), sizeof weight);
    EXPECT_EQ(weight[0], 1.5f);
    EXPECT_EQ(weight[1], -2.0f);
    EXPECT_EQ(weight[2], 3.25f);
    EXPECT_EQ(t[1].shape, (std::vector<std::int64_t>{2, 2}));
    EXPECT_EQ(hex(t[2].bytes), "003800bc");  // 0.5, -1.0 as F16
    EXPECT_EQ(t[3].dtype, DType::F16);
    EXPECT_TRUE(t[3].bytes.empty());
    EXPECT_EQ(hex(t[4].bytes), "0100");
    double pi = 0;
    ASSERT_EQ(t[5].bytes.size(), sizeof pi);
    std::memcpy(&pi, t[5].bytes.data(), sizeof pi);
    EXPECT_EQ(pi, 3.141592653589793);
    EXPECT_TRUE(t[5].shape.empty());
    EXPECT_EQ(hex(t[6].bytes), "c8");
  }
  auto bundle = params_bundle_from(read_stream(file)->tensors, read_stream(file)->metadata);
  ASSERT_TRUE(bundle) << bundle.error().message;
  EXPECT_EQ(bundle->round, 3u);
}

}  // namespace
}  // namespace ember::wire
