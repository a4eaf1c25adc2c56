// Host blocks freed by a Storage are kept for the next Storage of the same size
// class instead of going back to the C library. A training step allocates and
// frees the same few hundred activation and gradient buffers every iteration;
// through aligned_alloc/free the large ones are fresh mmap()s each time, and
// first touch costs a page fault plus the kernel zeroing every page (about a
// fifth of a CIFAR-net step on one thread).
//
// Bounded: the unused blocks never exceed twice the most bytes ever in use at
// once (or a floor, 1 GiB for the process's cache, if more); past that the
// least recently freed blocks go back first. Twice, because a step's phases
// peak in different size classes (the forward's activations, the backward's
// gradients): with the peak itself as the bound, EMN-Small's step (batch 64
// at 32x32) still took 45 fresh blocks an iteration, with twice it none, and
// its peak resident memory went from 1.63 to 1.70 GB. (The earlier fixed
// 1 GiB, freeing the newest block when full, filled up with sizes no longer
// asked for.) KESTREL_CPU_NO_CACHE=1 turns the process's cache off so
// AddressSanitizer sees every use after free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace kestrel {

struct HostCacheStats {
  bool enabled = false;          // false under KESTREL_CPU_NO_CACHE=1
  int64_t fresh_blocks = 0;      // blocks taken from the C library so far
  size_t cached_bytes = 0;       // freed blocks kept for reuse
  size_t in_use_bytes = 0;       // blocks handed out and not yet freed
  size_t peak_in_use_bytes = 0;  // the most in use at once
  size_t limit_bytes = 0;        // what cached_bytes may reach now
};

class HostBlockCache {
 public:
  explicit HostBlockCache(bool enabled, size_t floor_bytes = size_t{1} << 30);
  ~HostBlockCache();
  HostBlockCache(const HostBlockCache&) = delete;
  HostBlockCache& operator=(const HostBlockCache&) = delete;

  // 64-byte aligned; throws Error when the memory is not there even after
  // the cache gave its blocks back.
  void* allocate(size_t nbytes);
  void deallocate(void* p, size_t nbytes);  // nbytes as allocated
  HostCacheStats stats();
  // Gives every cached block back and restarts the peak from what is in use
  // now, so the bound follows the next workload's peak, not an earlier one's.
  void empty();

  // 64-byte multiples up to 4 KiB, then four classes per power of two (<= 25% slack).
  static size_t size_class(size_t nbytes);

 private:
  struct Block {
    size_t size;
    void* ptr;
  };
  size_t limit_bytes() const;
  void note_in_use(size_t size);  // the rest under mu_
  void free_oldest();             // the cache is not empty
  void release_all();

  const bool enabled_;
  const size_t floor_bytes_;
  std::mutex mu_;
  std::map<uint64_t, Block> by_age_;                        // cached blocks by when they were freed
  std::unordered_map<size_t, std::vector<uint64_t>> free_;  // size class -> its blocks' ages, ascending
  uint64_t clock_ = 0;
  int64_t fresh_blocks_ = 0;
  size_t cached_bytes_ = 0;
  size_t in_use_bytes_ = 0;
  size_t peak_in_use_bytes_ = 0;
};

// The process's cache, behind every CPU Storage.
HostCacheStats host_cache_stats();
void empty_host_cache();  // between workloads of different sizes (scale-search's candidates)

}  // namespace kestrel
