#pragma once
// The element types that safetensors (ember's wire) and LibTorch 1.13 share, mapped both ways.

#include <optional>

#include <c10/core/ScalarType.h>
#include <ember/tensor.hpp>

namespace ember::torch_converter {

/// The LibTorch dtype of a wire dtype; nullopt for U16, U32 and U64, which LibTorch 1.13 does not have.
constexpr std::optional<c10::ScalarType> torch_dtype(DType dtype) noexcept {
  switch (dtype) {
    case DType::BOOL:
      return c10::ScalarType::Bool;
    case DType::U8:
      return c10::ScalarType::Byte;
    case DType::I8:
      return c10::ScalarType::Char;
    case DType::I16:
      return c10::ScalarType::Short;
    case DType::I32:
      return c10::ScalarType::Int;
    case DType::I64:
      return c10::ScalarType::Long;
    case DType::F16:
      return c10::ScalarType::Half;
    case DType::BF16:
      return c10::ScalarType::BFloat16;
    case DType::F32:
      return c10::ScalarType::Float;
    case DType::F64:
      return c10::ScalarType::Double;
    case DType::U16:
    case DType::U32:
    case DType::U64:
      return std::nullopt;
  }
  return std::nullopt;
}

/// The wire dtype of a LibTorch dtype; nullopt for complex, quantized and the other LibTorch-only types.
constexpr std::optional<DType> wire_dtype(c10::ScalarType type) noexcept {
  switch (type) {
    case c10::ScalarType::Bool:
      return DType::BOOL;
    case c10::ScalarType::Byte:
      return DType::U8;
    case c10::ScalarType::Char:
      return DType::I8;
    case c10::ScalarType::Short:
      return DType::I16;
    case c10::ScalarType::Int:
      return DType::I32;
    case c10::ScalarType::Long:
      return DType::I64;
    case c10::ScalarType::Half:
      return DType::F16;
    case c10::ScalarType::BFloat16:
      return DType::BF16;
    case c10::ScalarType::Float:
      return DType::F32;
    case c10::ScalarType::Double:
      return DType::F64;
    default:
      return std::nullopt;
  }
}

}  // namespace ember::torch_converter
