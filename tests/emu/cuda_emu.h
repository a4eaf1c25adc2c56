// A CPU emulator of the CUDA execution model, so the hand-written kernels in
// kernels/ run (slowly, exactly) on machines with no GPU.
//
// tools/cuda_emu_translate.py rewrites each .cu file's launches and dynamic
// shared memory; this header, force-included, supplies the rest:
//  - every thread of a block is a fiber; blocks run one after another, so a
//    function-local `static` is the block's shared memory;
//  - __syncthreads() and the warp shuffles are barriers between fibers. The
//    fibers between two barriers run one at a time to the next barrier, in
//    forward order in even blocks and reverse order in odd ones, so a read of
//    shared memory that lacks its barrier sees a stale value and fails a test;
//  - a barrier that some threads can never reach (divergent __syncthreads, a
//    shuffle over exited lanes) or a bad launch configuration fails the launch
//    with a message, as the hardware would fail or hang;
//  - device memory is host memory from cudaMalloc, NaN-filled on allocation,
//    each buffer ending at a guard page, so a read past its end crashes;
//  - stream capture (CUDA graphs): work queued on a capturing stream is
//    recorded and runs at each cudaGraphLaunch (enqueue below).
// What it does not model: concurrency between blocks (they never overlap),
// memory ordering, timing, and warp-synchronous code without shuffles.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace kestrel::emu {

struct Launch {
  const char* kernel;
  dim3 grid, block;
  size_t shared_bytes;
};

extern uint3 block_idx;
extern dim3 block_dim, grid_dim;
const uint3& thread_idx();
// __syncthreads; returns how many threads of the block passed a true predicate.
int sync_block(bool predicate = false);
// Lane `lane ^ lane_mask`'s copy of the bytes at v, after every lane of the
// warp has offered its own.
void shuffle_xor(void* v, size_t bytes, unsigned mask, int lane_mask);
unsigned char* dynamic_shared();

// Runs body(ctx) once per thread of the grid; records the error a real launch
// would raise (read by cudaGetLastError).
void run(const Launch& launch, void (*body)(void*), void* ctx);
// The error of the last failed launch (cleared when `clear`), and its message.
cudaError_t launch_error(bool clear);
const char* launch_error_message();
// How often the host has waited for the device so far: stream, event and
// device synchronizations, and copies from device to host. Tests read it to
// prove a step queues its work without waiting.
int64_t host_waits();
// Cross-stream ordering as it was queued, for code that uses a side stream:
// every stream runs at once here, so a missing wait cannot fail a comparison.
// The log holds each NCCL collective with its stream, and each wait of one
// stream for an event recorded on another; take_stream_log() empties it.
struct StreamLogEntry {
  enum Kind { kCollective, kWait } kind;
  cudaStream_t stream;  // the collective's, or the waiting one
  cudaStream_t waited;  // kWait: where the event was recorded
};
std::vector<StreamLogEntry> take_stream_log();
void log_collective(cudaStream_t stream);

// Runs `work` now, or records it into the graph being captured on `stream`
// (cudaStreamBeginCapture). Returns the error that refuses it, which also
// fails the capture: work on the legacy stream while a stream captures (on a
// GPU it would run once, uncaptured, or fail). Every queued operation (kernel
// launches, async copies and memsets, cuBLAS and cuDNN calls) goes through it.
cudaError_t enqueue(cudaStream_t stream, std::function<void()> work);
// Whether `stream` is capturing (cudaStreamIsCapturing).
bool capturing(cudaStream_t stream);

template <typename... P>
class Launcher {
 public:
  Launcher(void (*kernel)(P...), Launch launch, cudaStream_t stream)
      : kernel_(kernel), launch_(launch), stream_(stream) {}
  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    struct Call {
      void (*kernel)(P...);
      std::tuple<P...> args;
    } call{kernel_, std::tuple<P...>(static_cast<P>(std::forward<A>(args))...)};
    // The error of a refused launch is cudaGetLastError's, as on a GPU.
    (void)enqueue(stream_, [launch = launch_, call]() mutable {
      run(launch, [](void* c) {
        auto* k = static_cast<Call*>(c);
        std::apply(k->kernel, k->args);  // each thread gets its own copies of the arguments
      }, &call);
    });
  }

 private:
  void (*kernel_)(P...);
  Launch launch_;
  cudaStream_t stream_;
};

template <typename... P>
Launcher<P...> launch(void (*kernel)(P...), const char* name, dim3 grid, dim3 block, size_t shared_bytes = 0,
                      cudaStream_t stream = nullptr) {
  return Launcher<P...>(kernel, Launch{name, grid, block, shared_bytes}, stream);
}

}  // namespace kestrel::emu

#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx (::kestrel::emu::thread_idx())
#define blockIdx (::kestrel::emu::block_idx)
#define blockDim (::kestrel::emu::block_dim)
#define gridDim (::kestrel::emu::grid_dim)
#define __syncthreads() ::kestrel::emu::sync_block()
inline int __syncthreads_count(int predicate) { return ::kestrel::emu::sync_block(predicate != 0); }
inline int __syncthreads_or(int predicate) { return __syncthreads_count(predicate) > 0; }
inline int __syncthreads_and(int predicate) {
  return __syncthreads_count(predicate) == static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T>);
  ::kestrel::emu::shuffle_xor(&v, sizeof(T), mask, lane_mask);
  return v;
}

// CUDA's integer min/max overloads (device code calls them unqualified).
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return a < b ? a : b;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

using std::isfinite;
using std::isinf;
using std::isnan;

// Device intrinsics whose host twins are the exact libm functions.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// Rounded single operations (the device never fuses them into an FMA).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __int_as_float(int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
