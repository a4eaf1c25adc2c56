#include "engine/host_cache.h"

#include <algorithm>
#include <cstdlib>

#include "engine/error.h"

namespace kestrel {

HostBlockCache::HostBlockCache(bool enabled, size_t floor_bytes) : enabled_(enabled), floor_bytes_(floor_bytes) {}

HostBlockCache::~HostBlockCache() { release_all(); }

size_t HostBlockCache::size_class(size_t nbytes) {
  if (nbytes <= 4096) return (nbytes + 63) / 64 * 64;
  int top = 63;
  while (((nbytes - 1) >> top) == 0) --top;
  const size_t step = size_t{1} << (top - 2);
  return (nbytes + step - 1) / step * step;
}

size_t HostBlockCache::limit_bytes() const { return std::max(floor_bytes_, 2 * peak_in_use_bytes_); }

void HostBlockCache::note_in_use(size_t size) {
  in_use_bytes_ += size;
  peak_in_use_bytes_ = std::max(peak_in_use_bytes_, in_use_bytes_);
}

void* HostBlockCache::allocate(size_t nbytes) {
  const size_t size = enabled_ ? size_class(nbytes) : (nbytes + 63) / 64 * 64;
  if (enabled_) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      const auto block = by_age_.find(it->second.back());  // the class's newest: likely still in cache
      it->second.pop_back();
      void* p = block->second.ptr;
      by_age_.erase(block);
      cached_bytes_ -= size;
      note_in_use(size);
      return p;
    }
  }
  void* p = std::aligned_alloc(64, size);
  if (p == nullptr && enabled_) {
    release_all();  // give the cache back and try once more
    p = std::aligned_alloc(64, size);
  }
  KCHECK(p != nullptr, Error, "out of host memory allocating ", nbytes, " bytes");
  if (enabled_) {
    std::lock_guard<std::mutex> lock(mu_);
    note_in_use(size);
    ++fresh_blocks_;
  }
  return p;
}

void HostBlockCache::deallocate(void* p, size_t nbytes) {
  if (enabled_) {
    const size_t size = size_class(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    in_use_bytes_ -= size;
    const size_t limit = limit_bytes();
    if (size <= limit) {
      while (cached_bytes_ + size > limit) free_oldest();
      by_age_[++clock_] = {size, p};
      free_[size].push_back(clock_);
      cached_bytes_ += size;
      return;
    }
  }
  std::free(p);
}

HostCacheStats HostBlockCache::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return {enabled_, fresh_blocks_, cached_bytes_, in_use_bytes_, peak_in_use_bytes_, limit_bytes()};
}

void HostBlockCache::free_oldest() {
  const auto oldest = by_age_.begin();
  std::vector<uint64_t>& ages = free_[oldest->second.size];
  ages.erase(ages.begin());  // a class's ages ascend: its first is the cache's oldest
  cached_bytes_ -= oldest->second.size;
  std::free(oldest->second.ptr);
  by_age_.erase(oldest);
}

void HostBlockCache::empty() {
  release_all();
  std::lock_guard<std::mutex> lock(mu_);
  peak_in_use_bytes_ = in_use_bytes_;
}

void HostBlockCache::release_all() {
  std::lock_guard<std::mutex> lock(mu_);
  while (!by_age_.empty()) free_oldest();
}

}  // namespace kestrel
