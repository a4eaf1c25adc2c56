#include "engine/storage.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/env.h"
#include "engine/error.h"

namespace kestrel {

namespace {
DeviceAllocator* g_allocators[2] = {nullptr, nullptr};

// Host blocks freed by a Storage are kept for the next Storage of the same size
// class instead of going back to the C library. A training step allocates and
// frees the same few hundred activation and gradient buffers every iteration;
// through aligned_alloc/free the large ones are fresh mmap()s each time, and
// first touch costs a page fault plus the kernel zeroing every page (about a
// fifth of a CIFAR-net step on one thread). Bounded: at most kMaxCachedBytes
// sit unused; beyond that blocks are freed. KESTREL_CPU_NO_CACHE=1 turns the
// cache off so AddressSanitizer sees every use after free.
class HostBlockCache {
 public:
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;

  HostBlockCache() {
    enabled_ = !env_switch("KESTREL_CPU_NO_CACHE");
  }

  // 64-byte multiples up to 4 KiB, then four classes per power of two (<= 25% slack).
  static size_t size_class(size_t nbytes) {
    if (nbytes <= 4096) return (nbytes + 63) / 64 * 64;
    int top = 63;
    while (((nbytes - 1) >> top) == 0) --top;
    const size_t step = size_t{1} << (top - 2);
    return (nbytes + step - 1) / step * step;
  }

  void* allocate(size_t nbytes) {
    const size_t size = enabled_ ? size_class(nbytes) : (nbytes + 63) / 64 * 64;
    if (enabled_) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= size;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, size);
    if (p == nullptr && enabled_) {
      release_all();  // give the cache back and try once more
      p = std::aligned_alloc(64, size);
    }
    KCHECK(p != nullptr, Error, "out of host memory allocating ", nbytes, " bytes");
    return p;
  }

  void deallocate(void* p, size_t nbytes) {
    if (enabled_) {
      const size_t size = size_class(nbytes);
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_bytes_ + size <= kMaxCachedBytes) {
        free_[size].push_back(p);
        cached_bytes_ += size;
        return;
      }
    }
    std::free(p);
  }

 private:
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, list] : free_) {
      for (void* p : list) std::free(p);
      list.clear();
    }
    cached_bytes_ = 0;
  }

  bool enabled_ = true;
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // size class -> free blocks
  size_t cached_bytes_ = 0;
};

// Never destroyed: Storages held by other static objects may be freed after main returns.
HostBlockCache& host_cache() {
  static HostBlockCache* cache = new HostBlockCache();
  return *cache;
}

}  // namespace

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda" || s == "gpu") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      return cuda(std::stoi(s.substr(5)));
    } catch (const std::exception&) {
    }
  }
  throw ValueError("unknown device '" + s + "' (valid: cpu, cuda, cuda:N)");
}

void register_device_allocator(DeviceType type, DeviceAllocator* allocator) {
  g_allocators[static_cast<int>(type)] = allocator;
}

DeviceAllocator* device_allocator(DeviceType type) {
  DeviceAllocator* a = g_allocators[static_cast<int>(type)];
  KCHECK(a != nullptr, DeviceError,
         "device ", (type == DeviceType::CUDA ? "cuda" : "cpu"),
         " is not available in this build or on this machine");
  return a;
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.is_cpu()) {
    data_ = nbytes == 0 ? nullptr : host_cache().allocate(nbytes);
  } else {
    data_ = nbytes == 0 ? nullptr : device_allocator(device.type)->allocate(nbytes, device.index);
  }
}

std::shared_ptr<const void> Storage::derived(const std::string& key,
                                             const std::function<std::shared_ptr<const void>()>& make) {
  KCHECK(frozen_, ValueError, "Storage::derived: the storage is not frozen, so its contents may still change");
  std::lock_guard<std::mutex> lock(derived_mu_);
  for (const auto& [k, value] : derived_)
    if (k == key) return value;
  derived_.emplace_back(key, make());
  return derived_.back().second;
}

size_t Storage::derived_count() {
  std::lock_guard<std::mutex> lock(derived_mu_);
  return derived_.size();
}

Storage::~Storage() {
  if (data_ == nullptr) return;
  if (device_.is_cpu()) {
    host_cache().deallocate(data_, nbytes_);
  } else {
    device_allocator(device_.type)->deallocate(data_, nbytes_, device_.index);
  }
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  device_allocator(DeviceType::CUDA)->copy(dst, dst_dev, src, src_dev, nbytes);
}

}  // namespace kestrel
