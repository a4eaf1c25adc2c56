// A block of memory on one device. CPU memory is 64-byte aligned; other
// devices plug their allocator in (the CUDA backend registers one).
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/device.h"

namespace kestrel {

struct DeviceAllocator {
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(size_t nbytes, int device_index) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, int device_index) = 0;
  // dst/src on any devices; kinds are derived from the Device arguments.
  virtual void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) = 0;
  virtual void memset_zero(void* ptr, size_t nbytes, int device_index) = 0;
};

void register_device_allocator(DeviceType type, DeviceAllocator* allocator);
DeviceAllocator* device_allocator(DeviceType type);  // throws DeviceError if absent

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  // A frozen storage's bytes no longer change (inference fusion freezes a
  // model's weights; Tensor::copy_ into it is an error), so forms derived
  // from them, such as a convolution's packed weights, are built once and
  // kept here: derived(key, make) returns what make() built for key the
  // first time. Thread-safe.
  void freeze() { frozen_ = true; }
  bool frozen() const { return frozen_; }
  std::shared_ptr<const void> derived(const std::string& key, const std::function<std::shared_ptr<const void>()>& make);
  size_t derived_count();

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  bool frozen_ = false;
  std::mutex derived_mu_;
  std::vector<std::pair<std::string, std::shared_ptr<const void>>> derived_;
};

// Copies nbytes between any two devices.
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes);

}  // namespace kestrel
