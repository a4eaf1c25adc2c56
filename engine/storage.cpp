#include "engine/storage.h"

#include <cstring>
#include <mutex>
#include <vector>

#include "engine/env.h"
#include "engine/error.h"
#include "engine/host_cache.h"

namespace kestrel {

namespace {
DeviceAllocator* g_allocators[2] = {nullptr, nullptr};

// Never destroyed: Storages held by other static objects may be freed after main returns.
HostBlockCache& host_cache() {
  static HostBlockCache* cache = new HostBlockCache(!env_switch("KESTREL_CPU_NO_CACHE"));
  return *cache;
}

}  // namespace

HostCacheStats host_cache_stats() { return host_cache().stats(); }

void empty_host_cache() { host_cache().empty(); }

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
