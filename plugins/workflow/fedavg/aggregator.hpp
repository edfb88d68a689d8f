#pragma once
// The FedAvg aggregator: a weighted sum of the sites' results, folded into one accumulator per tensor as each
// result arrives, on the results' raw buffers (no copy per site), over two threads for large models.
//
// F32, F16 and BF16 accumulate in float, F64 and the integer dtypes in double; the mean is written back in
// each tensor's dtype (integers rounded to nearest, halves away from zero, and clamped to the dtype's range;
// they are exact up to 2^53). BOOL cannot be averaged.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <ember/result.hpp>
#include <ember/tensor.hpp>

#include "pair_runner.hpp"

namespace ember::fedavg {

/// One tensor of a model's layout.
struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t elements = 0;
};

/// The names, dtypes and shapes that every result of a round must have.
class Layout {
 public:
  /// The layout of a model: non-empty unique names, bytes that match dtype and shape, no BOOL tensor.
  /// Errc::invalid_argument naming the tensor.
  static Result<Layout> of(const std::vector<WireTensor>& tensors);

  const std::vector<TensorSpec>& tensors() const noexcept { return tensors_; }
  /// Bytes of one model in this layout.
  std::uint64_t bytes() const noexcept { return bytes_; }

  /// `params` put in this layout's order (they may come in any order), or Errc::rejected with a message
  /// naming the first tensor that is missing, extra, repeated, or of another dtype, shape or size.
  Result<std::vector<const WireTensor*>> match(const std::vector<WireTensor>& params) const;

 private:
  std::vector<TensorSpec> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::uint64_t bytes_ = 0;
};

/// "[2, 3]".
std::string shape_text(const std::vector<std::int64_t>& shape);

/// Memory for accumulators and means, mapped once and used again: a round's accumulators become the new
/// model, and the model of the round before is free again by the time the next round needs accumulators, so
/// a run maps two models' worth and takes no page faults after its first rounds.
class BlockCache {
 public:
  /// An uninitialised block of `bytes`: a kept one that nobody else holds any more, or a new mapping.
  std::shared_ptr<std::byte> take(std::uint64_t bytes);
  /// Keeps `block` (of `bytes`) to hand out again once its other holders have dropped it; the oldest beyond a
  /// few is let go.
  void keep(std::shared_ptr<std::byte> block, std::uint64_t bytes);

 private:
  std::vector<std::pair<std::uint64_t, std::shared_ptr<std::byte>>> blocks_;
};

struct AggregatorSettings {
  /// pool: handing a pass to a kept thread costs about 12 µs, starting a thread for it about 100 µs
  /// (bench/aggregation_bench, handoff/*, on the reference machine).
  Threading threading = Threading::pool;
  /// A pass over fewer bytes of a model than this stays on one thread.
  std::uint64_t split_bytes = std::uint64_t{1} << 20;
};

/// A running weighted sum of results in one layout: fold() adds weight x params as each arrives, finish()
/// turns the sum into the weighted mean. One aggregator serves every round of a run. Not thread-safe: one
/// caller at a time.
class Aggregator {
 public:
  explicit Aggregator(Layout layout, AggregatorSettings settings = {});
  ~Aggregator();
  Aggregator(const Aggregator&) = delete;
  Aggregator& operator=(const Aggregator&) = delete;

  const Layout& layout() const noexcept { return layout_; }
  /// Results folded since construction or the last finish().
  std::size_t count() const noexcept { return count_; }
  /// Their total weight.
  double total_weight() const noexcept { return total_weight_; }

  /// acc += weight x params. `params` come from layout().match(); `weight` is finite and positive.
  void fold(std::span<const WireTensor* const> params, double weight);

  /// The weighted mean of the folded results, or `base` plus that mean when `base` is given (in the layout's
  /// order: the round's results were differences to it), as tensors that own their bytes. Needs count() > 0;
  /// empties the aggregator.
  std::vector<WireTensor> finish(std::span<const WireTensor* const> base = {});

 private:
  struct Piece {
    std::size_t tensor;
    std::uint64_t begin;  // elements
    std::uint64_t end;
  };
  struct Accumulator {  // one value per element, in kept_ or scratch_
    float* f32 = nullptr;
    double* f64 = nullptr;
  };

  void split(std::uint64_t split_bytes);
  void allocate();
  void run_halves(const std::function<void(const std::vector<Piece>&)>& work);
  void fold_piece(const Piece& piece, const WireTensor& tensor, double weight, bool first);

  Layout layout_;
  PairRunner runner_;
  std::array<std::vector<Piece>, 2> halves_;  // each pass: the first half here, the second on the runner
  std::vector<Accumulator> accumulators_;     // allocated by the first fold of a round
  std::shared_ptr<std::byte> kept_;     // F32 and F64 accumulators, which finish() makes the model's bytes
  std::shared_ptr<std::byte> scratch_;  // the other dtypes' accumulators
  std::uint64_t kept_bytes_ = 0;
  std::uint64_t scratch_bytes_ = 0;
  BlockCache cache_;
  std::size_t count_ = 0;
  double total_weight_ = 0;
};

}  // namespace ember::fedavg
