#pragma once
// Tensors on the wire in the safetensors layout, so Python peers read and write them with stock tools:
//
//   8 bytes   N, the JSON header's length (u64, little-endian)
//   N bytes   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//              "__metadata__": {"key": "value", ...}}, padded with spaces
//   ...       the data: each tensor's row-major little-endian bytes, offsets relative to the data's start
//
// The tensors tile the data exactly: sorted by offset, each begins where the one before it ends, the first at
// 0, and each holds dtype size x element count bytes. Everything here streams: the writer is a random-access
// byte source over the tensors' own buffers and the reader is fed chunks, so neither ever holds a whole file.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <ember/result.hpp>
#include <ember/task.hpp>
#include <ember/tensor.hpp>

#include "wire/buffer_pool.hpp"

namespace ember::wire {

/// Bounds a reader checks before it buffers or allocates anything.
struct SafetensorsLimits {
  std::uint64_t max_header = std::uint64_t{100} << 20;  ///< N, bytes of JSON header
  std::uint64_t max_tensors = 1'000'000;                ///< entries in the header
  std::uint64_t max_data = std::uint64_t{1} << 40;      ///< bytes of data the header may declare
};

/// One tensor as the header describes it; begin and end are offsets into the data.
struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;

  std::uint64_t size() const noexcept { return end - begin; }
};

/// A parsed and validated header.
struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;  ///< in data order (tensors of zero bytes at one offset: in header order)
  std::map<std::string, std::string> metadata;  ///< "__metadata__"
  std::uint64_t header_bytes = 0;               ///< 8 + N: where the data starts in the file
  std::uint64_t data_bytes = 0;                 ///< the data's length: the file is header_bytes + data_bytes

  std::uint64_t file_size() const noexcept { return header_bytes + data_bytes; }
};

/// N from a file's first 8 bytes, checked against `limits.max_header` (the header takes 8 + N bytes).
Result<std::uint64_t> safetensors_header_length(std::span<const std::byte> first8,
                                                const SafetensorsLimits& limits = {});

/// Parses and validates the header at the start of `prefix`, which must hold all of its 8 + N bytes (it may
/// hold more). N is checked against the limit before anything else is read. Every failure is Errc::malformed
/// with a message naming the tensor or key and what is wrong.
Result<SafetensorsHeader> parse_safetensors_header(std::span<const std::byte> prefix,
                                                   const SafetensorsLimits& limits = {});

/// A safetensors file as a random-access byte source: the header is encoded once, data bytes are copied
/// straight from the tensors' own buffers on each read(), and the whole file is never built. The tensors'
/// bytes must stay valid while the source lives (their owners are kept).
class SafetensorsSource {
 public:
  /// Validates the tensors (consistent bytes, non-empty unique UTF-8 names, not "__metadata__") and the
  /// metadata (UTF-8), and lays the tensors out in the order given. Errors are Errc::invalid_argument.
  static Result<SafetensorsSource> make(std::vector<WireTensor> tensors,
                                        std::map<std::string, std::string> metadata = {});

  /// The file's size in bytes.
  std::uint64_t size() const noexcept { return header_.size() + data_bytes_; }

  /// The header's 8 + N bytes.
  std::span<const std::byte> header() const noexcept;

  /// Fills `out` with the file's bytes from `offset`; Errc::invalid_argument if that runs past the end.
  Result<void> read(std::uint64_t offset, std::span<std::byte> out) const;

  /// Appends the memory holding the `size` bytes at `offset` to `out` (the header and the tensors' own
  /// buffers, in order, empty tensors skipped); false, leaving `out` as it was, if that runs past the end.
  bool view(std::uint64_t offset, std::size_t size, std::vector<std::span<const std::byte>>& out) const;

 private:
  SafetensorsSource() = default;

  std::string header_;
  std::vector<WireTensor> tensors_;
  std::vector<std::uint64_t> starts_;  // each tensor's offset in the data
  std::uint64_t data_bytes_ = 0;
};

/// Reads a safetensors file fed in chunks, in order and of any size: buffers only the header (bounded by the
/// limits) and hands the data to a Consumer as it arrives, never holding it.
class SafetensorsStreamReader {
 public:
  /// Receives a file's parts in order. An error it returns stops the reader and is returned by feed().
  struct Consumer {
    /// The header, once complete and valid; tensor indexes below refer to `header.tensors`.
    virtual Result<void> on_header(const SafetensorsHeader& header) = 0;
    /// The next bytes of a tensor, in order; `offset_in_tensor` counts from the tensor's first byte.
    virtual Result<void> on_tensor_data(std::size_t tensor_index, std::uint64_t offset_in_tensor,
                                        std::span<const std::byte> bytes) = 0;
    /// A tensor is complete (also for tensors of zero bytes, in data order).
    virtual Result<void> on_tensor_end(std::size_t tensor_index) = 0;
    virtual ~Consumer() = default;
  };

  explicit SafetensorsStreamReader(Consumer& consumer, SafetensorsLimits limits = {});

  /// The next bytes of the file. Errc::malformed for a bad header or bytes past the end of the data;
  /// after any error the reader stays failed (returning that error) until reset().
  Result<void> feed(std::span<const std::byte> chunk);

  /// The file has ended: Errc::malformed if the header or data is incomplete.
  Result<void> finish();

  /// Back to the start, for the next file.
  void reset();

  /// The header, once parsed (else nullptr).
  const SafetensorsHeader* header() const noexcept { return parsed_ ? &header_ : nullptr; }

 private:
  Result<void> feed_header(std::span<const std::byte>& chunk);
  Result<void> accept_header(std::span<const std::byte> bytes);
  Result<void> feed_data(std::span<const std::byte> chunk);
  Result<void> end_complete_tensors();
  Result<void> failed(Error error);

  Consumer& consumer_;
  SafetensorsLimits limits_;
  std::vector<std::byte> buffer_;   // the header while it arrives
  std::uint64_t header_bytes_ = 0;  // 8 + N, once the first 8 bytes are in
  SafetensorsHeader header_;
  bool parsed_ = false;
  std::uint64_t data_pos_ = 0;   // data bytes consumed
  std::size_t next_tensor_ = 0;  // the first tensor not yet ended
  std::optional<Error> error_;   // set once feed() or finish() failed
};

/// A Consumer that keeps the tensors: one buffer per tensor, allocated when its first byte arrives (so
/// `limits.max_data` of the reader bounds it), owned by the WireTensor it yields. With a pool, the buffers
/// come from it and go back to it when their last owner lets go.
class CollectingConsumer final : public SafetensorsStreamReader::Consumer {
 public:
  explicit CollectingConsumer(std::shared_ptr<TensorBufferPool> pool = nullptr) : pool_(std::move(pool)) {}

  Result<void> on_header(const SafetensorsHeader& header) override;
  Result<void> on_tensor_data(std::size_t tensor_index, std::uint64_t offset_in_tensor,
                              std::span<const std::byte> bytes) override;
  Result<void> on_tensor_end(std::size_t tensor_index) override;

  /// The tensors in data order, each keeping its buffer alive through `owner`; complete after finish().
  const std::vector<WireTensor>& tensors() const noexcept { return tensors_; }
  std::vector<WireTensor> take_tensors() { return std::move(tensors_); }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  std::map<std::string, std::string> take_metadata() { return std::move(metadata_); }

 private:
  std::vector<WireTensor> tensors_;
  std::vector<std::byte*> buffers_;  // writable views of the owners
  std::vector<std::uint64_t> sizes_;
  std::map<std::string, std::string> metadata_;
  std::shared_ptr<TensorBufferPool> pool_;
};

/// Keys under which a params bundle keeps a TaskData's fields in "__metadata__". Metrics are decimal text
/// that reads back to the same double (shortest round-trip form; "nan", "inf", "-inf" included).
namespace bundle_keys {
inline constexpr const char* prefix = "ember.";
inline constexpr const char* name = "ember.name";                  ///< TaskData::name
inline constexpr const char* round = "ember.round";                ///< decimal u64
inline constexpr const char* total_rounds = "ember.total_rounds";  ///< decimal u64
inline constexpr const char* params_type = "ember.params_type";    ///< "full" or "diff"
inline constexpr const char* metric = "ember.metric.";             ///< + metric name: decimal double
inline constexpr const char* meta = "ember.meta.";                 ///< + meta key: the value as is
/// CRC-32C of the whole data section (every tensor's bytes, in data order) as 8 lower-case hex digits:
/// written where the bytes rest on disk (checkpoints), checked by params_bundle_from when present.
inline constexpr const char* data_crc32c = "ember.data_crc32c";
}  // namespace bundle_keys

/// A task's params as a safetensors file, its other fields in the metadata (bundle_keys); with `checksum`,
/// the data's CRC-32C too (bundle_keys::data_crc32c).
Result<SafetensorsSource> make_params_bundle(const TaskData& task, bool checksum = false);

/// Rebuilds a TaskData from a bundle's tensors and metadata: `base` with the params replaced and the fields
/// the metadata holds overwritten (metrics and meta merged). Keys without the "ember." prefix are ignored;
/// unknown "ember." keys and values that do not parse are Errc::malformed naming the key, as is a
/// data_crc32c that the tensors' bytes do not match.
Result<TaskData> params_bundle_from(const std::vector<WireTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata, TaskData base = {});

}  // namespace ember::wire
