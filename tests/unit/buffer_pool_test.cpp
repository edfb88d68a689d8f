// The tensor buffer pool: memory comes back and is handed out again at the same size, idle memory stays
// under its cap, and buffers outliving their pool are still freed (the ASan build checks that).

#include "wire/buffer_pool.hpp"

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace ember::wire {
namespace {

constexpr std::size_t mib = std::size_t{1} << 20;

TEST(TensorBufferPool, ABufferLetGoIsHandedOutAgainAtTheSameSize) {
  auto pool = TensorBufferPool::make(8 * mib);
  auto first = pool->take(mib);
  ASSERT_TRUE(first);
  std::memset(first.get(), 0x5A, mib);  // the whole buffer is writable
  std::byte* memory = first.get();
  first.reset();
  EXPECT_EQ(pool->idle_bytes(), mib);
  auto other_size = pool->take(2 * mib);
  ASSERT_TRUE(other_size);
  EXPECT_NE(other_size.get(), memory) << "a buffer came back at another size";
  auto again = pool->take(mib);
  ASSERT_TRUE(again);
  EXPECT_EQ(again.get(), memory);
  EXPECT_EQ(pool->idle_bytes(), 0u);
}

TEST(TensorBufferPool, SmallBuffersAreNotKept) {
  auto pool = TensorBufferPool::make(8 * mib);
  auto small = pool->take(TensorBufferPool::min_pooled - 1);
  ASSERT_TRUE(small);
  small.reset();
  EXPECT_EQ(pool->idle_bytes(), 0u);
}

TEST(TensorBufferPool, IdleMemoryStaysUnderTheCapAndExpectRaisesIt) {
  auto pool = TensorBufferPool::make(2 * mib);
  std::vector<std::shared_ptr<std::byte[]>> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(pool->take(mib));
    ASSERT_TRUE(held.back());
  }
  held.clear();
  EXPECT_EQ(pool->idle_bytes(), 2 * mib);
  pool->expect(4 * mib);
  for (int i = 0; i < 4; ++i) {
    held.push_back(pool->take(mib));
  }
  EXPECT_EQ(pool->idle_bytes(), 0u);
  held.clear();
  EXPECT_EQ(pool->idle_bytes(), 4 * mib);
}

TEST(TensorBufferPool, ABufferOutlivingItsPoolIsStillFreed) {
  auto pool = TensorBufferPool::make(8 * mib);
  auto kept = pool->take(mib);
  auto idle = pool->take(mib);
  ASSERT_TRUE(kept && idle);
  idle.reset();
  pool.reset();  // frees the idle buffer; `kept` is freed by its owner below
  std::memset(kept.get(), 1, mib);
  kept.reset();
}

TEST(TensorBufferPool, LargeBuffersAreAlignedForHugePages) {
  auto buffer = allocate_tensor_buffer(4 * mib);
  ASSERT_TRUE(buffer);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buffer.get()) % (2 * mib), 0u);
  auto zero = allocate_tensor_buffer(0);
  (void)zero;  // a zero-size tensor is legal; whatever comes back is freed cleanly
}

}  // namespace
}  // namespace ember::wire
