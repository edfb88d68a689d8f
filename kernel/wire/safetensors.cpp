#include "wire/safetensors.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <new>
#include <string_view>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include "wire/crc32c.hpp"
#include "wire/frame.hpp"

namespace ember::wire {

namespace {

using json = nlohmann::json;

constexpr std::string_view metadata_key = "__metadata__";

tl::unexpected<Error> malformed(const std::string& what) {
  return fail(Errc::malformed, "malformed safetensors: " + what);
}

// A name for a message: quoted, cut at 80 bytes on a character boundary.
std::string quote_name(std::string_view name) {
  constexpr std::size_t max = 80;
  if (name.size() <= max) {
    return "'" + std::string(name) + "'";
  }
  std::size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  return "'" + std::string(name.substr(0, cut)) + "...'";
}

// The parser's message quotes the input it stopped at, which may be long and not UTF-8: cut it, and mask
// bytes past ASCII unless the text is valid UTF-8, so an error message is safe to log and to put in JSON.
std::string printable(std::string_view text) {
  constexpr std::size_t max = 200;
  std::string out(text.substr(0, max));
  for (int i = 0;
       i < 3 && text.size() > max && (static_cast<unsigned char>(out.back()) & 0x80) != 0 && !valid_utf8(out);
       ++i) {
    out.pop_back();  // a character cut in two
  }
  if (!valid_utf8(out)) {
    for (auto& c : out) {
      c = (static_cast<unsigned char>(c) & 0x80) != 0 ? '?' : c;
    }
  }
  return text.size() > max ? out + "..." : out;
}

std::string tensor_at(std::string_view name) {
  return "tensor " + quote_name(name) + ": ";
}

// Builds the header's entries from the JSON text as it is parsed, with no document in between: a header
// of a million tensors stays a few hundred bytes per tensor, duplicate keys are caught (a DOM would keep
// the last silently), and any value in the wrong place stops the parse at once.
class HeaderParser final : public nlohmann::json_sax<json> {
 public:
  HeaderParser(const SafetensorsLimits& limits, SafetensorsHeader& out) : limits_(limits), out_(out) {}

  const std::string& error() const noexcept { return error_; }
  bool complete() const noexcept { return state_ == State::done; }

  bool null() override { return wrong_value("null"); }
  bool boolean(bool) override { return wrong_value("a boolean"); }
  bool number_integer(number_integer_t value) override {
    if (state_ == State::shape) {
      return bad(tensor_at(key_) + "shape has a negative dimension " + std::to_string(value));
    }
    if (state_ == State::offsets) {
      return bad(tensor_at(key_) + "data_offsets has a negative offset " + std::to_string(value));
    }
    return wrong_value("a number");
  }
  bool number_unsigned(number_unsigned_t value) override {
    if (state_ == State::shape) {
      if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        return bad(tensor_at(key_) + "shape dimension " + std::to_string(value) + " is too large");
      }
      entry().shape.push_back(static_cast<std::int64_t>(value));
      return true;
    }
    if (state_ == State::offsets) {
      if (offsets_seen_ == 2) {
        return bad(tensor_at(key_) + "data_offsets has more than two offsets");
      }
      (offsets_seen_++ == 0 ? entry().begin : entry().end) = value;
      return true;
    }
    return wrong_value("a number");
  }
  bool number_float(number_float_t, const string_t& text) override {
    if (state_ == State::shape || state_ == State::offsets) {
      return bad(tensor_at(key_) + (state_ == State::shape ? "shape" : "data_offsets") + " holds " + text +
                 ", not an integer of 64 bits");
    }
    return wrong_value("a number");
  }
  bool string(string_t& value) override {
    if (state_ == State::metadata_value) {
      out_.metadata.emplace(std::move(meta_key_), std::move(value));
      state_ = State::metadata;
      return true;
    }
    if (state_ == State::entry_value && field_ == Field::dtype) {
      auto dtype = parse_dtype(value);
      if (!dtype) {
        return bad(tensor_at(key_) + "unknown dtype " + quote_name(value));
      }
      entry().dtype = *dtype;
      state_ = State::entry;
      return true;
    }
    return wrong_value("a string");
  }
  bool binary(binary_t&) override { return wrong_value("binary data"); }

  bool start_object(std::size_t) override {
    switch (state_) {
      case State::top:
        state_ = State::root;
        return true;
      case State::root_value:
        if (key_ == metadata_key) {
          state_ = State::metadata;
          return true;
        }
        if (out_.tensors.size() >= limits_.max_tensors) {
          return bad("more than " + std::to_string(limits_.max_tensors) + " tensors");
        }
        out_.tensors.push_back(TensorEntry{key_, DType::F32, {}, 0, 0});
        fields_seen_ = 0;
        state_ = State::entry;
        return true;
      default:
        return wrong_value("an object");
    }
  }
  bool key(string_t& name) override {
    switch (state_) {
      case State::root:
        if (name.empty()) {
          return bad("a tensor has an empty name");
        }
        if (!valid_utf8(name)) {
          return bad("a tensor name is not valid UTF-8");
        }
        if (!names_.insert(name).second) {
          return bad(name == metadata_key ? std::string("__metadata__ appears twice")
                                          : tensor_at(name) + "the name appears twice");
        }
        key_ = std::move(name);
        state_ = State::root_value;
        return true;
      case State::metadata:
        if (out_.metadata.count(name) != 0) {
          return bad("metadata key " + quote_name(name) + " appears twice");
        }
        meta_key_ = std::move(name);
        state_ = State::metadata_value;
        return true;
      case State::entry:
        return entry_key(name);
      default:
        return bad("unexpected key " + quote_name(name));
    }
  }
  bool end_object() override {
    switch (state_) {
      case State::root:
        state_ = State::done;
        return true;
      case State::metadata:
        state_ = State::root;
        return true;
      case State::entry:
        if (fields_seen_ != all_fields) {
          return bad(tensor_at(key_) + "needs dtype, shape and data_offsets");
        }
        state_ = State::root;
        return true;
      default:
        return bad("unexpected end of an object");
    }
  }
  bool start_array(std::size_t) override {
    if (state_ == State::entry_value && field_ == Field::shape) {
      state_ = State::shape;
      return true;
    }
    if (state_ == State::entry_value && field_ == Field::offsets) {
      offsets_seen_ = 0;
      state_ = State::offsets;
      return true;
    }
    return wrong_value("an array");
  }
  bool end_array() override {
    if (state_ == State::shape) {
      state_ = State::entry;
      return true;
    }
    if (state_ == State::offsets) {
      if (offsets_seen_ != 2) {
        return bad(tensor_at(key_) + "data_offsets needs two offsets, [begin, end]");
      }
      state_ = State::entry;
      return true;
    }
    return bad("unexpected end of an array");
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." without the tag.
    std::string_view what = ex.what();
    auto tag_end = what.find("] ");
    return bad("header is not valid JSON: " +
               printable(tag_end == std::string_view::npos ? what : what.substr(tag_end + 2)));
  }

 private:
  enum class State {
    top,
    root,
    root_value,
    metadata,
    metadata_value,
    entry,
    entry_value,
    shape,
    offsets,
    done
  };
  enum class Field : unsigned { dtype = 1, shape = 2, offsets = 4 };
  static constexpr unsigned all_fields = 7;

  TensorEntry& entry() { return out_.tensors.back(); }

  bool entry_key(const std::string& name) {
    if (name == "dtype") {
      field_ = Field::dtype;
    } else if (name == "shape") {
      field_ = Field::shape;
    } else if (name == "data_offsets") {
      field_ = Field::offsets;
    } else {
      return bad(tensor_at(key_) + "unknown key " + quote_name(name));
    }
    auto bit = static_cast<unsigned>(field_);
    if ((fields_seen_ & bit) != 0) {
      return bad(tensor_at(key_) + name + " appears twice");
    }
    fields_seen_ |= bit;
    state_ = State::entry_value;
    return true;
  }

  // A value of the wrong kind for where it stands.
  bool wrong_value(const char* what) {
    switch (state_) {
      case State::top:
        return bad(std::string("header is ") + what + ", not a JSON object");
      case State::root_value:
        return bad(key_ == metadata_key ? "__metadata__ is " + std::string(what) + ", not an object"
                                        : tensor_at(key_) + "is " + what + ", not an object");
      case State::metadata_value:
        return bad("metadata " + quote_name(meta_key_) + " is " + what + ", not a string");
      case State::entry_value:
        return bad(tensor_at(key_) +
                   (field_ == Field::dtype   ? "dtype"
                    : field_ == Field::shape ? "shape"
                                             : "data_offsets") +
                   " is " + what);
      case State::shape:
        return bad(tensor_at(key_) + "shape holds " + what + ", not a dimension");
      case State::offsets:
        return bad(tensor_at(key_) + "data_offsets holds " + what + ", not an offset");
      default:
        return bad(std::string("unexpected ") + what);
    }
  }

  bool bad(std::string message) {
    if (error_.empty()) {
      error_ = std::move(message);
    }
    return false;
  }

  const SafetensorsLimits& limits_;
  SafetensorsHeader& out_;
  State state_ = State::top;
  Field field_ = Field::dtype;
  unsigned fields_seen_ = 0;
  int offsets_seen_ = 0;
  std::string key_;  // the tensor (or __metadata__) being read
  std::string meta_key_;
  std::unordered_set<std::string> names_;
  std::string error_;
};

std::string offsets_text(const TensorEntry& t) {
  return "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
}

// Each tensor's offsets hold exactly its bytes, and the tensors tile the data from 0 with no gap or overlap.
Result<void> check_layout(SafetensorsHeader& header, const SafetensorsLimits& limits) {
  for (const auto& t : header.tensors) {
    WireTensor probe;  // for its element_count()
    probe.shape = t.shape;
    auto count = probe.element_count();
    if (!count || *count > UINT64_MAX / element_size(t.dtype)) {
      return malformed(tensor_at(t.name) + "shape's byte size overflows 64 bits");
    }
    if (t.end < t.begin) {
      return malformed(tensor_at(t.name) + "data_offsets " + offsets_text(t) + " end before they begin");
    }
    std::uint64_t needed = *count * element_size(t.dtype);
    if (t.size() != needed) {
      return malformed(tensor_at(t.name) + "data_offsets " + offsets_text(t) + " hold " +
                       std::to_string(t.size()) + " bytes, but " + std::string(to_string(t.dtype)) +
                       " with " + std::to_string(*count) + " elements needs " + std::to_string(needed));
    }
  }
  std::stable_sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t at = 0;
  const TensorEntry* previous = nullptr;
  for (const auto& t : header.tensors) {
    if (t.begin > at) {
      return malformed(tensor_at(t.name) + "data_offsets " + offsets_text(t) + " leave a gap: the data " +
                       (previous ? "after tensor " + quote_name(previous->name) + " " : std::string()) +
                       "continues at " + std::to_string(at));
    }
    if (t.begin < at) {
      return malformed(tensor_at(t.name) + "data_offsets " + offsets_text(t) + " overlap tensor " +
                       quote_name(previous->name) + " " + offsets_text(*previous));
    }
    at = t.end;
    previous = &t;
  }
  if (at > limits.max_data) {
    return malformed("data of " + std::to_string(at) + " bytes exceeds the limit of " +
                     std::to_string(limits.max_data));
  }
  header.data_bytes = at;
  return ok();
}

std::uint64_t get_u64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= std::uint64_t{std::to_integer<std::uint8_t>(p[i])} << (8 * i);
  }
  return v;
}

std::string json_string(const std::string& text) {
  return json(text).dump();
}

}  // namespace

Result<std::uint64_t> safetensors_header_length(std::span<const std::byte> first8,
                                                const SafetensorsLimits& limits) {
  if (first8.size() < 8) {
    return malformed("the header length needs 8 bytes, only " + std::to_string(first8.size()) + " given");
  }
  auto n = get_u64(first8.data());
  if (n > limits.max_header || n > std::numeric_limits<std::size_t>::max() - 8) {
    return malformed("header of " + std::to_string(n) + " bytes exceeds the limit of " +
                     std::to_string(limits.max_header));
  }
  return n;
}

Result<SafetensorsHeader> parse_safetensors_header(std::span<const std::byte> prefix,
                                                   const SafetensorsLimits& limits) {
  auto n = safetensors_header_length(prefix, limits);
  if (!n) {
    return fail(std::move(n.error()));
  }
  if (prefix.size() - 8 < *n) {
    return malformed("header of " + std::to_string(*n) + " bytes, but only " +
                     std::to_string(prefix.size() - 8) + " follow the length");
  }
  SafetensorsHeader header;
  header.header_bytes = 8 + *n;
  HeaderParser parser(limits, header);
  const char* text = reinterpret_cast<const char*>(prefix.data() + 8);
  // nlohmann's lexer takes a NUL byte for the end of its input and would ignore whatever follows it; JSON
  // text never holds a raw NUL (strings escape it), so one is an error wherever it is.
  if (const void* nul = std::memchr(text, 0, *n); nul != nullptr) {
    return malformed("header is not valid JSON: a NUL byte at offset " +
                     std::to_string(static_cast<const char*>(nul) - text));
  }
  bool parsed = json::sax_parse(text, text + *n, &parser);
  if (!parsed || !parser.complete()) {
    return malformed(parser.error().empty() ? std::string("header is not a complete JSON object")
                                            : parser.error());
  }
  if (auto layout = check_layout(header, limits); !layout) {
    return fail(std::move(layout.error()));
  }
  return header;
}

// ---- writer

Result<SafetensorsSource> SafetensorsSource::make(std::vector<WireTensor> tensors,
                                                  std::map<std::string, std::string> metadata) {
  std::unordered_set<std::string_view> names;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == metadata_key || !valid_utf8(t.name)) {
      return fail(Errc::invalid_argument,
                  "safetensors: tensor name " + quote_name(t.name) + " is empty, reserved or not UTF-8");
    }
    if (!names.insert(t.name).second) {
      return fail(Errc::invalid_argument, "safetensors: two tensors are named " + quote_name(t.name));
    }
    if (!t.consistent()) {
      return fail(Errc::invalid_argument,
                  "safetensors: " + tensor_at(t.name) + std::to_string(t.bytes.size()) +
                      " bytes do not match its dtype " + std::string(to_string(t.dtype)) + " and shape");
    }
  }
  for (const auto& [key, value] : metadata) {
    if (!valid_utf8(key) || !valid_utf8(value)) {
      return fail(Errc::invalid_argument, "safetensors: metadata " + quote_name(key) + " is not UTF-8");
    }
  }

  SafetensorsSource source;
  std::string text = "{";
  if (!metadata.empty()) {
    text += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      text += (first ? "" : ",") + json_string(key) + ":" + json_string(value);
      first = false;
    }
    text += "}";
  }
  source.starts_.reserve(tensors.size());
  std::uint64_t at = 0;
  for (const auto& t : tensors) {
    text += (text.size() > 1 ? "," : "") + json_string(t.name) + ":{\"dtype\":\"" +
            std::string(to_string(t.dtype)) + "\",\"shape\":[";
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      text += (i != 0 ? "," : "") + std::to_string(t.shape[i]);
    }
    source.starts_.push_back(at);
    text += "],\"data_offsets\":[" + std::to_string(at) + "," + std::to_string(at + t.bytes.size()) + "]}";
    at += t.bytes.size();
  }
  text += "}";
  // Padded with spaces, so the data starts 8-byte aligned (as the safetensors library writes it).
  text.append((8 - text.size() % 8) % 8, ' ');

  source.header_.resize(8);
  for (int i = 0; i < 8; ++i) {
    source.header_[i] = static_cast<char>(std::uint64_t{text.size()} >> (8 * i));
  }
  source.header_ += text;
  source.tensors_ = std::move(tensors);
  source.data_bytes_ = at;
  return source;
}

std::span<const std::byte> SafetensorsSource::header() const noexcept {
  return std::as_bytes(std::span<const char>(header_));
}

Result<void> SafetensorsSource::read(std::uint64_t offset, std::span<std::byte> out) const {
  if (offset > size() || out.size() > size() - offset) {
    return fail(Errc::invalid_argument, "safetensors: read of " + std::to_string(out.size()) + " bytes at " +
                                            std::to_string(offset) + " runs past the end at " +
                                            std::to_string(size()));
  }
  if (out.empty()) {
    return ok();  // nothing to copy, and an empty span may hold a null pointer
  }
  std::size_t done = 0;
  if (offset < header_.size()) {
    done = std::min<std::size_t>(out.size(), header_.size() - offset);
    std::memcpy(out.data(), header_.data() + offset, done);
    offset += done;
  }
  if (done == out.size()) {
    return ok();
  }
  std::uint64_t at = offset - header_.size();
  // The last tensor starting at or before `at`; zero-byte tensors on the way are skipped below.
  auto i =
      static_cast<std::size_t>(std::upper_bound(starts_.begin(), starts_.end(), at) - starts_.begin()) - 1;
  while (done < out.size()) {
    const auto& bytes = tensors_[i].bytes;
    std::uint64_t in = at - starts_[i];
    if (in < bytes.size()) {
      auto n = std::min<std::size_t>(out.size() - done, bytes.size() - in);
      std::memcpy(out.data() + done, bytes.data() + in, n);
      done += n;
      at += n;
    }
    ++i;
  }
  return ok();
}

bool SafetensorsSource::view(std::uint64_t offset, std::size_t size,
                             std::vector<std::span<const std::byte>>& out) const {
  if (offset > this->size() || size > this->size() - offset) {
    return false;
  }
  const auto* head = reinterpret_cast<const std::byte*>(header_.data());
  std::size_t done = 0;
  if (offset < header_.size() && size > 0) {
    done = std::min<std::size_t>(size, header_.size() - offset);
    out.emplace_back(head + offset, done);
    offset += done;
  }
  if (done == size) {
    return true;
  }
  std::uint64_t at = offset - header_.size();
  auto i =
      static_cast<std::size_t>(std::upper_bound(starts_.begin(), starts_.end(), at) - starts_.begin()) - 1;
  while (done < size) {
    const auto& bytes = tensors_[i].bytes;
    std::uint64_t in = at - starts_[i];
    if (in < bytes.size()) {
      auto n = std::min<std::size_t>(size - done, bytes.size() - in);
      out.emplace_back(bytes.data() + in, n);
      done += n;
      at += n;
    }
    ++i;
  }
  return true;
}

// ---- reader

SafetensorsStreamReader::SafetensorsStreamReader(Consumer& consumer, SafetensorsLimits limits)
    : consumer_(consumer), limits_(limits) {}

void SafetensorsStreamReader::reset() {
  buffer_.clear();
  buffer_.shrink_to_fit();
  header_bytes_ = 0;
  header_ = {};
  parsed_ = false;
  data_pos_ = 0;
  next_tensor_ = 0;
  error_.reset();
}

Result<void> SafetensorsStreamReader::failed(Error error) {
  error_ = error;
  return fail(std::move(error));
}

Result<void> SafetensorsStreamReader::feed(std::span<const std::byte> chunk) {
  if (error_) {
    return fail(*error_);
  }
  if (!parsed_) {
    if (auto r = feed_header(chunk); !r) {
      return failed(std::move(r.error()));
    }
    if (!parsed_) {
      return ok();
    }
  }
  if (auto r = feed_data(chunk); !r) {
    return failed(std::move(r.error()));
  }
  return ok();
}

Result<void> SafetensorsStreamReader::feed_header(std::span<const std::byte>& chunk) {
  // The usual case, a whole header in one chunk, is parsed where it lies.
  if (buffer_.empty() && chunk.size() >= 8) {
    auto n = safetensors_header_length(chunk, limits_);
    if (!n) {
      return fail(std::move(n.error()));
    }
    if (chunk.size() - 8 >= *n) {
      auto whole = chunk.first(8 + *n);
      chunk = chunk.subspan(8 + *n);
      return accept_header(whole);
    }
  }
  auto take = [&](std::size_t wanted) {
    auto n = std::min(wanted, chunk.size());
    buffer_.insert(buffer_.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
    chunk = chunk.subspan(n);
  };
  if (buffer_.size() < 8) {
    take(8 - buffer_.size());
    if (buffer_.size() < 8) {
      return ok();
    }
    // Checked before a byte of the header is buffered: a huge N never grows the buffer.
    auto n = safetensors_header_length(buffer_, limits_);
    if (!n) {
      return fail(std::move(n.error()));
    }
    header_bytes_ = 8 + *n;
  }
  take(static_cast<std::size_t>(header_bytes_ - buffer_.size()));
  if (buffer_.size() < header_bytes_) {
    return ok();
  }
  auto r = accept_header(buffer_);
  buffer_.clear();
  buffer_.shrink_to_fit();
  return r;
}

Result<void> SafetensorsStreamReader::accept_header(std::span<const std::byte> bytes) {
  auto header = parse_safetensors_header(bytes, limits_);
  if (!header) {
    return fail(std::move(header.error()));
  }
  header_ = std::move(*header);
  header_bytes_ = header_.header_bytes;
  parsed_ = true;
  if (auto r = consumer_.on_header(header_); !r) {
    return r;
  }
  return end_complete_tensors();
}

// Ends every tensor the data has reached the end of: afterwards the next tensor (if any) has bytes to come.
Result<void> SafetensorsStreamReader::end_complete_tensors() {
  while (next_tensor_ < header_.tensors.size() && header_.tensors[next_tensor_].end == data_pos_) {
    if (auto r = consumer_.on_tensor_end(next_tensor_); !r) {
      return r;
    }
    ++next_tensor_;
  }
  return ok();
}

Result<void> SafetensorsStreamReader::feed_data(std::span<const std::byte> chunk) {
  while (!chunk.empty()) {
    if (next_tensor_ == header_.tensors.size()) {
      return malformed(std::to_string(chunk.size()) + " trailing bytes after the data's end at byte " +
                       std::to_string(header_.file_size()));
    }
    const auto& t = header_.tensors[next_tensor_];
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), t.end - data_pos_));
    if (auto r = consumer_.on_tensor_data(next_tensor_, data_pos_ - t.begin, chunk.first(n)); !r) {
      return r;
    }
    data_pos_ += n;
    chunk = chunk.subspan(n);
    if (auto r = end_complete_tensors(); !r) {
      return r;
    }
  }
  return ok();
}

Result<void> SafetensorsStreamReader::finish() {
  if (error_) {
    return fail(*error_);
  }
  Result<void> r = ok();
  if (!parsed_ && buffer_.size() < 8) {
    r = malformed("the file ended after " + std::to_string(buffer_.size()) +
                  " bytes, inside the 8-byte header length");
  } else if (!parsed_) {
    r = malformed("the file ended inside the header, after " + std::to_string(buffer_.size()) + " of " +
                  std::to_string(header_bytes_) + " bytes");
  } else if (data_pos_ < header_.data_bytes) {
    r = malformed("the file ended after " + std::to_string(data_pos_) + " of " +
                  std::to_string(header_.data_bytes) + " data bytes, inside tensor " +
                  quote_name(header_.tensors[next_tensor_].name));
  }
  if (!r) {
    return failed(std::move(r.error()));
  }
  return r;
}

// ---- collecting consumer

Result<void> CollectingConsumer::on_header(const SafetensorsHeader& header) {
  tensors_.clear();
  buffers_.clear();
  metadata_ = header.metadata;
  tensors_.reserve(header.tensors.size());
  for (const auto& t : header.tensors) {
    tensors_.push_back(WireTensor{t.name, t.dtype, t.shape, {}, nullptr});
  }
  buffers_.assign(header.tensors.size(), nullptr);
  sizes_.clear();
  for (const auto& t : header.tensors) {
    sizes_.push_back(t.size());
  }
  return ok();
}

Result<void> CollectingConsumer::on_tensor_data(std::size_t tensor_index, std::uint64_t offset_in_tensor,
                                                std::span<const std::byte> bytes) {
  if (tensor_index >= tensors_.size() || offset_in_tensor > sizes_[tensor_index] ||
      bytes.size() > sizes_[tensor_index] - offset_in_tensor) {
    return fail(Errc::internal, "safetensors: data for tensor #" + std::to_string(tensor_index) +
                                    " outside the tensor the header declared");
  }
  if (buffers_[tensor_index] == nullptr) {
    auto size = static_cast<std::size_t>(sizes_[tensor_index]);
    auto buffer = pool_ ? pool_->take(size) : allocate_tensor_buffer(size);
    if (!buffer) {
      return fail(Errc::internal, "safetensors: " + tensor_at(tensors_[tensor_index].name) +
                                      "cannot allocate " + std::to_string(size) + " bytes");
    }
    buffers_[tensor_index] = buffer.get();
    tensors_[tensor_index].bytes = std::span<const std::byte>(buffer.get(), size);
    tensors_[tensor_index].owner = std::move(buffer);
  }
  if (!bytes.empty()) {
    std::memcpy(buffers_[tensor_index] + offset_in_tensor, bytes.data(), bytes.size());
  }
  return ok();
}

Result<void> CollectingConsumer::on_tensor_end(std::size_t) {
  return ok();
}

// ---- params bundles

namespace {

tl::unexpected<Error> bad_bundle(const std::string& key, const std::string& what) {
  return fail(Errc::malformed, "params bundle: metadata " + quote_name(key) + " " + what);
}

Result<std::uint64_t> parse_u64(const std::string& key, const std::string& text) {
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return bad_bundle(key, "is " + quote_name(text) + ", not an unsigned decimal integer");
  }
  return value;
}

Result<double> parse_double(const std::string& key, const std::string& text) {
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return bad_bundle(key, "is " + quote_name(text) + ", not a decimal number");
  }
  return value;
}

std::string format_double(double value) {
  char text[64];
  auto [end, ec] = std::to_chars(text, text + sizeof text, value);
  return ec == std::errc() ? std::string(text, end) : std::string("nan");
}

std::string data_checksum(const std::vector<WireTensor>& tensors) {
  std::uint32_t crc = 0;
  for (const auto& t : tensors) {
    crc = crc32c(crc, t.bytes);
  }
  static constexpr char digits[] = "0123456789abcdef";
  std::string text(8, '0');
  for (int i = 7; i >= 0; --i, crc >>= 4) {
    text[static_cast<std::size_t>(i)] = digits[crc & 0xf];
  }
  return text;
}

}  // namespace

Result<SafetensorsSource> make_params_bundle(const TaskData& task, bool checksum) {
  std::map<std::string, std::string> metadata;
  metadata[bundle_keys::name] = task.name;
  metadata[bundle_keys::round] = std::to_string(task.round);
  metadata[bundle_keys::total_rounds] = std::to_string(task.total_rounds);
  metadata[bundle_keys::params_type] = task.params_type == ParamsType::diff ? "diff" : "full";
  for (const auto& [name, value] : task.metrics) {
    metadata[bundle_keys::metric + name] = format_double(value);
  }
  for (const auto& [key, value] : task.meta) {
    metadata[bundle_keys::meta + key] = value;
  }
  if (checksum) {
    metadata[bundle_keys::data_crc32c] = data_checksum(task.params);
  }
  return SafetensorsSource::make(task.params, std::move(metadata));
}

Result<TaskData> params_bundle_from(const std::vector<WireTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata, TaskData base) {
  TaskData task = std::move(base);
  task.params = tensors;
  const std::string_view metric = bundle_keys::metric;
  const std::string_view meta = bundle_keys::meta;
  for (const auto& [key, value] : metadata) {
    if (!key.starts_with(bundle_keys::prefix)) {
      continue;
    }
    if (key == bundle_keys::name) {
      task.name = value;
    } else if (key == bundle_keys::round || key == bundle_keys::total_rounds) {
      auto number = parse_u64(key, value);
      if (!number) {
        return fail(std::move(number.error()));
      }
      (key == bundle_keys::round ? task.round : task.total_rounds) = *number;
    } else if (key == bundle_keys::params_type) {
      // Lower case is what ember writes; the upper-case spelling an earlier wire-format.md gave is read too.
      const bool diff = value == "diff" || value == "DIFF";
      if (!diff && value != "full" && value != "FULL") {
        return bad_bundle(key, "is " + quote_name(value) + ", not \"full\" or \"diff\"");
      }
      task.params_type = diff ? ParamsType::diff : ParamsType::full;
    } else if (key == bundle_keys::data_crc32c) {
      if (auto actual = data_checksum(tensors); actual != value) {
        return bad_bundle(key, "is " + quote_name(value) + ", but the tensors' bytes give " + actual +
                                   ": the data is damaged");
      }
    } else if (key.starts_with(metric) && key.size() > metric.size()) {
      auto number = parse_double(key, value);
      if (!number) {
        return fail(std::move(number.error()));
      }
      task.metrics[key.substr(metric.size())] = *number;
    } else if (key.starts_with(meta) && key.size() > meta.size()) {
      task.meta[key.substr(meta.size())] = value;
    } else {
      return bad_bundle(key, "is not a key ember writes");
    }
  }
  return task;
}

}  // namespace ember::wire
