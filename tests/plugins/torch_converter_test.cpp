// converter.torch, linked statically (and once through its shared module): sharing without copies, dtype
// mapping and casts, the misaligned-copy path, refusals, and the CUDA path where a GPU is present. The
// converter conformance suite also covers this plugin, by loading it from the build tree.

#include <cmath>
#include <cstring>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/cuda.h>
#include <ember/converter.hpp>
#include <ember/plugin.hpp>

#include "support.hpp"

EMBER_DECLARE_STATIC_PLUGIN(torch_converter);

namespace ember {
namespace {

using ::testing::HasSubstr;

template <class T>
std::vector<std::byte> bytes_of(std::initializer_list<T> values) {
  std::vector<std::byte> bytes(values.size() * sizeof(T));
  if (!bytes.empty()) {
    std::memcpy(bytes.data(), std::data(values), bytes.size());
  }
  return bytes;
}

// A wire tensor over its own buffer, which `offset` leading bytes can push off its natural alignment.
WireTensor wire_of(std::string name, DType dtype, std::vector<std::int64_t> shape,
                   const std::vector<std::byte>& bytes, std::size_t offset = 0) {
  auto storage = std::make_shared<std::vector<std::byte>>(offset + bytes.size());
  std::copy(bytes.begin(), bytes.end(), storage->begin() + static_cast<std::ptrdiff_t>(offset));
  std::span<const std::byte> view(storage->data() + offset, bytes.size());
  return {std::move(name), dtype, std::move(shape), view, storage};
}

const at::Tensor& tensor_of(const NativeTensor& native) {
  return *std::static_pointer_cast<at::Tensor>(native.object);
}

NativeTensor native_of(at::Tensor tensor) {
  return {"torch", std::make_shared<at::Tensor>(std::move(tensor))};
}

std::vector<float> floats_of(const WireTensor& wire) {
  std::vector<float> values(wire.bytes.size() / sizeof(float));
  std::memcpy(values.data(), wire.bytes.data(), wire.bytes.size());
  return values;
}

// 0, 1, ..., n-1 as a float tensor of `shape`.
at::Tensor counting(std::vector<std::int64_t> shape) {
  auto tensor = at::empty(shape, at::kFloat);
  for (std::int64_t i = 0; i < tensor.numel(); ++i) {
    tensor.data_ptr<float>()[i] = static_cast<float>(i);
  }
  return tensor;
}

bool same_bytes(const at::Tensor& tensor, const std::vector<std::byte>& bytes) {
  return tensor.nbytes() == bytes.size() &&
         (bytes.empty() || std::memcmp(tensor.data_ptr(), bytes.data(), bytes.size()) == 0);
}

struct DtypeCase {
  DType dtype;
  c10::ScalarType torch;
  std::vector<std::byte> bytes;  // four elements, with the type's edge values
};

std::vector<DtypeCase> dtype_cases() {
  return {
      {DType::BOOL, at::kBool, bytes_of<std::uint8_t>({0, 1, 1, 0})},
      {DType::U8, at::kByte, bytes_of<std::uint8_t>({0, 255, 1, 128})},
      {DType::I8, at::kChar, bytes_of<std::int8_t>({INT8_MIN, INT8_MAX, 0, -1})},
      {DType::I16, at::kShort, bytes_of<std::int16_t>({INT16_MIN, INT16_MAX, 0, -1})},
      {DType::I32, at::kInt, bytes_of<std::int32_t>({INT32_MIN, INT32_MAX, 0, -1})},
      {DType::I64, at::kLong, bytes_of<std::int64_t>({INT64_MIN, INT64_MAX, 0, -1})},
      // -0, the smallest denormal, a quiet NaN with a payload, a signalling NaN.
      {DType::F16, at::kHalf, bytes_of<std::uint16_t>({0x8000, 0x0001, 0x7e2b, 0xfc01})},
      {DType::BF16, at::kBFloat16, bytes_of<std::uint16_t>({0x8000, 0x0001, 0x7fc5, 0xff81})},
      {DType::F32, at::kFloat, bytes_of<std::uint32_t>({0x80000000, 0x00000001, 0x7fc12345, 0xff800001})},
      {DType::F64, at::kDouble,
       bytes_of<std::uint64_t>(
           {0x8000000000000000, 0x0000000000000001, 0x7ff8000000abcdef, 0xfff0000000000001})},
  };
}

class TorchConverter : public ::testing::Test {
 protected:
  TorchConverter() {
    auto added = kernel_->add_static(ember_plugin_descriptor_torch_converter(), "<static>");
    EXPECT_TRUE(added) << added.error().message;
  }

  Result<std::shared_ptr<Converter>> create(const Options& options = {}) {
    return kernel_->registry().create_as<Converter>("converter.torch", options);
  }

  std::shared_ptr<Converter> converter(const Options& options = {}) {
    auto made = create(options);
    EXPECT_TRUE(made) << made.error().message;
    return made ? *made : nullptr;
  }

  std::unique_ptr<kernel::Kernel> kernel_ = test::static_kernel();
};

Options with(std::initializer_list<std::pair<const char*, const char*>> values) {
  Options options;
  for (const auto& [name, value] : values) {
    options.set(name, std::string(value));
  }
  return options;
}

TEST_F(TorchConverter, RoundTripsEveryDtypeByteExactWhetherSharedOrCopied) {
  auto torch = converter();
  ASSERT_TRUE(torch);
  EXPECT_EQ(torch->format(), "torch");
  for (const auto& c : dtype_cases()) {
    // Offset 1 misaligns every multi-byte type, which takes the copying path.
    for (std::size_t offset : {0, 1}) {
      SCOPED_TRACE(std::string(to_string(c.dtype)) + " at offset " + std::to_string(offset));
      auto wire = wire_of("w", c.dtype, {2, 2}, c.bytes, offset);
      auto native = torch->to_native(wire);
      ASSERT_TRUE(native) << native.error().message;
      EXPECT_EQ(native->format, "torch");
      const auto& tensor = tensor_of(*native);
      EXPECT_EQ(tensor.scalar_type(), c.torch);
      EXPECT_EQ(tensor.sizes().vec(), (std::vector<std::int64_t>{2, 2}));
      EXPECT_TRUE(tensor.is_cpu());
      EXPECT_TRUE(same_bytes(tensor, c.bytes));
      EXPECT_EQ(tensor.data_ptr() == wire.bytes.data(), offset % element_size(c.dtype) == 0);
      auto back = torch->to_wire(*native, "back");
      ASSERT_TRUE(back) << back.error().message;
      EXPECT_EQ(back->name, "back");
      EXPECT_EQ(back->dtype, c.dtype);
      EXPECT_EQ(back->shape, wire.shape);
      EXPECT_TRUE(std::equal(back->bytes.begin(), back->bytes.end(), c.bytes.begin(), c.bytes.end()));
    }
  }
}

TEST_F(TorchConverter, NativeTensorAliasesTheWireBufferAndKeepsItsOwnerAlive) {
  struct Buffer {
    std::vector<float> values{1, 2, 3, 4, 5, 6};
    bool* released = nullptr;
    ~Buffer() { *released = true; }
  };
  bool released = false;
  auto buffer = std::make_shared<Buffer>();
  buffer->released = &released;
  auto torch = converter();
  std::optional<NativeTensor> native;
  {
    WireTensor wire{"fc.weight", DType::F32, {2, 3}, std::as_bytes(std::span(buffer->values)), buffer};
    auto made = torch->to_native(wire);
    ASSERT_TRUE(made) << made.error().message;
    native = std::move(*made);
    EXPECT_EQ(tensor_of(*native).data_ptr(), wire.bytes.data());
    EXPECT_EQ(buffer.use_count(), 3);  // the test, the wire tensor, the torch tensor's deleter
  }
  buffer.reset();
  EXPECT_FALSE(released);
  EXPECT_EQ(tensor_of(*native).data_ptr<float>()[5], 6.0f);
  // Writable: a received buffer belongs to its receiver.
  tensor_of(*native).data_ptr<float>()[0] = 10.0f;
  auto back = torch->to_wire(*native, "fc.weight");
  ASSERT_TRUE(back);
  EXPECT_EQ(floats_of(*back), (std::vector<float>{10, 2, 3, 4, 5, 6}));
  native.reset();
  EXPECT_FALSE(released);  // the wire tensor shares the same storage
  back.value().owner.reset();
  EXPECT_TRUE(released);
}

TEST_F(TorchConverter, ToWireSharesTheStorageOfAContiguousCpuTensor) {
  auto torch = converter();
  auto source = counting({2, 3});
  auto back = torch->to_wire(native_of(source), "t");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->bytes.data(), source.data_ptr());
  EXPECT_EQ(back->dtype, DType::F32);
  EXPECT_EQ(back->shape, (std::vector<std::int64_t>{2, 3}));
  // A contiguous row (storage offset 3 elements) is shared too, from its own first element.
  auto row = torch->to_wire(native_of(source.select(0, 1)), "row");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->bytes.data(), static_cast<const std::byte*>(source.data_ptr()) + 3 * sizeof(float));
  EXPECT_EQ(floats_of(*row), (std::vector<float>{3, 4, 5}));
  source = at::Tensor();  // the owner keeps the storage
  EXPECT_EQ(floats_of(*back), (std::vector<float>{0, 1, 2, 3, 4, 5}));
}

TEST_F(TorchConverter, NonContiguousTensorsAreSentContiguous) {
  auto torch = converter();
  auto source = counting({2, 3});
  auto back = torch->to_wire(native_of(source.t()), "transposed");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->shape, (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(floats_of(*back), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_NE(back->bytes.data(), source.data_ptr());
  // Transposed and cast in one copy.
  auto wide = converter(with({{"wire_dtype", "F64"}}))->to_wire(native_of(source.t()), "wide");
  ASSERT_TRUE(wide) << wide.error().message;
  EXPECT_EQ(wide->dtype, DType::F64);
  std::vector<double> values(6);
  ASSERT_EQ(wide->bytes.size(), sizeof(double) * values.size());
  std::memcpy(values.data(), wide->bytes.data(), wide->bytes.size());
  EXPECT_EQ(values, (std::vector<double>{0, 3, 1, 4, 2, 5}));
}

TEST_F(TorchConverter, TrainsInBf16AndExchangesF32) {
  auto torch = converter(with({{"native_dtype", "BF16"}, {"wire_dtype", "F32"}}));
  ASSERT_TRUE(torch);
  auto wire = wire_of("w", DType::F32, {4}, bytes_of<float>({1.5f, -2.0f, 0.25f, 1.1f}));
  auto native = torch->to_native(wire);
  ASSERT_TRUE(native) << native.error().message;
  EXPECT_EQ(tensor_of(*native).scalar_type(), at::kBFloat16);
  auto back = torch->to_wire(*native, "w");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->dtype, DType::F32);
  // 1.1 has no exact bf16; the nearest is 1.1015625.
  EXPECT_EQ(floats_of(*back), (std::vector<float>{1.5f, -2.0f, 0.25f, 1.1015625f}));
  // wire_dtype applies to any tensor handed back, whatever its own dtype.
  auto doubles = at::empty({2}, at::kDouble);
  doubles.data_ptr<double>()[0] = 0.5;
  doubles.data_ptr<double>()[1] = -3.0;
  auto narrowed = torch->to_wire(native_of(doubles), "d");
  ASSERT_TRUE(narrowed);
  EXPECT_EQ(narrowed->dtype, DType::F32);
  EXPECT_EQ(floats_of(*narrowed), (std::vector<float>{0.5f, -3.0f}));
}

TEST_F(TorchConverter, MisalignedBytesAreCopiedAndTheBufferIsNotHeld) {
  auto torch = converter();
  auto wire = wire_of("m", DType::F32, {3}, bytes_of<float>({1.0f, -0.0f, 7.5f}), 1);
  ASSERT_NE(reinterpret_cast<std::uintptr_t>(wire.bytes.data()) % alignof(float), 0u);
  auto native = torch->to_native(wire);
  ASSERT_TRUE(native) << native.error().message;
  const auto& tensor = tensor_of(*native);
  EXPECT_NE(tensor.data_ptr(), wire.bytes.data());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(tensor.data_ptr()) % alignof(float), 0u);
  EXPECT_EQ(wire.owner.use_count(), 1);
  EXPECT_EQ(tensor.data_ptr<float>()[2], 7.5f);
  EXPECT_TRUE(std::signbit(tensor.data_ptr<float>()[1]));
}

TEST_F(TorchConverter, ScalarsAndEmptyTensors) {
  auto torch = converter();
  auto scalar = wire_of("s", DType::F64, {}, bytes_of<double>({3.25}));
  auto native = torch->to_native(scalar);
  ASSERT_TRUE(native) << native.error().message;
  EXPECT_EQ(tensor_of(*native).dim(), 0);
  EXPECT_EQ(tensor_of(*native).data_ptr(), scalar.bytes.data());
  auto back = torch->to_wire(*native, "s");
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->shape.empty());
  EXPECT_EQ(back->bytes.size(), sizeof(double));

  WireTensor empty{"e", DType::I32, {0, 3}, {}, nullptr};
  native = torch->to_native(empty);
  ASSERT_TRUE(native) << native.error().message;
  EXPECT_EQ(tensor_of(*native).sizes().vec(), (std::vector<std::int64_t>{0, 3}));
  back = torch->to_wire(*native, "e");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->shape, (std::vector<std::int64_t>{0, 3}));
  EXPECT_TRUE(back->bytes.empty());
}

TEST_F(TorchConverter, RefusesUnsignedDtypesLibTorchLacks) {
  auto torch = converter();
  for (auto dtype : {DType::U16, DType::U32, DType::U64}) {
    auto refused =
        torch->to_native(wire_of("counts", dtype, {1}, std::vector<std::byte>(element_size(dtype))));
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, Errc::unsupported);
    EXPECT_THAT(refused.error().message,
                HasSubstr("tensor 'counts' has dtype " + std::string(to_string(dtype))));
  }
}

TEST_F(TorchConverter, RefusesInconsistentByteLengths) {
  auto refused = converter()->to_native(wire_of("b", DType::F32, {2}, std::vector<std::byte>(5)));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::invalid_argument);
  EXPECT_THAT(refused.error().message, HasSubstr("tensor 'b' has 5 bytes"));
  EXPECT_THAT(refused.error().message, HasSubstr("F32 and shape [2]"));
}

TEST_F(TorchConverter, ToWireRefusesForeignFormatsEmptyObjectsAndTorchOnlyDtypes) {
  auto torch = converter();
  auto foreign = torch->to_wire(NativeTensor{"wire", std::make_shared<int>(1)}, "x");
  ASSERT_FALSE(foreign);
  EXPECT_EQ(foreign.error().code, Errc::invalid_argument);
  EXPECT_THAT(foreign.error().message, HasSubstr("tensor 'x' has format 'wire'"));
  EXPECT_FALSE(torch->to_wire(NativeTensor{"torch", nullptr}, "x"));
  EXPECT_FALSE(torch->to_wire(native_of(at::Tensor()), "x"));
  auto complex = torch->to_wire(native_of(at::empty({2}, at::kComplexFloat)), "z");
  ASSERT_FALSE(complex);
  EXPECT_EQ(complex.error().code, Errc::unsupported);
  EXPECT_THAT(complex.error().message, HasSubstr("tensor 'z' has torch dtype ComplexFloat"));
}

TEST_F(TorchConverter, LibTorchExceptionsBecomeErrors) {
  // A meta tensor has no data: copying it to the host throws inside LibTorch.
  auto meta = at::empty({2}, at::TensorOptions().dtype(at::kFloat).device(c10::DeviceType::Meta));
  auto refused = converter()->to_wire(native_of(meta), "m");
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("tensor 'm': LibTorch: "));
}

TEST_F(TorchConverter, BadOptionValuesAreInvalidOptionsNamingTheValue) {
  // The schema's choices refuse these before the converter sees them (and `ember validate` does too).
  for (const char* device : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:99"}) {
    auto made = create(with({{"device", device}}));
    ASSERT_FALSE(made) << device;
    EXPECT_EQ(made.error().code, Errc::invalid_option);
    EXPECT_THAT(made.error().message, HasSubstr("option 'device': \"" + std::string(device) +
                                                "\" is not one of: cpu, auto, cuda, cuda:<0-15>"));
  }
  auto dtype = create(with({{"native_dtype", "F8"}}));
  ASSERT_FALSE(dtype);
  EXPECT_THAT(dtype.error().message, HasSubstr("option 'native_dtype': \"F8\" is not one of"));
  auto unsigned_wire = create(with({{"wire_dtype", "U32"}}));
  ASSERT_FALSE(unsigned_wire);
  EXPECT_EQ(unsigned_wire.error().code, Errc::invalid_option);
  EXPECT_THAT(unsigned_wire.error().message, HasSubstr("option 'wire_dtype': \"U32\" is not one of"));
}

TEST_F(TorchConverter, AutoPicksTheFirstGpuOrTheCpu) {
  auto torch = converter(with({{"device", "auto"}}));
  ASSERT_TRUE(torch);
  auto native = torch->to_native(wire_of("a", DType::F32, {1}, bytes_of<float>({1.0f})));
  ASSERT_TRUE(native) << native.error().message;
  EXPECT_EQ(tensor_of(*native).is_cuda(), torch::cuda::is_available());
}

TEST_F(TorchConverter, CudaWithoutAGpuIsAClearCreateError) {
  if (torch::cuda::is_available()) {
    GTEST_SKIP() << "a GPU is present";
  }
  for (const char* device : {"cuda", "cuda:1"}) {
    auto made = create(with({{"device", device}}));
    ASSERT_FALSE(made) << device;
    EXPECT_EQ(made.error().code, Errc::create_failed);
    EXPECT_THAT(made.error().message,
                HasSubstr("'" + std::string(device) + "' asks for CUDA, but no CUDA device is available"));
  }
}

TEST_F(TorchConverter, CudaRoundTripsEveryDtypeThroughPinnedStaging) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device";
  }
  auto torch = converter(with({{"device", "cuda:0"}}));
  ASSERT_TRUE(torch);
  for (const auto& c : dtype_cases()) {
    SCOPED_TRACE(std::string(to_string(c.dtype)));
    auto wire = wire_of("w", c.dtype, {2, 2}, c.bytes);
    auto native = torch->to_native(wire);
    ASSERT_TRUE(native) << native.error().message;
    EXPECT_TRUE(tensor_of(*native).is_cuda());
    EXPECT_EQ(tensor_of(*native).scalar_type(), c.torch);
    EXPECT_EQ(wire.owner.use_count(), 1);  // copied to the device: the wire buffer is free at once
    wire = {};
    auto back = torch->to_wire(*native, "w");
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->dtype, c.dtype);
    EXPECT_TRUE(std::equal(back->bytes.begin(), back->bytes.end(), c.bytes.begin(), c.bytes.end()));
  }
}

TEST_F(TorchConverter, CudaCastsOnTheDeviceAndCopiesBackOnce) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device";
  }
  auto torch = converter(with({{"device", "cuda"}, {"native_dtype", "BF16"}, {"wire_dtype", "F32"}}));
  ASSERT_TRUE(torch);
  auto native =
      torch->to_native(wire_of("w", DType::F32, {2, 2}, bytes_of<float>({1.5f, -2.0f, 0.25f, 1.1f})));
  ASSERT_TRUE(native) << native.error().message;
  EXPECT_TRUE(tensor_of(*native).is_cuda());
  EXPECT_EQ(tensor_of(*native).scalar_type(), at::kBFloat16);
  auto back = torch->to_wire(native_of(tensor_of(*native).t()), "w");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->dtype, DType::F32);
  EXPECT_EQ(floats_of(*back), (std::vector<float>{1.5f, 0.25f, -2.0f, 1.1015625f}));
}

TEST(TorchConverterModule, LoadsThroughTheKernelAndShares) {
  auto kernel = test::kernel_with_paths({});
  auto loaded = kernel->load_file(EMBER_TORCH_CONVERTER_MODULE);
  ASSERT_TRUE(loaded) << loaded.error().message;
  auto made = kernel->registry().create_as<Converter>("converter.torch", Options{});
  ASSERT_TRUE(made) << made.error().message;
  auto wire = wire_of("w", DType::I64, {3}, bytes_of<std::int64_t>({1, -2, 3}));
  auto native = (*made)->to_native(wire);
  ASSERT_TRUE(native) << native.error().message;
  EXPECT_EQ(tensor_of(*native).data_ptr(), wire.bytes.data());
  auto back = (*made)->to_wire(*native, "w");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->bytes.data(), wire.bytes.data());
}

}  // namespace
}  // namespace ember
