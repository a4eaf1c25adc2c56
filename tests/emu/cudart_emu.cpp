// The CUDA runtime API calls Kestrel makes, for the CPU emulator: one device
// whose memory is host memory. Work is synchronous, so streams and events are
// tokens and every query reports completion, except on a capturing stream
// (CUDA graphs), whose work is recorded and replayed by cudaGraphLaunch, and
// a stream with a host function still running (cudaLaunchHostFunc): what lets
// a test hold a stream busy.
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
#include <future>
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

// Whether p lies in a buffer from cudaMalloc.
bool is_device_memory(const void* p) {
  std::lock_guard<std::mutex> lock(memory().mutex);
  auto it = memory().mappings.upper_bound(const_cast<void*>(p));
  if (it == memory().mappings.begin()) return false;
  --it;
  const auto* end = static_cast<const unsigned char*>(it->second.base) + it->second.length;
  return static_cast<const unsigned char*>(p) < end;
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
  std::vector<std::shared_future<void>> after;  // host functions queued before the record
};

// Host functions run at once on their own threads; the stream they were
// queued on counts as busy until they return.
std::mutex host_function_mutex;
std::map<cudaStream_t, std::vector<std::shared_future<void>>> host_functions;

std::vector<std::shared_future<void>> running_host_functions(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(host_function_mutex);
  auto& queued = host_functions[stream];
  queued.erase(std::remove_if(queued.begin(), queued.end(),
                              [](const std::shared_future<void>& f) {
                                return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
                              }),
               queued.end());
  return queued;
}

bool all_returned(const std::vector<std::shared_future<void>>& functions) {
  return std::all_of(functions.begin(), functions.end(), [](const std::shared_future<void>& f) {
    return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  });
}

void wait_for(const std::vector<std::shared_future<void>>& functions) {
  for (const auto& f : functions) f.wait();
}

std::mutex stream_log_mutex;
std::vector<kestrel::emu::StreamLogEntry> stream_log;
void append_to_stream_log(kestrel::emu::StreamLogEntry entry) {
  std::lock_guard<std::mutex> lock(stream_log_mutex);
  stream_log.push_back(entry);
}

std::atomic<int64_t> host_wait_count{0};
void count_host_wait() { host_wait_count.fetch_add(1, std::memory_order_relaxed); }

// ---- stream capture. A capture that met a refused call is invalidated:
// cudaStreamEndCapture then fails, as on a GPU.
struct Capture {
  cudaGraph_t graph = nullptr;
  bool invalidated = false;
};
std::mutex capture_mutex;
std::map<cudaStream_t, Capture> captures;

bool is_legacy(cudaStream_t stream) { return stream == nullptr || stream == cudaStreamLegacy; }

// Fails every capture in progress with `e` (the refused call's error).
cudaError_t refuse_during_capture(cudaError_t e) {
  for (auto& [stream, capture] : captures) capture.invalidated = true;
  return fail(e);
}

// Called with capture_mutex held; cudaSuccess when nothing captures.
cudaError_t refuse_if_capturing(cudaError_t e) { return captures.empty() ? cudaSuccess : refuse_during_capture(e); }

// The error a wait for `stream` meets while captures are in progress: waiting
// for a capturing stream is refused, and so is the legacy stream's implicit
// wait for every stream. cudaSuccess when nothing captures.
cudaError_t wait_refusal(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(capture_mutex);
  if (captures.empty()) return cudaSuccess;
  if (captures.count(stream) != 0) return refuse_during_capture(cudaErrorStreamCaptureUnsupported);
  if (is_legacy(stream)) return refuse_during_capture(cudaErrorStreamCaptureImplicit);
  return cudaSuccess;
}


}  // namespace

struct CUgraph_st {
  std::vector<std::function<void()>> work;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> work;
};

cudaError_t kestrel::emu::enqueue(cudaStream_t stream, std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(capture_mutex);
    if (!captures.empty()) {
      auto it = captures.find(stream);
      if (it != captures.end()) {
        if (!it->second.invalidated) it->second.graph->work.push_back(std::move(work));
        return it->second.invalidated ? fail(cudaErrorStreamCaptureInvalidated) : cudaSuccess;
      }
      if (is_legacy(stream)) return refuse_during_capture(cudaErrorStreamCaptureImplicit);
    }
  }
  work();
  return cudaSuccess;
}

bool kestrel::emu::capturing(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(capture_mutex);
  return captures.count(stream) != 0;
}

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
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
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
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
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
  {
    std::lock_guard<std::mutex> lock(capture_mutex);
    if (const cudaError_t e = refuse_if_capturing(cudaErrorStreamCaptureUnsupported); e != cudaSuccess) return e;
  }
  std::vector<cudaStream_t> streams;
  {
    std::lock_guard<std::mutex> lock(host_function_mutex);
    for (const auto& [stream, functions] : host_functions) streams.push_back(stream);
  }
  for (cudaStream_t stream : streams) wait_for(running_host_functions(stream));
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

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t e = wait_refusal(stream); e != cudaSuccess) return e;
  wait_for(running_host_functions(stream));
  count_host_wait();
  return kestrel::emu::launch_error(false);
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (const cudaError_t e = wait_refusal(stream); e != cudaSuccess) return e;
  return running_host_functions(stream).empty() ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  std::lock_guard<std::mutex> lock(host_function_mutex);
  host_functions[stream].push_back(std::async(std::launch::async, fn, user_data).share());
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  const cudaStream_t recorded_on = reinterpret_cast<EmuEvent*>(event)->recorded_on;
  if (recorded_on != stream) append_to_stream_log({kestrel::emu::StreamLogEntry::kWait, stream, recorded_on});
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  *event = reinterpret_cast<cudaEvent_t>(new EmuEvent{std::chrono::steady_clock::now(), nullptr, {}});
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<EmuEvent*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  reinterpret_cast<EmuEvent*>(event)->at = std::chrono::steady_clock::now();
  reinterpret_cast<EmuEvent*>(event)->recorded_on = stream;
  reinterpret_cast<EmuEvent*>(event)->after = running_host_functions(stream);
  return cudaSuccess;
}

// An event last recorded on a stream that is still capturing is a node of
// the graph, not a point in time: querying or waiting for it is refused.
cudaError_t cudaEventQuery(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(capture_mutex);
  const auto* e = reinterpret_cast<EmuEvent*>(event);
  if (captures.count(e->recorded_on) == 0) return all_returned(e->after) ? cudaSuccess : cudaErrorNotReady;
  return refuse_during_capture(cudaErrorStreamCaptureUnsupported);
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  wait_for(reinterpret_cast<EmuEvent*>(event)->after);
  if (const cudaError_t e = cudaEventQuery(event); e != cudaSuccess) return e;
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

// cudaFree waits for the device: refused while a stream captures (a graph's
// memory must outlive it; engine/cuda's allocator defers such frees).
cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(capture_mutex);
    if (const cudaError_t e = refuse_if_capturing(cudaErrorStreamCaptureUnsupported); e != cudaSuccess) return e;
  }
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

// Synchronous copies and memsets run on the legacy stream: refused while a stream captures.
// A zero-byte copy is valid CUDA even with null pointers; memmove's are not.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  {
    std::lock_guard<std::mutex> lock(capture_mutex);
    if (const cudaError_t e = refuse_if_capturing(cudaErrorStreamCaptureImplicit); e != cudaSuccess) return e;
  }
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault) count_host_wait();
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

// A captured copy with a host side would read or write that host memory again
// at every replay, long after the caller reused it: the emulator refuses it
// (a GPU accepts pinned memory; Kestrel's graphs copy device to device only).
static cudaError_t refuse_host_copy_in_capture(const void* dst, const void* src, size_t count, cudaStream_t stream) {
  if (count == 0 || !kestrel::emu::capturing(stream) || (is_device_memory(dst) && is_device_memory(src)))
    return cudaSuccess;
  std::lock_guard<std::mutex> lock(capture_mutex);
  return refuse_during_capture(cudaErrorStreamCaptureUnsupported);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (const cudaError_t e = refuse_host_copy_in_capture(dst, src, count, stream); e != cudaSuccess) return e;
  if (kind == cudaMemcpyDeviceToHost && !kestrel::emu::capturing(stream)) count_host_wait();
  return kestrel::emu::enqueue(stream, [=] {
    if (count > 0) std::memmove(dst, src, count);
  });
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t stream) {
  if (width > dpitch || width > spitch) return fail(cudaErrorInvalidPitchValue);
  if (const cudaError_t e = refuse_host_copy_in_capture(dst, src, width * height, stream); e != cudaSuccess) return e;
  return kestrel::emu::enqueue(stream, [=] {
    for (size_t r = 0; r < height; ++r)
      std::memmove(static_cast<unsigned char*>(dst) + r * dpitch, static_cast<const unsigned char*>(src) + r * spitch,
                   width);
  });
}

cudaError_t cudaMemcpyPeerAsync(void* dst, int, const void* src, int, size_t count, cudaStream_t stream) {
  return kestrel::emu::enqueue(stream, [=] { std::memmove(dst, src, count); });
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  {
    std::lock_guard<std::mutex> lock(capture_mutex);
    if (const cudaError_t e = refuse_if_capturing(cudaErrorStreamCaptureImplicit); e != cudaSuccess) return e;
  }
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  return kestrel::emu::enqueue(stream, [=] { std::memset(ptr, value, count); });
}

cudaError_t cudaMemset2DAsync(void* ptr, size_t pitch, int value, size_t width, size_t height, cudaStream_t stream) {
  if (width > pitch) return fail(cudaErrorInvalidValue);
  return kestrel::emu::enqueue(stream, [=] {
    for (size_t r = 0; r < height; ++r) std::memset(static_cast<unsigned char*>(ptr) + r * pitch, value, width);
  });
}

// ---- CUDA graphs from stream capture (relaxed mode's rules; see enqueue)
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (is_legacy(stream)) return fail(cudaErrorStreamCaptureUnsupported);
  std::lock_guard<std::mutex> lock(capture_mutex);
  if (captures.count(stream) != 0) return fail(cudaErrorIllegalState);
  captures[stream] = Capture{new CUgraph_st, false};
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  std::lock_guard<std::mutex> lock(capture_mutex);
  auto it = captures.find(stream);
  if (it == captures.end()) return fail(cudaErrorIllegalState);
  const Capture capture = it->second;
  captures.erase(it);
  if (capture.invalidated) {
    delete capture.graph;
    *graph = nullptr;
    return fail(cudaErrorStreamCaptureInvalidated);
  }
  *graph = capture.graph;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  *status = kestrel::emu::capturing(stream) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (graph == nullptr) return fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->work};
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return fail(cudaErrorInvalidValue);
  return kestrel::emu::enqueue(stream, [exec] {
    for (const std::function<void()>& work : exec->work) work();
  });
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

}  // extern "C"
