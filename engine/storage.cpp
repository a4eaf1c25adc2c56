#include "engine/storage.h"

#include <cstdlib>
#include <cstring>

#include "engine/error.h"

namespace kestrel {

namespace {
DeviceAllocator* g_allocators[2] = {nullptr, nullptr};
}

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
    const size_t rounded = ((nbytes + 63) / 64) * 64;
    data_ = rounded == 0 ? nullptr : std::aligned_alloc(64, rounded);
    KCHECK(rounded == 0 || data_ != nullptr, Error, "out of host memory allocating ", nbytes, " bytes");
  } else {
    data_ = nbytes == 0 ? nullptr : device_allocator(device.type)->allocate(nbytes, device.index);
  }
}

Storage::~Storage() {
  if (data_ == nullptr) return;
  if (device_.is_cpu()) {
    std::free(data_);
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
