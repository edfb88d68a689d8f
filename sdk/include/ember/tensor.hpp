#pragma once
// Tensors as they travel between ember processes: dtype, shape and little-endian bytes.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ember {

/// Element types, named as in the safetensors format.
enum class DType : std::uint32_t {
  BOOL = 0,
  U8 = 1,
  I8 = 2,
  I16 = 3,
  U16 = 4,
  I32 = 5,
  U32 = 6,
  I64 = 7,
  U64 = 8,
  F16 = 9,
  BF16 = 10,
  F32 = 11,
  F64 = 12,
};

/// Size in bytes of one element.
constexpr std::size_t element_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
      return 1;
    case DType::I16:
    case DType::U16:
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::I32:
    case DType::U32:
    case DType::F32:
      return 4;
    case DType::I64:
    case DType::U64:
    case DType::F64:
      return 8;
  }
  return 0;
}

/// The safetensors name of a dtype ("F32").
constexpr std::string_view to_string(DType dtype) noexcept {
  switch (dtype) {
    case DType::BOOL:
      return "BOOL";
    case DType::U8:
      return "U8";
    case DType::I8:
      return "I8";
    case DType::I16:
      return "I16";
    case DType::U16:
      return "U16";
    case DType::I32:
      return "I32";
    case DType::U32:
      return "U32";
    case DType::I64:
      return "I64";
    case DType::U64:
      return "U64";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
  }
  return "?";
}

/// Parses a safetensors dtype name; nullopt when unknown.
constexpr std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (auto d : {DType::BOOL, DType::U8, DType::I8, DType::I16, DType::U16, DType::I32, DType::U32,
                 DType::I64, DType::U64, DType::F16, DType::BF16, DType::F32, DType::F64}) {
    if (to_string(d) == name) {
      return d;
    }
  }
  return std::nullopt;
}

/// A tensor on the wire: row-major, little-endian, contiguous. `bytes` stays valid while `owner` lives,
/// so a tensor can point into a received frame or a mapped file without copying it. Reentrant; its bytes
/// are read-only once shared, so copies may be read on several threads at once.
struct WireTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> owner;

  /// Number of elements (1 for a scalar), or nullopt if a dimension is negative or the product overflows.
  std::optional<std::uint64_t> element_count() const noexcept {
    std::uint64_t count = 1;
    for (auto dim : shape) {
      if (dim < 0) {
        return std::nullopt;
      }
      auto d = static_cast<std::uint64_t>(dim);
      if (d != 0 && count > UINT64_MAX / d) {
        return std::nullopt;
      }
      count *= d;
    }
    return count;
  }

  /// Whether the byte length matches dtype and shape.
  bool consistent() const noexcept {
    auto count = element_count();
    return count && *count <= UINT64_MAX / element_size(dtype) &&
           *count * element_size(dtype) == bytes.size();
  }
};

/// A framework's tensor behind a converter's format tag ("torch"): `object` points to, e.g., a torch::Tensor.
struct NativeTensor {
  std::string format;
  std::shared_ptr<void> object;
};

}  // namespace ember
