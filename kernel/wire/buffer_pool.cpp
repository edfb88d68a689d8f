#include "wire/buffer_pool.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>

namespace ember::wire {

namespace {

constexpr std::size_t huge_page = std::size_t{2} << 20;

// Large buffers on 2 MiB boundaries, with transparent huge pages asked for: a 100 MiB tensor then costs 50
// page faults instead of 25,600, which is most of what receiving it costs beyond the copy itself. Every
// buffer, small or large, is released with std::free.
std::byte* allocate_raw(std::size_t size) {
  if (size >= 2 * huge_page) {
    std::size_t rounded = (size + huge_page - 1) / huge_page * huge_page;
    void* p = std::aligned_alloc(huge_page, rounded);
    if (p != nullptr) {
      ::madvise(p, rounded, MADV_HUGEPAGE);
    }
    return static_cast<std::byte*>(p);
  }
  return static_cast<std::byte*>(std::malloc(size == 0 ? 1 : size));
}

}  // namespace

std::shared_ptr<std::byte[]> allocate_tensor_buffer(std::size_t size) {
  std::byte* p = allocate_raw(size);
  if (p == nullptr) {
    return nullptr;
  }
  return std::shared_ptr<std::byte[]>(p, [](std::byte* q) { std::free(q); });
}

std::shared_ptr<TensorBufferPool> TensorBufferPool::make(std::uint64_t max_idle) {
  return std::shared_ptr<TensorBufferPool>(new TensorBufferPool(max_idle));
}

std::shared_ptr<std::byte[]> TensorBufferPool::take(std::size_t size) {
  if (size < min_pooled) {
    return allocate_tensor_buffer(size);
  }
  std::byte* p = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (auto it = idle_.find(size); it != idle_.end()) {
      p = it->second;
      idle_.erase(it);
      idle_bytes_ -= size;
    }
  }
  if (p == nullptr) {
    p = allocate_raw(size);
    if (p == nullptr) {
      return nullptr;
    }
  }
  std::weak_ptr<TensorBufferPool> pool = weak_from_this();
  return std::shared_ptr<std::byte[]>(p, [pool, size](std::byte* q) {
    if (auto alive = pool.lock()) {
      alive->give_back(q, size);
    } else {
      std::free(q);
    }
  });
}

void TensorBufferPool::give_back(std::byte* memory, std::size_t size) {
  {
    std::lock_guard lock(mutex_);
    if (idle_bytes_ + size <= max_idle_) {
      idle_.emplace(size, memory);
      idle_bytes_ += size;
      return;
    }
  }
  std::free(memory);
}

void TensorBufferPool::expect(std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  max_idle_ = std::max(max_idle_, bytes);
}

std::uint64_t TensorBufferPool::idle_bytes() const {
  std::lock_guard lock(mutex_);
  return idle_bytes_;
}

TensorBufferPool::~TensorBufferPool() {
  for (auto& [size, memory] : idle_) {
    std::free(memory);
  }
}

}  // namespace ember::wire
