#pragma once
// Memory for received tensors, kept from one message to the next: a buffer whose last owner lets go comes
// back to its pool (while the pool lives) instead of going to the allocator, so the next round's model
// lands in memory that is already mapped and faulted in: no page faults, no zeroing by the kernel.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

namespace ember::wire {

/// Uninitialised memory for a tensor of `size` bytes (null if it cannot be had); large buffers are aligned
/// to 2 MiB and marked for transparent huge pages. Freed when the last owner goes.
std::shared_ptr<std::byte[]> allocate_tensor_buffer(std::size_t size);

class TensorBufferPool : public std::enable_shared_from_this<TensorBufferPool> {
 public:
  /// Buffers smaller than this are not kept (the allocator serves them well).
  static constexpr std::size_t min_pooled = std::size_t{64} << 10;

  /// A pool keeping at most `max_idle` bytes of idle buffers (raised by expect()).
  static std::shared_ptr<TensorBufferPool> make(std::uint64_t max_idle = 0);
  /// Frees the idle buffers; buffers still owned are freed by their last owner.
  ~TensorBufferPool();
  TensorBufferPool(const TensorBufferPool&) = delete;
  TensorBufferPool& operator=(const TensorBufferPool&) = delete;

  /// A buffer of exactly `size` bytes, idle memory of that size when there is some; its contents are
  /// whatever was there. Null if memory cannot be had.
  std::shared_ptr<std::byte[]> take(std::size_t size);
  /// A message of `bytes` is coming: keep up to that much idle, so a model of that size is reused whole.
  void expect(std::uint64_t bytes);
  /// Bytes held idle now.
  std::uint64_t idle_bytes() const;

 private:
  explicit TensorBufferPool(std::uint64_t max_idle) : max_idle_(max_idle) {}
  void give_back(std::byte* memory, std::size_t size);

  mutable std::mutex mutex_;
  std::multimap<std::size_t, std::byte*> idle_;  // by size; oldest first within a size
  std::uint64_t idle_bytes_ = 0;
  std::uint64_t max_idle_ = 0;
};

}  // namespace ember::wire
