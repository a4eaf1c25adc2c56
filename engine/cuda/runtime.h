// CUDA runtime layer: device discovery and selection, checked calls that
// raise kestrel::DeviceError naming the call (and the op and shapes when
// given), stream and event wrappers, the caching device allocator registered
// as the engine's CUDA DeviceAllocator, a pinned host allocator, async copies.
//
// Safe on machines without a GPU: cuda_available() returns false and nothing
// here throws until a CUDA allocation or call is actually requested.
// Compiled only when KESTREL_HAVE_CUDA; written and compiled, untested on GPU
// at the time of writing.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/device.h"
#include "engine/error.h"

namespace kestrel::cuda {

// ---- devices
bool cuda_available();  // at least one usable device; cached; never throws
int device_count();     // 0 when no driver or no device; never throws
// Why no device is usable ("" when one is), for skip messages and errors.
std::string unavailable_reason();
int current_device();
void set_device(int index);  // throws DeviceError for a bad index
std::string device_name(int index);
// Streaming multiprocessors and memory bandwidth class, for launch heuristics.
int multiprocessor_count(int index);

// Sets the current device for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// ---- checked calls
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line,
                                   const std::string& context);

}  // namespace kestrel::cuda

// KESTREL_CUDA_CHECK(cudaMemcpyAsync(...));
// KESTREL_CUDA_CHECK_CTX(kernels::depthwise_conv2d_forward(...), "depthwise_conv2d x ", shape_str(x.shape()));
// The context arguments are only formatted when the call failed.
#define KESTREL_CUDA_CHECK(call)                                                                  \
  do {                                                                                            \
    const cudaError_t kestrel_err_ = (call);                                                      \
    if (kestrel_err_ != cudaSuccess)                                                              \
      ::kestrel::cuda::throw_cuda_error(kestrel_err_, #call, __FILE__, __LINE__, std::string()); \
  } while (0)
#define KESTREL_CUDA_CHECK_CTX(call, ...)                                                          \
  do {                                                                                             \
    const cudaError_t kestrel_err_ = (call);                                                       \
    if (kestrel_err_ != cudaSuccess)                                                               \
      ::kestrel::cuda::throw_cuda_error(kestrel_err_, #call, __FILE__, __LINE__,                   \
                                        ::kestrel::detail::concat(__VA_ARGS__));                   \
  } while (0)

namespace kestrel::cuda {

// ---- streams and events
// Owning wrapper; Stream() is the legacy default stream (not owned).
class Stream {
 public:
  Stream() = default;
  static Stream create(int device = -1, bool non_blocking = true);  // -1: current device
  ~Stream();
  Stream(Stream&& o) noexcept;
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t handle() const { return stream_; }
  int device() const { return device_; }
  void synchronize() const;
  bool query() const;  // true when all work has completed

 private:
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  bool owned_ = false;
};

// The stream engine ops launch on, per thread and device (default: the
// legacy default stream). StreamScope switches it for a scope.
cudaStream_t current_stream(int device = -1);
void set_current_stream(cudaStream_t stream, int device = -1);
class StreamScope {
 public:
  explicit StreamScope(cudaStream_t stream, int device = -1);
  ~StreamScope();
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  cudaStream_t previous_;
  int device_;
};

class Event {
 public:
  explicit Event(bool timing = true);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(cudaStream_t stream);
  void synchronize() const;
  bool query() const;
  void wait(cudaStream_t stream) const;  // stream waits for this event
  float elapsed_ms(const Event& end) const;  // this = start
  cudaEvent_t handle() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// ---- caching device allocator
struct AllocatorStats {
  size_t allocated = 0;       // bytes handed out and not yet freed (bucket sizes)
  size_t reserved = 0;        // bytes obtained from cudaMalloc and not yet released
  size_t peak_allocated = 0;  // maximum of `allocated` since the last reset
  size_t peak_reserved = 0;
  uint64_t alloc_count = 0;   // allocate() calls
  uint64_t cache_hits = 0;    // served from a free list
  uint64_t cuda_mallocs = 0;  // served by cudaMalloc
};

// Allocation size classes: 512-byte granularity up to 4 KiB, then four
// classes per power of two (at most 25% slack). Exposed for tests.
size_t allocation_bucket(size_t nbytes);

// Raw allocation on the current stream of `device`; blocks freed are reused
// only by allocations on the same stream, or after record_stream() streams
// have passed the free point. KESTREL_CUDA_NO_CACHE=1 at first use turns the
// cache off (cudaMalloc/cudaFree per call) for memory debugging.
void* device_allocate(size_t nbytes, int device = -1, cudaStream_t stream = nullptr);
void device_free(void* ptr);
// Marks ptr as used by `stream` too, so its reuse waits for that stream.
void record_stream(void* ptr, cudaStream_t stream);
AllocatorStats allocator_stats(int device = -1);
void reset_peak_stats(int device = -1);
void empty_cache();  // releases every cached, unused block to the driver
bool caching_enabled();
// A private pool for a CUDA graph (engine/cuda/graph.h): while `stream` is
// private, blocks allocated on it are reused only by later allocations on it
// and never given back to the driver (a captured graph writes them again at
// every replay; with KESTREL_CUDA_NO_CACHE their frees wait too). The stream
// must be used by nothing but the graph. end_private_pool waits for the
// stream and releases its free blocks; call it before destroying the stream.
void begin_private_pool(cudaStream_t stream);
void end_private_pool(cudaStream_t stream);
// Tests: fill every new tensor's memory with 0xFF bytes (NaN in f32/f16/bf16)
// so an output element an op never writes shows up in comparisons.
void set_poison_allocations(bool on);

// Registers the allocator as kestrel's CUDA DeviceAllocator. No CUDA call is
// made; allocation on a machine without a device then throws DeviceError.
// Runs at static-init time (engine/cuda/register.cc is compiled into every
// executable that links kestrel_engine); calling it again is harmless.
void ensure_registered();

// ---- pinned host memory (cached by size class; free only after the async
// copies that use it have completed)
void* pinned_allocate(size_t nbytes);
void pinned_free(void* ptr);

class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t nbytes) : ptr_(pinned_allocate(nbytes)), nbytes_(nbytes) {}
  ~PinnedBuffer() { if (ptr_ != nullptr) pinned_free(ptr_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* data() const { return ptr_; }
  size_t size() const { return nbytes_; }

 private:
  void* ptr_;
  size_t nbytes_;
};

// ---- copies. Async on `stream` (current stream when null); pinned host
// memory makes host<->device copies truly asynchronous.
void copy_async(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes,
                cudaStream_t stream = nullptr);
// A copy the host may build on: when it returns, `src` may be reused and
// `dst` holds the data for any later work on the current stream. It waits for
// the stream, except for host-to-device copies of at most 1 MiB: those are
// staged in pinned memory and not waited for (the host runs ahead).
void copy_sync(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes);

}  // namespace kestrel::cuda
