// The CUDA runtime API calls Kestrel makes, for the CPU emulator: one device
// whose memory is host memory. Work is synchronous, so streams and events are
// tokens and every query reports completion.
//
// Device memory comes from mmap: NaN-filled (0xff bytes in f32, f16 and
// bf16), its end against a PROT_NONE page, so a read past a buffer's end
// crashes instead of passing quietly.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "tests/emu/cuda_emu.h"

namespace {

struct Mapping {
  void* base;
  size_t length;
};

struct Memory {
  std::mutex mutex;
  std::map<void*, Mapping> mappings;
};

Memory& memory() {
  static Memory m;
  return m;
}

thread_local cudaError_t sticky_api_error = cudaSuccess;

cudaError_t fail(cudaError_t e) {
  sticky_api_error = e;
  return e;
}

// Events remember when they were recorded, for cudaEventElapsedTime.
struct EmuEvent {
  std::chrono::steady_clock::time_point at;
  cudaStream_t recorded_on = nullptr;
};

std::mutex stream_log_mutex;
std::vector<kestrel::emu::StreamLogEntry> stream_log;
void append_to_stream_log(kestrel::emu::StreamLogEntry entry) {
  std::lock_guard<std::mutex> lock(stream_log_mutex);
  stream_log.push_back(entry);
}

std::atomic<int64_t> host_wait_count{0};
void count_host_wait() { host_wait_count.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

int64_t kestrel::emu::host_waits() { return host_wait_count.load(std::memory_order_relaxed); }

std::vector<kestrel::emu::StreamLogEntry> kestrel::emu::take_stream_log() {
  std::lock_guard<std::mutex> lock(stream_log_mutex);
  return std::exchange(stream_log, {});
}

void kestrel::emu::log_collective(cudaStream_t stream) {
  append_to_stream_log({StreamLogEntry::kCollective, stream, nullptr});
}

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t launch = kestrel::emu::launch_error(true);
  const cudaError_t api = sticky_api_error;
  sticky_api_error = cudaSuccess;
  return launch != cudaSuccess ? launch : api;
}

cudaError_t cudaPeekAtLastError(void) {
  const cudaError_t launch = kestrel::emu::launch_error(false);
  return launch != cudaSuccess ? launch : sticky_api_error;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchFailure: return kestrel::emu::launch_error_message();
    default: return "an error the CUDA emulator does not model";
  }
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
  }
}

// ---- the one device
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::strncpy(prop->name, "Kestrel CPU emulator (sm_90 model)", sizeof(prop->name) - 1);
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->totalGlobalMem = size_t{16} << 30;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->sharedMemPerBlockOptin = 227 * 1024;
  prop->maxThreadsPerBlock = 1024;
  prop->warpSize = 32;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    default: return fail(cudaErrorInvalidValue);
  }
}

cudaError_t cudaDeviceSynchronize(void) {
  count_host_wait();
  return kestrel::emu::launch_error(false);
}

// ---- streams and events: work is already done when it is queued
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<char*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) {
  count_host_wait();
  return kestrel::emu::launch_error(false);
}
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  const cudaStream_t recorded_on = reinterpret_cast<EmuEvent*>(event)->recorded_on;
  if (recorded_on != stream) append_to_stream_log({kestrel::emu::StreamLogEntry::kWait, stream, recorded_on});
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  *event = reinterpret_cast<cudaEvent_t>(new EmuEvent{std::chrono::steady_clock::now()});
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<EmuEvent*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  reinterpret_cast<EmuEvent*>(event)->at = std::chrono::steady_clock::now();
  reinterpret_cast<EmuEvent*>(event)->recorded_on = stream;
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  count_host_wait();
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  const auto d = reinterpret_cast<EmuEvent*>(end)->at - reinterpret_cast<EmuEvent*>(start)->at;
  *ms = std::chrono::duration<float, std::milli>(d).count();
  return cudaSuccess;
}

// ---- memory
cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = (std::max<size_t>(size, 1) + 15) / 16 * 16;  // kernels rely on 16-byte alignment
  const size_t length = (rounded + page - 1) / page * page + page;
  void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return fail(cudaErrorMemoryAllocation);
  unsigned char* guard = static_cast<unsigned char*>(base) + length - page;
  mprotect(guard, page, PROT_NONE);
  unsigned char* p = guard - rounded;
  std::memset(p, 0xff, rounded);
  {
    std::lock_guard<std::mutex> lock(memory().mutex);
    memory().mappings[p] = {base, length};
  }
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(memory().mutex);
  auto it = memory().mappings.find(ptr);
  if (it == memory().mappings.end()) return fail(cudaErrorInvalidValue);
  munmap(it->second.base, it->second.length);
  memory().mappings.erase(it);
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  *ptr = std::malloc(std::max<size_t>(size, 1));
  return *ptr != nullptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaMallocHost(void** ptr, size_t size) { return cudaHostAlloc(ptr, size, 0); }

cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

// A zero-byte copy is valid CUDA even with null pointers; memmove's are not.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault) count_host_wait();
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t) {
  if (kind == cudaMemcpyDeviceToHost) count_host_wait();
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t) {
  if (width > dpitch || width > spitch) return fail(cudaErrorInvalidPitchValue);
  for (size_t r = 0; r < height; ++r)
    std::memmove(static_cast<unsigned char*>(dst) + r * dpitch, static_cast<const unsigned char*>(src) + r * spitch, width);
  return cudaSuccess;
}

cudaError_t cudaMemcpyPeerAsync(void* dst, int, const void* src, int, size_t count, cudaStream_t) {
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemset2DAsync(void* ptr, size_t pitch, int value, size_t width, size_t height, cudaStream_t) {
  if (width > pitch) return fail(cudaErrorInvalidValue);
  for (size_t r = 0; r < height; ++r) std::memset(static_cast<unsigned char*>(ptr) + r * pitch, value, width);
  return cudaSuccess;
}

}  // extern "C"
