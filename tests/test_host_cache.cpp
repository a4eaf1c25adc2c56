// The host block cache (engine/host_cache.h): reuse across a step's phases,
// its bound, and which blocks it gives back first.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "engine/host_cache.h"

namespace kestrel {
namespace {

constexpr size_t kKiB = 1024;

// Holds `count` blocks of `bytes` at once, then frees them: one phase of a
// step (the forward's activations, the backward's gradients).
void run_phase(HostBlockCache& cache, size_t bytes, int count) {
  std::vector<void*> held;
  for (int i = 0; i < count; ++i) held.push_back(cache.allocate(bytes));
  for (void* p : held) cache.deallocate(p, bytes);
}

TEST(HostBlockCache, ASecondRoundOfTheSamePhasesTakesNoFreshBlock) {
  HostBlockCache cache(/*enabled=*/true, /*floor_bytes=*/64 * kKiB);
  // Two phases in different size classes, each past the floor on its own.
  run_phase(cache, 200 * kKiB, 6);
  run_phase(cache, 250 * kKiB, 6);
  const int64_t fresh = cache.stats().fresh_blocks;
  EXPECT_EQ(fresh, 12);
  for (int round = 0; round < 3; ++round) {
    run_phase(cache, 200 * kKiB, 6);
    run_phase(cache, 250 * kKiB, 6);
  }
  const HostCacheStats s = cache.stats();
  EXPECT_EQ(s.fresh_blocks, fresh) << "every block of the later rounds should come from the cache";
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_EQ(s.peak_in_use_bytes, 6 * HostBlockCache::size_class(250 * kKiB));
  EXPECT_LE(s.cached_bytes, s.limit_bytes);
}

// After a large workload, empty() gives its blocks back and the bound follows
// the next, smaller one's peak instead of the large one's.
TEST(HostBlockCache, EmptyGivesEverythingBackAndRestartsThePeak) {
  HostBlockCache cache(/*enabled=*/true, /*floor_bytes=*/64 * kKiB);
  run_phase(cache, 400 * kKiB, 8);
  void* held = cache.allocate(100 * kKiB);
  EXPECT_GT(cache.stats().cached_bytes, 0u);
  cache.empty();
  HostCacheStats s = cache.stats();
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(s.in_use_bytes, HostBlockCache::size_class(100 * kKiB)) << "a block in use stays in use";
  EXPECT_EQ(s.peak_in_use_bytes, s.in_use_bytes);
  EXPECT_EQ(s.limit_bytes, std::max<size_t>(64 * kKiB, 2 * s.in_use_bytes));
  cache.deallocate(held, 100 * kKiB);
  run_phase(cache, 400 * kKiB, 8);
  EXPECT_EQ(cache.stats().fresh_blocks, 8 + 1 + 8) << "the emptied blocks were given back, not kept";
}

TEST(HostBlockCache, PastItsLimitTheLeastRecentlyFreedBlocksGoFirst) {
  HostBlockCache cache(/*enabled=*/true, /*floor_bytes=*/16 * kKiB);
  // One block at a time, each in its own class (64-byte steps below 4 KiB):
  // the peak stays one block, so the floor is the limit, and 20 blocks of
  // 1-2.2 KiB overflow it.
  std::vector<size_t> sizes;
  for (size_t i = 0; i < 20; ++i) sizes.push_back(kKiB + 64 * i);
  for (size_t b : sizes) cache.deallocate(cache.allocate(b), b);
  HostCacheStats s = cache.stats();
  EXPECT_EQ(s.fresh_blocks, 20);
  EXPECT_LE(s.cached_bytes, 16 * kKiB);
  EXPECT_GT(s.cached_bytes, 16 * kKiB - sizes.back());
  // The newest block is still there; the oldest was given back.
  cache.deallocate(cache.allocate(sizes.back()), sizes.back());
  EXPECT_EQ(cache.stats().fresh_blocks, 20);
  cache.deallocate(cache.allocate(sizes.front()), sizes.front());
  EXPECT_EQ(cache.stats().fresh_blocks, 21);
}

TEST(HostBlockCache, SizeClassesAreAlignedAndWithinAQuarterOfTheRequest) {
  for (size_t n : {size_t{1}, size_t{64}, size_t{65}, size_t{4096}, size_t{4097}, size_t{100000}, size_t{1} << 30}) {
    const size_t c = HostBlockCache::size_class(n);
    EXPECT_GE(c, n);
    EXPECT_EQ(c % 64, 0u) << n;
    if (n > 4096) {
      EXPECT_LE(c - n, n / 4) << n;
    }
  }
}

TEST(HostBlockCache, OffItKeepsNothing) {
  HostBlockCache cache(/*enabled=*/false);
  void* p = cache.allocate(100 * kKiB);
  ASSERT_NE(p, nullptr);
  cache.deallocate(p, 100 * kKiB);
  EXPECT_EQ(cache.stats().cached_bytes, 0u);
}

}  // namespace
}  // namespace kestrel
