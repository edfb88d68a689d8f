// converter.torch: wire tensors as LibTorch tensors, on the CPU or a CUDA device, and back.
//
// The native object is a std::shared_ptr<torch::Tensor> (torch::Tensor is at::Tensor) held as the
// shared_ptr<void> of NativeTensor, format "torch". A trainer, which includes LibTorch itself, reads it with
//   auto tensor = std::static_pointer_cast<torch::Tensor>(native.object);
// and hands a tensor back as NativeTensor{"torch", std::make_shared<torch::Tensor>(t)}.
//
// On the CPU, to_native does not copy: the tensor aliases the wire bytes, and its deleter holds the wire
// tensor's owner, so the buffer lives as long as the tensor. The bytes are const in the WireTensor, but a
// received frame belongs to its receiver alone, so the tensor is left writable; in-place updates write into
// that buffer. Bytes not aligned to the element size are copied, since LibTorch's kernels assume aligned
// elements. On CUDA the bytes go through pinned host memory (see staging.hpp).
//
// to_wire copies a tensor at most once, to the host, to row-major order and to wire_dtype together; when
// nothing is to be done the wire bytes alias the tensor's own storage.
//
// LibTorch reports errors by throwing c10::Error. No exception leaves this file: every entry point catches
// and returns an ember::Error naming the tensor.

#include <bit>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <string>

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <ember/converter.hpp>
#include <ember/plugin.hpp>

#include <base/strings.hpp>

#include "dtypes.hpp"
#include "staging.hpp"

namespace ember::torch_converter {
namespace {

// Sharing wire bytes with a tensor reads them in the host's byte order; the wire is little-endian.
static_assert(std::endian::native == std::endian::little, "converter.torch assumes a little-endian host");

// "cpu", "cuda", "cuda:N" or "auto" (the first GPU if there is one, else the CPU).
Result<c10::Device> parse_device(const std::string& text, const std::string& where) {
  auto gpus = torch::cuda::device_count();
  if (text == "cpu" || (text == "auto" && gpus == 0)) {
    return c10::Device(c10::DeviceType::CPU);
  }
  std::size_t index = 0;
  if (text != "cuda" && text != "auto") {
    const char* last = text.data() + text.size();
    bool numbered = text.starts_with("cuda:") && text.size() > 5 &&
                    std::from_chars(text.data() + 5, last, index).ptr == last;
    if (!numbered) {
      return fail(Errc::invalid_option,
                  where + "'" + text + "' is not a device; use \"cpu\", \"cuda\", \"cuda:N\" or \"auto\"");
    }
  }
  if (gpus == 0) {
    return fail(Errc::unsupported, where + "'" + text +
                                       "' asks for CUDA, but no CUDA device is available (no GPU is visible, "
                                       "or this LibTorch is a CPU-only build); use \"cpu\" or \"auto\"");
  }
  if (index >= gpus) {
    return fail(Errc::invalid_option, where + "'" + text + "' names GPU " + std::to_string(index) +
                                          ", but only " + std::to_string(gpus) +
                                          " CUDA device(s) are visible");
  }
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

// "" (keep the tensor's dtype) or a safetensors dtype name that LibTorch has.
Result<std::optional<c10::ScalarType>> parse_dtype_option(const std::string& text, const std::string& where) {
  if (text.empty()) {
    return std::optional<c10::ScalarType>();
  }
  auto dtype = parse_dtype(text);
  if (!dtype) {
    return fail(Errc::invalid_option, where + "'" + text +
                                          "' is not a dtype; use a safetensors name: BOOL, U8, I8, I16, I32, "
                                          "I64, F16, BF16, F32 or F64, or \"\" to keep the tensor's own");
  }
  auto type = torch_dtype(*dtype);
  if (!type) {
    return fail(Errc::invalid_option, where + "'" + text + "' has no LibTorch 1.13 dtype");
  }
  return std::optional<c10::ScalarType>(*type);
}

std::string torch_error(const c10::Error& e) {
  return std::string("LibTorch: ") + e.what_without_backtrace();
}

class TorchConverter final : public Converter {
 public:
  TorchConverter(c10::Device device, std::optional<c10::ScalarType> native_dtype,
                 std::optional<c10::ScalarType> wire_dtype)
      : device_(device), native_dtype_(native_dtype), wire_dtype_(wire_dtype) {}

  static Result<std::unique_ptr<TorchConverter>> create(const ComponentContext& context) {
    auto where = [&](const char* option) {
      return "converter.torch '" + context.instance() + "': option '" + option + "': ";
    };
    try {
      auto device = parse_device(context.options().string("device"), where("device"));
      if (!device) {
        return fail(std::move(device.error()));
      }
      auto native = parse_dtype_option(context.options().string("native_dtype"), where("native_dtype"));
      if (!native) {
        return fail(std::move(native.error()));
      }
      auto wire = parse_dtype_option(context.options().string("wire_dtype"), where("wire_dtype"));
      if (!wire) {
        return fail(std::move(wire.error()));
      }
      context.logger().debug("converting to and from torch tensors on " + device->str());
      return std::make_unique<TorchConverter>(*device, *native, *wire);
    } catch (const c10::Error& e) {
      return fail(Errc::create_failed, "converter.torch '" + context.instance() + "': " + torch_error(e));
    }
  }

  std::string_view format() const noexcept override { return "torch"; }

  Result<NativeTensor> to_native(const WireTensor& tensor) override {
    auto where = "converter.torch: tensor '" + tensor.name + "'";
    if (!tensor.consistent()) {
      return fail(Errc::invalid_argument, where + " has " + std::to_string(tensor.bytes.size()) +
                                              " bytes, which does not match its dtype " +
                                              std::string(to_string(tensor.dtype)) + " and shape " +
                                              base::shape_text(tensor.shape));
    }
    auto type = torch_dtype(tensor.dtype);
    if (!type) {
      return fail(Errc::unsupported, where + " has dtype " + std::string(to_string(tensor.dtype)) +
                                         ", which LibTorch 1.13 does not have");
    }
    try {
      at::NoGradGuard no_grad;
      auto native = device_.is_cpu() ? on_host(tensor, *type) : on_device(tensor, *type);
      return NativeTensor{"torch", std::make_shared<at::Tensor>(std::move(native))};
    } catch (const c10::Error& e) {
      return fail(Errc::unsupported, where + ": " + torch_error(e));
    } catch (const std::exception& e) {
      return fail(Errc::internal, where + ": " + e.what());
    }
  }

  Result<WireTensor> to_wire(const NativeTensor& native, std::string name) override {
    auto where = "converter.torch: tensor '" + name + "'";
    if (native.format != "torch") {
      return fail(Errc::invalid_argument, where + " has format '" + native.format + "'; expects 'torch'");
    }
    if (!native.object || !static_cast<const at::Tensor*>(native.object.get())->defined()) {
      return fail(Errc::invalid_argument, where + " holds no torch tensor (null or undefined)");
    }
    const auto& source = *static_cast<const at::Tensor*>(native.object.get());
    try {
      at::NoGradGuard no_grad;
      auto type = wire_dtype_.value_or(source.scalar_type());
      auto dtype = wire_dtype(type);
      if (!dtype) {
        return fail(Errc::unsupported, where + " has torch dtype " + c10::toString(type) +
                                           ", which has no wire (safetensors) dtype");
      }
      if (source.layout() != c10::Layout::Strided) {
        return fail(Errc::unsupported, where + " is not a dense (strided) tensor");
      }
      // One copy at most. A device or dtype change copies into a fresh row-major tensor; otherwise `to()`
      // returns the tensor itself (even a transposed view: its suggested memory format is still
      // "contiguous"), and contiguous() copies only if the strides need it. A lazily negated view is
      // resolved first, since its storage holds the values before negation.
      auto host = std::make_shared<const at::Tensor>(
          source.detach()
              .resolve_neg()
              .to(at::TensorOptions().device(c10::DeviceType::CPU).dtype(type), /*non_blocking=*/false,
                  /*copy=*/false, c10::MemoryFormat::Contiguous)
              .contiguous());
      WireTensor wire;
      wire.name = std::move(name);
      wire.dtype = *dtype;
      wire.shape = host->sizes().vec();
      wire.bytes = {static_cast<const std::byte*>(host->data_ptr()), host->nbytes()};
      wire.owner = std::move(host);
      return wire;
    } catch (const c10::Error& e) {
      return fail(Errc::unsupported, where + ": " + torch_error(e));
    } catch (const std::exception& e) {
      return fail(Errc::internal, where + ": " + e.what());
    }
  }

 private:
  // A CPU tensor over the wire bytes (copied when misaligned), cast to native_dtype if set.
  at::Tensor on_host(const WireTensor& tensor, c10::ScalarType type) const {
    auto options = at::TensorOptions().dtype(type).device(c10::DeviceType::CPU);
    auto* data = const_cast<std::byte*>(tensor.bytes.data());
    at::Tensor host;
    if (tensor.bytes.empty()) {
      host = at::empty(tensor.shape, options);  // no element to share, and data may be null
    } else if (reinterpret_cast<std::uintptr_t>(data) % element_size(tensor.dtype) != 0) {
      host = at::empty(tensor.shape, options);
      std::memcpy(host.data_ptr(), data, tensor.bytes.size());
    } else {
      // The deleter's only job is to hold the owner: the buffer is released with the tensor's storage.
      host = at::from_blob(
          data, tensor.shape, [owner = tensor.owner](void*) {}, options);
    }
    return native_dtype_ && *native_dtype_ != type ? host.to(*native_dtype_) : host;
  }

  // Wire bytes -> pinned staging (one memcpy) -> device without blocking, cast on the device if asked.
  at::Tensor on_device(const WireTensor& tensor, c10::ScalarType type) {
    staging_.release_finished();
    auto staging = at::empty(tensor.shape, at::TensorOptions().dtype(type).pinned_memory(true));
    if (!tensor.bytes.empty()) {
      std::memcpy(staging.data_ptr(), tensor.bytes.data(), tensor.bytes.size());
    }
    // Same dtype on both sides, so the copy reads the pinned buffer directly (a cast on the way would go
    // through a pageable temporary and block).
    auto device = staging.to(at::TensorOptions().device(device_).dtype(type), /*non_blocking=*/true);
    staging_.park(std::move(staging), device_);
    return native_dtype_ && *native_dtype_ != type ? device.to(*native_dtype_) : device;
  }

  c10::Device device_;
  std::optional<c10::ScalarType> native_dtype_;
  std::optional<c10::ScalarType> wire_dtype_;
  StagingPark staging_;
};

constexpr OptionSpec torch_options[] = {
    // LibTorch 1.13 numbers at most 16 CUDA devices (C10_COMPILE_TIME_MAX_GPUS); whether one is present is
    // known only when the converter is created.
    {.name = "device",
     .type = OptionType::string,
     .default_value = "cpu",
     .doc = "where to_native puts tensors: \"cpu\", \"cuda\", \"cuda:N\", or \"auto\" (cuda:0 when a GPU is "
            "visible)",
     .choices = "cpu|auto|cuda|cuda:<0-15>"},
    // The safetensors dtypes LibTorch 1.13 has (no U16, U32, U64), and "" for none.
    {.name = "native_dtype",
     .type = OptionType::string,
     .default_value = "\"\"",
     .doc = "dtype to_native casts to (safetensors name, e.g. \"BF16\"); \"\" keeps the wire dtype",
     .choices = "|BOOL|U8|I8|I16|I32|I64|F16|BF16|F32|F64"},
    {.name = "wire_dtype",
     .type = OptionType::string,
     .default_value = "\"\"",
     .doc = "dtype to_wire casts to before export (e.g. \"F32\"); \"\" keeps the tensor's dtype",
     .choices = "|BOOL|U8|I8|I16|I32|I64|F16|BF16|F32|F64"},
};

constexpr ComponentDescriptor components[] = {
    component<TorchConverter>("torch", "Wire tensors as LibTorch tensors (no copy on the CPU) and back",
                              torch_options),
};

}  // namespace
}  // namespace ember::torch_converter

EMBER_PLUGIN(torch_converter, "torch-converter", "0.1.0",
             "LibTorch tensors on the CPU or CUDA, shared with the wire without copying where possible",
             "Apache-2.0", ember::torch_converter::components)
