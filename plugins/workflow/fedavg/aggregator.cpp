#include "aggregator.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include <base/strings.hpp>

#include "half.hpp"

namespace ember::fedavg {

static_assert(std::endian::native == std::endian::little, "wire tensors are little-endian, as is this host");

namespace {

// Elements are read and written through memcpy: a tensor's bytes may sit at any offset of a received frame.
template <class T>
T load(const std::byte* p) noexcept {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <class T>
void store(std::byte* p, T value) noexcept {
  std::memcpy(p, &value, sizeof(T));
}

bool sums_in_double(DType dtype) noexcept {
  return dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16;
}

// Whether the accumulator of a dtype becomes the mean's buffer (it has the dtype's own element type).
bool in_place(DType dtype) noexcept {
  return dtype == DType::F32 || dtype == DType::F64;
}

constexpr std::uint64_t cache_line = 64;
constexpr std::uint64_t huge_page = std::uint64_t{2} << 20;

// base + i, where base is null for the accumulator type a dtype does not use.
template <class T>
T* offset(T* base, std::uint64_t i) noexcept {
  return base == nullptr ? nullptr : base + i;
}

std::uint64_t round_up(std::uint64_t bytes, std::uint64_t unit) noexcept {
  return (bytes + unit - 1) / unit * unit;
}

// Anonymous memory for a round's buffers, uninitialised (every byte is written before it is read). From 2
// MiB, aligned to and advised for transparent huge pages: the first fold of a 100 MiB model then takes 50
// page faults, not 25,600. Unmapped whole when the last pointer into it goes.
std::shared_ptr<std::byte> map_block(std::uint64_t bytes) {
  if (bytes == 0) {
    return nullptr;
  }
  std::uint64_t slack = bytes >= huge_page ? huge_page : 0;
  auto length = static_cast<std::size_t>(bytes + slack);
  void* mapped = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) {
    throw std::bad_alloc();
  }
  auto* start = static_cast<std::byte*>(mapped);
  if (slack != 0) {
    start += (huge_page - reinterpret_cast<std::uintptr_t>(mapped) % huge_page) % huge_page;
    ::madvise(start, static_cast<std::size_t>(bytes), MADV_HUGEPAGE);  // only advice: small pages without it
  }
  return std::shared_ptr<std::byte>(start, [mapped, length](std::byte*) { ::munmap(mapped, length); });
}

// acc[i] = w x src[i] for the first result of a round (no read of the accumulator), acc[i] += w x src[i]
// after.
template <class Acc, class Element, class Decode>
void accumulate(Acc* __restrict acc, const std::byte* __restrict src, std::uint64_t n, Acc w, bool first,
                Decode decode) noexcept {
  if (first) {
    for (std::uint64_t i = 0; i < n; ++i) {
      acc[i] = w * decode(load<Element>(src + i * sizeof(Element)));
    }
  } else {
    for (std::uint64_t i = 0; i < n; ++i) {
      acc[i] += w * decode(load<Element>(src + i * sizeof(Element)));
    }
  }
}

template <class T>
T round_to(double value) noexcept {
  using limits = std::numeric_limits<T>;
  if (std::isnan(value)) {
    return T{0};
  }
  double rounded = std::round(value);
  if (rounded <= static_cast<double>(limits::lowest())) {
    return limits::lowest();
  }
  // max() of a 64-bit type is not a double: compare with 2^bits (or 2^(bits - 1)), its successor.
  if (rounded >= std::ldexp(1.0, limits::digits)) {
    return limits::max();
  }
  return static_cast<T>(rounded);
}

// out[i] = encode(mean), where mean = acc[i] / total, plus base[i] when there is a base.
template <class Acc, class Element, class Decode, class Encode>
void write_mean(const Acc* acc, const std::byte* base, std::byte* out, std::uint64_t n, Acc total,
                Decode decode, Encode encode) noexcept {
  for (std::uint64_t i = 0; i < n; ++i) {
    Acc mean = acc[i] / total;
    if (base != nullptr) {
      mean += decode(load<Element>(base + i * sizeof(Element)));
    }
    store<Element>(out + i * sizeof(Element), encode(mean));
  }
}

template <class Int>
void write_int_mean(const double* acc, const std::byte* base, std::byte* out, std::uint64_t n, double total) {
  for (std::uint64_t i = 0; i < n; ++i) {
    double mean = std::round(acc[i] / total);
    if (base != nullptr) {
      mean += static_cast<double>(load<Int>(base + i * sizeof(Int)));
    }
    store<Int>(out + i * sizeof(Int), round_to<Int>(mean));
  }
}

template <class Int>
void fold_int(double* acc, const std::byte* src, std::uint64_t n, double w, bool first) noexcept {
  accumulate<double, Int>(acc, src, n, w, first, [](Int v) { return static_cast<double>(v); });
}

constexpr auto same_float = [](float v) { return v; };
constexpr auto same_double = [](double v) { return v; };

}  // namespace

std::shared_ptr<std::byte> BlockCache::take(std::uint64_t bytes) {
  for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
    // A count of 1 is final: no one else holds the block, so no one can copy it any more.
    if (it->first == bytes && it->second.use_count() == 1) {
      auto block = std::move(it->second);
      blocks_.erase(it);
      return block;
    }
  }
  return map_block(bytes);
}

void BlockCache::keep(std::shared_ptr<std::byte> block, std::uint64_t bytes) {
  constexpr std::size_t limit = 6;  // two models' blocks of each kind
  if (!block) {
    return;
  }
  blocks_.emplace_back(bytes, std::move(block));
  if (blocks_.size() > limit) {
    blocks_.erase(blocks_.begin());
  }
}

Result<Layout> Layout::of(const std::vector<WireTensor>& tensors) {
  Layout layout;
  for (const auto& tensor : tensors) {
    if (tensor.name.empty()) {
      return fail(Errc::invalid_argument, "a tensor has an empty name");
    }
    if (tensor.dtype == DType::BOOL) {
      return fail(Errc::invalid_argument, "tensor '" + tensor.name + "' is BOOL, which cannot be averaged");
    }
    if (!tensor.consistent()) {
      return fail(Errc::invalid_argument,
                  "tensor '" + tensor.name + "' has " + std::to_string(tensor.bytes.size()) +
                      " bytes, which does not fit " + std::string(to_string(tensor.dtype)) + " " +
                      base::shape_text(tensor.shape));
    }
    if (!layout.index_.emplace(tensor.name, layout.tensors_.size()).second) {
      return fail(Errc::invalid_argument, "tensor '" + tensor.name + "' appears twice");
    }
    auto elements = *tensor.element_count();
    layout.tensors_.push_back({tensor.name, tensor.dtype, tensor.shape, elements});
    layout.bytes_ += tensor.bytes.size();
  }
  return layout;
}

Result<std::vector<const WireTensor*>> Layout::match(const std::vector<WireTensor>& params) const {
  std::vector<const WireTensor*> ordered(tensors_.size(), nullptr);
  for (const auto& tensor : params) {
    auto it = index_.find(tensor.name);
    if (it == index_.end()) {
      return fail(Errc::rejected, "tensor '" + tensor.name + "' is not in the model");
    }
    const auto& spec = tensors_[it->second];
    if (ordered[it->second] != nullptr) {
      return fail(Errc::rejected, "tensor '" + tensor.name + "' appears twice");
    }
    if (tensor.dtype != spec.dtype) {
      return fail(Errc::rejected, "tensor '" + tensor.name + "' is " + std::string(to_string(tensor.dtype)) +
                                      ", the model's is " + std::string(to_string(spec.dtype)));
    }
    if (tensor.shape != spec.shape) {
      return fail(Errc::rejected, "tensor '" + tensor.name + "' has shape " + base::shape_text(tensor.shape) +
                                      ", the model's is " + base::shape_text(spec.shape));
    }
    if (tensor.bytes.size() != spec.elements * element_size(spec.dtype)) {
      return fail(Errc::rejected, "tensor '" + tensor.name + "' has " + std::to_string(tensor.bytes.size()) +
                                      " bytes, " + std::to_string(spec.elements * element_size(spec.dtype)) +
                                      " expected for " + std::string(to_string(spec.dtype)) + " " +
                                      base::shape_text(spec.shape));
    }
    ordered[it->second] = &tensor;
  }
  for (std::size_t i = 0; i < ordered.size(); ++i) {
    if (ordered[i] == nullptr) {
      return fail(Errc::rejected, "tensor '" + tensors_[i].name + "' is missing");
    }
  }
  return ordered;
}

Aggregator::Aggregator(Layout layout, AggregatorSettings settings)
    : layout_(std::move(layout)), runner_(settings.threading) {
  split(settings.split_bytes);
}

Aggregator::~Aggregator() = default;

// Cuts the model, as one run of bytes, in two at its middle: the cut falls inside at most one tensor. Passes
// over the whole model then take the same time on both threads, whatever its tensors' sizes.
void Aggregator::split(std::uint64_t split_bytes) {
  const auto& specs = layout_.tensors();
  std::uint64_t total = layout_.bytes();
  bool two = runner_.threading() != Threading::single && total >= split_bytes && total > 0;
  std::uint64_t half = total / 2;
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    std::uint64_t size = element_size(specs[i].dtype);
    std::uint64_t bytes = specs[i].elements * size;
    if (!two || seen + bytes <= half) {
      halves_[0].push_back({i, 0, specs[i].elements});
    } else if (seen >= half) {
      halves_[1].push_back({i, 0, specs[i].elements});
    } else {
      // 64 elements per cut: the two threads never write to one cache line of the accumulator.
      std::uint64_t cut = std::min(specs[i].elements, ((half - seen) / size + 63) / 64 * 64);
      halves_[0].push_back({i, 0, cut});
      if (cut < specs[i].elements) {
        halves_[1].push_back({i, cut, specs[i].elements});
      }
    }
    seen += bytes;
  }
}

void Aggregator::run_halves(const std::function<void(const std::vector<Piece>&)>& work) {
  if (halves_[1].empty()) {
    work(halves_[0]);
    return;
  }
  runner_.run([&] { work(halves_[0]); }, [&] { work(halves_[1]); });
}

void Aggregator::fold_piece(const Piece& piece, const WireTensor& tensor, double weight, bool first) {
  const auto& spec = layout_.tensors()[piece.tensor];
  const auto& acc = accumulators_[piece.tensor];
  std::uint64_t n = piece.end - piece.begin;
  const std::byte* src = tensor.bytes.data() + piece.begin * element_size(spec.dtype);
  float* f32 = offset(acc.f32, piece.begin);
  double* f64 = offset(acc.f64, piece.begin);
  auto w32 = static_cast<float>(weight);
  switch (spec.dtype) {
    case DType::F32:
      return accumulate<float, float>(f32, src, n, w32, first, same_float);
    case DType::F16:
      return accumulate<float, std::uint16_t>(f32, src, n, w32, first, half_to_float);
    case DType::BF16:
      return accumulate<float, std::uint16_t>(f32, src, n, w32, first, bf16_to_float);
    case DType::F64:
      return accumulate<double, double>(f64, src, n, weight, first, same_double);
    case DType::I8:
      return fold_int<std::int8_t>(f64, src, n, weight, first);
    case DType::U8:
      return fold_int<std::uint8_t>(f64, src, n, weight, first);
    case DType::I16:
      return fold_int<std::int16_t>(f64, src, n, weight, first);
    case DType::U16:
      return fold_int<std::uint16_t>(f64, src, n, weight, first);
    case DType::I32:
      return fold_int<std::int32_t>(f64, src, n, weight, first);
    case DType::U32:
      return fold_int<std::uint32_t>(f64, src, n, weight, first);
    case DType::I64:
      return fold_int<std::int64_t>(f64, src, n, weight, first);
    case DType::U64:
      return fold_int<std::uint64_t>(f64, src, n, weight, first);
    case DType::BOOL:
      return;  // refused by Layout::of
  }
}

void Aggregator::allocate() {
  const auto& specs = layout_.tensors();
  std::vector<std::uint64_t> offsets;
  std::uint64_t kept = 0;
  std::uint64_t scratch = 0;
  for (const auto& spec : specs) {
    auto& end = in_place(spec.dtype) ? kept : scratch;
    offsets.push_back(end);
    end +=
        round_up(spec.elements * (sums_in_double(spec.dtype) ? sizeof(double) : sizeof(float)), cache_line);
  }
  kept_ = cache_.take(kept);
  scratch_ = cache_.take(scratch);
  kept_bytes_ = kept;
  scratch_bytes_ = scratch;
  accumulators_.resize(specs.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    std::byte* at = (in_place(specs[i].dtype) ? kept_ : scratch_).get() + offsets[i];
    if (sums_in_double(specs[i].dtype)) {
      accumulators_[i].f64 = reinterpret_cast<double*>(at);
    } else {
      accumulators_[i].f32 = reinterpret_cast<float*>(at);
    }
  }
}

void Aggregator::fold(std::span<const WireTensor* const> params, double weight) {
  if (accumulators_.empty()) {
    allocate();
  }
  bool first = count_ == 0;
  run_halves([&](const std::vector<Piece>& pieces) {
    for (const auto& piece : pieces) {
      fold_piece(piece, *params[piece.tensor], weight, first);
    }
  });
  ++count_;
  total_weight_ += weight;
}

std::vector<WireTensor> Aggregator::finish(std::span<const WireTensor* const> base) {
  const auto& specs = layout_.tensors();
  if (accumulators_.empty()) {
    allocate();  // nothing was folded: a mean of nothing (NaN), but no read of unmapped memory
  }
  // F32 and F64 means are written over their accumulators, which become the tensors' bytes; the other dtypes
  // get one block of their own size.
  std::vector<std::uint64_t> offsets;
  std::uint64_t narrow = 0;
  for (const auto& spec : specs) {
    offsets.push_back(narrow);
    narrow += in_place(spec.dtype) ? 0 : round_up(spec.elements * element_size(spec.dtype), cache_line);
  }
  auto narrow_block = cache_.take(narrow);
  std::vector<WireTensor> out;
  std::vector<std::byte*> targets;
  out.reserve(specs.size());
  targets.reserve(specs.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    const auto& acc = accumulators_[i];
    std::byte* target = nullptr;
    std::shared_ptr<std::byte> block;
    if (in_place(spec.dtype)) {
      target =
          acc.f32 != nullptr ? reinterpret_cast<std::byte*>(acc.f32) : reinterpret_cast<std::byte*>(acc.f64);
      block = kept_;
    } else {
      target = narrow_block.get() + offsets[i];
      block = narrow_block;
    }
    targets.push_back(target);
    std::shared_ptr<const void> owner(std::move(block), target);
    out.push_back(WireTensor{
        spec.name, spec.dtype, spec.shape, {target, spec.elements * element_size(spec.dtype)}, owner});
  }
  double total = total_weight_;
  auto total32 = static_cast<float>(total);
  run_halves([&](const std::vector<Piece>& pieces) {
    for (const auto& piece : pieces) {
      const auto& spec = specs[piece.tensor];
      const auto& acc = accumulators_[piece.tensor];
      std::uint64_t skip = piece.begin * element_size(spec.dtype);
      std::uint64_t n = piece.end - piece.begin;
      const std::byte* from = base.empty() ? nullptr : offset(base[piece.tensor]->bytes.data(), skip);
      std::byte* to = offset(targets[piece.tensor], skip);
      const float* f32 = offset(acc.f32, piece.begin);
      const double* f64 = offset(acc.f64, piece.begin);
      switch (spec.dtype) {
        case DType::F32:
          write_mean<float, float>(f32, from, to, n, total32, same_float, same_float);
          break;
        case DType::F16:
          write_mean<float, std::uint16_t>(f32, from, to, n, total32, half_to_float, float_to_half);
          break;
        case DType::BF16:
          write_mean<float, std::uint16_t>(f32, from, to, n, total32, bf16_to_float, float_to_bf16);
          break;
        case DType::F64:
          write_mean<double, double>(f64, from, to, n, total, same_double, same_double);
          break;
        case DType::I8:
          write_int_mean<std::int8_t>(f64, from, to, n, total);
          break;
        case DType::U8:
          write_int_mean<std::uint8_t>(f64, from, to, n, total);
          break;
        case DType::I16:
          write_int_mean<std::int16_t>(f64, from, to, n, total);
          break;
        case DType::U16:
          write_int_mean<std::uint16_t>(f64, from, to, n, total);
          break;
        case DType::I32:
          write_int_mean<std::int32_t>(f64, from, to, n, total);
          break;
        case DType::U32:
          write_int_mean<std::uint32_t>(f64, from, to, n, total);
          break;
        case DType::I64:
          write_int_mean<std::int64_t>(f64, from, to, n, total);
          break;
        case DType::U64:
          write_int_mean<std::uint64_t>(f64, from, to, n, total);
          break;
        case DType::BOOL:
          break;
      }
    }
  });
  accumulators_.clear();
  cache_.keep(std::move(kept_), kept_bytes_);
  cache_.keep(std::move(scratch_), scratch_bytes_);
  cache_.keep(std::move(narrow_block), narrow);
  count_ = 0;
  total_weight_ = 0;
  return out;
}

}  // namespace ember::fedavg
