// Elementwise kernels and reductions; see elementwise.h.
//
// Proof: tests/test_cuda_kernels.cpp compares each launcher with a CPU loop
// at sizes that exercise the vector body and the scalar tail (n = 1, 7, 33,
// 1000003) and misaligned pointers. Napkin math: activation forward reads and
// writes each element once: 2 * n * sizeof(T) bytes.
#include "kernels/elementwise.h"

#include <algorithm>

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kReduceBlocks = 1024;

unsigned blocks_for(int64_t work) {
  return static_cast<unsigned>(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, 65536));
}

// Applies f(i, vals) to every V-vector of the aligned body and to the scalar
// tail. Body: elements [0, nvec*V); tail: [nvec*V, n).
template <typename T, int V, typename F>
__device__ __forceinline__ void for_each_vec(int64_t n, F&& f) {
  const int64_t nvec = n / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = tid; i < nvec; i += stride) f.template body<V>(i * V);
  for (int64_t i = nvec * V + tid; i < n; i += stride) f.template body<1>(i);
}

template <typename T>
struct ActFwd {
  const T* x;
  T* y;
  KAct act;
  template <int V>
  __device__ void body(int64_t e) const {
    float v[V];
    load_f32<T, V>(x + e, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = act_forward(act, v[k]);
    store_f32<T, V>(y + e, v);
  }
};
template <typename T>
struct ActBwd {
  const T* dy;
  const T* x;
  T* dx;
  KAct act;
  template <int V>
  __device__ void body(int64_t e) const {
    float g[V], v[V];
    load_f32<T, V>(dy + e, g);
    load_f32<T, V>(x + e, v);
#pragma unroll
    for (int k = 0; k < V; ++k) g[k] *= act_derivative(act, v[k]);
    store_f32<T, V>(dx + e, g);
  }
};
template <typename T>
struct Axpby {
  const T* x;
  T* y;
  float a, b;
  template <int V>
  __device__ void body(int64_t e) const {
    float xv[V], yv[V];
    load_f32<T, V>(x + e, xv);
    if (b != 0.f) {
      load_f32<T, V>(y + e, yv);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) yv[k] = 0.f;  // beta == 0 ignores (possibly NaN) y
    }
#pragma unroll
    for (int k = 0; k < V; ++k) yv[k] = a * xv[k] + b * yv[k];
    store_f32<T, V>(y + e, yv);
  }
};
template <typename S, typename D>
struct Cast {
  const S* src;
  D* dst;
  template <int V>
  __device__ void body(int64_t e) const {
    float v[V];
    load_f32<S, V>(src + e, v);
    store_f32<D, V>(dst + e, v);
  }
};

template <typename T, int V, typename F>
__global__ void __launch_bounds__(kThreads) map_kernel(int64_t n, F f) {
  for_each_vec<T, V>(n, f);
}

// Vector width when every pointer is 16-byte aligned (all vectors then start
// at element multiples of V), else 1.
template <typename T>
bool all_aligned(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (p != nullptr && !aligned_to(p, 16)) return false;
  return true;
}

template <typename T, typename F>
cudaError_t launch_map(int64_t n, const F& f, std::initializer_list<const void*> ps, cudaStream_t st) {
  if (n <= 0) return cudaSuccess;
  constexpr int V = vec_width<T>();
  if (all_aligned<T>(ps)) {
    map_kernel<T, V, F><<<blocks_for(n / V + 1), kThreads, 0, st>>>(n, f);
  } else {
    map_kernel<T, 1, F><<<blocks_for(n), kThreads, 0, st>>>(n, f);
  }
  return cudaGetLastError();
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sum_partial_kernel(const T* __restrict__ x, int64_t n,
                                                               float* __restrict__ partial) {
  __shared__ float scratch[32];
  float acc = 0.f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc += to_f32(x[i]);
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads) sum_final_kernel(const float* __restrict__ partial, int count,
                                                             float* __restrict__ out) {
  __shared__ float scratch[32];
  float acc = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) *out = acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) nonfinite_kernel(const T* __restrict__ x, int64_t n, int* flag) {
  bool bad = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_f32(x[i]);
    bad |= !isfinite(v);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

}  // namespace

#define KESTREL_EW_DISPATCH(dt, CALL)                            \
  switch (dt) {                                                  \
    case KDType::F32: { using T = float; return CALL; }          \
    case KDType::F16: { using T = __half; return CALL; }         \
    case KDType::BF16: { using T = __nv_bfloat16; return CALL; } \
  }                                                              \
  return cudaErrorInvalidValue

cudaError_t activation_forward(KDType dt, int64_t n, KAct act, const void* x, void* y, cudaStream_t stream) {
  KESTREL_EW_DISPATCH(dt, (launch_map<T>(n, ActFwd<T>{static_cast<const T*>(x), static_cast<T*>(y), act}, {x, y},
                                         stream)));
}

cudaError_t activation_backward(KDType dt, int64_t n, KAct act, const void* dy, const void* x, void* dx,
                                cudaStream_t stream) {
  KESTREL_EW_DISPATCH(dt, (launch_map<T>(n,
                                         ActBwd<T>{static_cast<const T*>(dy), static_cast<const T*>(x),
                                                   static_cast<T*>(dx), act},
                                         {dy, x, dx}, stream)));
}

cudaError_t axpby(KDType dt, int64_t n, float alpha, const void* x, float beta, void* y, cudaStream_t stream) {
  KESTREL_EW_DISPATCH(dt, (launch_map<T>(n, Axpby<T>{static_cast<const T*>(x), static_cast<T*>(y), alpha, beta},
                                         {x, y}, stream)));
}

namespace {
template <typename S>
cudaError_t cast_from(const S* src, KDType dst_dt, void* dst, int64_t n, cudaStream_t st) {
  switch (dst_dt) {
    case KDType::F32: return launch_map<float>(n, Cast<S, float>{src, static_cast<float*>(dst)}, {src, dst}, st);
    case KDType::F16: return launch_map<float>(n, Cast<S, __half>{src, static_cast<__half*>(dst)}, {src, dst}, st);
    case KDType::BF16:
      return launch_map<float>(n, Cast<S, __nv_bfloat16>{src, static_cast<__nv_bfloat16*>(dst)}, {src, dst}, st);
  }
  return cudaErrorInvalidValue;
}
}  // namespace

cudaError_t cast(KDType src_dt, const void* src, KDType dst_dt, void* dst, int64_t n, cudaStream_t stream) {
  // Four elements per vector whatever the types (launch_map<float>): 16-byte
  // f32 accesses, 8-byte f16/bf16 accesses, both within the 16-byte alignment.
  KESTREL_EW_DISPATCH(src_dt, cast_from<T>(static_cast<const T*>(src), dst_dt, dst, n, stream));
}

namespace {
// Launchers that switch over the type without returning from every case
// check it first, so an unknown tag fails instead of launching nothing.
bool valid_dtype(KDType dt) { return dt == KDType::F32 || dt == KDType::F16 || dt == KDType::BF16; }
}  // namespace

size_t reduce_sum_workspace_bytes(int64_t) { return kReduceBlocks * sizeof(float); }

cudaError_t reduce_sum(KDType dt, int64_t n, const void* x, float* out, void* workspace, cudaStream_t stream) {
  if (workspace == nullptr || out == nullptr || !valid_dtype(dt)) return cudaErrorInvalidValue;
  const unsigned blocks = std::min<unsigned>(kReduceBlocks, blocks_for(std::max<int64_t>(n, 1)));
  float* partial = static_cast<float*>(workspace);
  switch (dt) {
    case KDType::F32: sum_partial_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(x), n, partial); break;
    case KDType::F16: sum_partial_kernel<__half><<<blocks, kThreads, 0, stream>>>(static_cast<const __half*>(x), n, partial); break;
    case KDType::BF16:
      sum_partial_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), n, partial);
      break;
  }
  sum_final_kernel<<<1, kThreads, 0, stream>>>(partial, static_cast<int>(blocks), out);
  return cudaGetLastError();
}

cudaError_t find_nonfinite(KDType dt, int64_t n, const void* x, int* flag, cudaStream_t stream) {
  if (flag == nullptr) return cudaErrorInvalidValue;
  if (n <= 0) return cudaSuccess;
  const unsigned blocks = std::min<unsigned>(4096, blocks_for(n));
  KESTREL_EW_DISPATCH(dt, (nonfinite_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), n, flag),
                           cudaGetLastError()));
}

}  // namespace kestrel::kernels
