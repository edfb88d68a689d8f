// Fuzz target for the safetensors reader: any bytes given to parse_safetensors_header() and to the stream
// reader must give tensors or an error with a message, never a crash, a hang or a leak. The stream reader is
// fed the input whole, byte by byte and in uneven chunks, and must come to the same verdict and the same
// tensors each time; a file that reads must read the same after being written again by SafetensorsSource.
// Built as a libFuzzer target under clang (-Dfuzz=true) and, everywhere, linked with replay_main.cpp to run
// the seed corpus as a test.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "wire/frame.hpp"
#include "wire/safetensors.hpp"

namespace {

using namespace ember;
using namespace ember::wire;

void check(bool condition) {
  if (!condition) {
    __builtin_trap();
  }
}

// Messages go to logs and into JSON: short, and UTF-8 whatever the input was.
void check_message(const Error& error) {
  check(!error.message.empty() && error.message.size() < 1024 && valid_utf8(error.message));
}

// Small limits: a header may declare a terabyte, but no input makes the collector allocate more than this.
SafetensorsLimits fuzz_limits() {
  SafetensorsLimits limits;
  limits.max_header = 1 << 20;
  limits.max_tensors = 10'000;
  limits.max_data = 1 << 20;
  return limits;
}

struct Read {
  std::vector<WireTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Feeds `input` in chunks of the sizes in `pattern`, cycled.
std::optional<Read> read_stream(std::span<const std::byte> input, std::span<const std::size_t> pattern) {
  CollectingConsumer consumer;
  SafetensorsStreamReader reader(consumer, fuzz_limits());
  std::size_t at = 0;
  for (std::size_t i = 0; at < input.size(); ++i) {
    auto n = std::min(pattern[i % pattern.size()], input.size() - at);
    auto fed = reader.feed(input.subspan(at, n));
    at += n;
    if (!fed) {
      check_message(fed.error());
      return std::nullopt;
    }
  }
  auto done = reader.finish();
  if (!done) {
    check(done.error().code == Errc::malformed);
    check_message(done.error());
    return std::nullopt;
  }
  check(reader.header() != nullptr && reader.header()->file_size() == input.size());
  return Read{consumer.take_tensors(), consumer.take_metadata()};
}

bool same(const std::vector<WireTensor>& a, const std::vector<WireTensor>& b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape != b[i].shape ||
        a[i].bytes.size() != b[i].bytes.size() ||
        (!a[i].bytes.empty() && std::memcmp(a[i].bytes.data(), b[i].bytes.data(), a[i].bytes.size()) != 0)) {
      return false;
    }
  }
  return true;
}

void check_header(const SafetensorsHeader& header) {
  std::uint64_t at = 0;
  for (const auto& t : header.tensors) {
    check(t.begin == at && t.end >= t.begin && !t.name.empty());
    at = t.end;
  }
  check(at == header.data_bytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto input = std::as_bytes(std::span<const std::uint8_t>(data, size));

  auto header = parse_safetensors_header(input, fuzz_limits());
  if (header) {
    check_header(*header);
  } else {
    check(header.error().code == Errc::malformed);
    check_message(header.error());
  }

  const std::size_t whole[] = {size == 0 ? 1 : size};
  const std::size_t bytewise[] = {1};
  const std::size_t uneven[] = {3, 1, 8, 5, 64, 2};
  auto first = read_stream(input, whole);
  auto second = read_stream(input, bytewise);
  auto third = read_stream(input, uneven);
  check(first.has_value() == second.has_value() && first.has_value() == third.has_value());
  if (!first) {
    return 0;
  }
  // The whole file read, so its header parsed on its own too.
  check(header.has_value());
  check(same(first->tensors, second->tensors) && same(first->tensors, third->tensors));
  check(first->metadata == second->metadata && first->metadata == third->metadata);
  for (const auto& t : first->tensors) {
    check(t.consistent());
  }

  // Written again and read back: the same tensors and metadata.
  auto source = SafetensorsSource::make(first->tensors, first->metadata);
  check(source.has_value());
  std::vector<std::byte> rewritten(source->size());
  check(source->read(0, rewritten).has_value());
  auto again = read_stream(rewritten, whole);
  check(again.has_value() && same(again->tensors, first->tensors) && again->metadata == first->metadata);

  // Whatever the metadata holds, reading it as a params bundle gives a task or an error.
  auto task = params_bundle_from(first->tensors, first->metadata);
  if (!task) {
    check(task.error().code == Errc::malformed);
    check_message(task.error());
  }
  return 0;
}
