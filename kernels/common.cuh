// Device-side helpers used by every kernel file: element conversions, packed
// 16-byte vectors along channels, activations and their derivatives, warp and
// Welford reductions. Only .cu files include this.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

// Dynamic shared memory a launch may take without cudaFuncSetAttribute.
constexpr size_t kDefaultDynamicSharedBytes = 48 * 1024;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// V elements of T loaded or stored as one instruction (16 bytes when
// V * sizeof(T) == 16). Callers guarantee the alignment.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ void load_f32(const T* p, float (&out)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = to_f32(pk.v[i]);
}

template <typename T, int V>
__device__ __forceinline__ void store_f32(T* p, const float (&in)[V]) {
  Pack<T, V> pk;
#pragma unroll
  for (int i = 0; i < V; ++i) pk.v[i] = from_f32<T>(in[i]);
  *reinterpret_cast<Pack<T, V>*>(p) = pk;
}

// 16-byte vector width for T.
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

__device__ __forceinline__ float act_forward(KAct a, float x) {
  switch (a) {
    case KAct::None: return x;
    case KAct::ReLU: return x > 0.f ? x : 0.f;
    case KAct::ReLU6: return fminf(fmaxf(x, 0.f), 6.f);
    case KAct::Sigmoid: return 1.f / (1.f + __expf(-x));
    case KAct::Tanh: return tanhf(x);
    case KAct::SiLU: return x / (1.f + __expf(-x));
    case KAct::HardSwish: return x * fminf(fmaxf(x + 3.f, 0.f), 6.f) * (1.f / 6.f);
    case KAct::HardSigmoid: return fminf(fmaxf(x + 3.f, 0.f), 6.f) * (1.f / 6.f);
    case KAct::GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
  }
  return x;
}

// d act(x) / dx, evaluated at the pre-activation x. Kinks take the
// derivative from the right-open side, as PyTorch: relu'(0) = 0,
// relu6'(6) = 0, hardswish'(-3) = -0.5 ... matches torch's threshold choices.
__device__ __forceinline__ float act_derivative(KAct a, float x) {
  switch (a) {
    case KAct::None: return 1.f;
    case KAct::ReLU: return x > 0.f ? 1.f : 0.f;
    case KAct::ReLU6: return (x > 0.f && x < 6.f) ? 1.f : 0.f;
    case KAct::Sigmoid: {
      const float s = 1.f / (1.f + __expf(-x));
      return s * (1.f - s);
    }
    case KAct::Tanh: {
      const float t = tanhf(x);
      return 1.f - t * t;
    }
    case KAct::SiLU: {
      const float s = 1.f / (1.f + __expf(-x));
      return s * (1.f + x * (1.f - s));
    }
    case KAct::HardSwish:
      if (x < -3.f) return 0.f;
      if (x > 3.f) return 1.f;
      return (2.f * x + 3.f) * (1.f / 6.f);
    case KAct::HardSigmoid: return (x > -3.f && x < 3.f) ? (1.f / 6.f) : 0.f;
    case KAct::GELU: {
      const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
      const float pdf = 0.39894228040143268f * __expf(-0.5f * x * x);
      return cdf + x * pdf;
    }
  }
  return 1.f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a 1-D block of blockDim.x threads (a multiple of 32, <= 1024);
// every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// Welford running statistics; merge() is Chan et al.'s parallel combination.
struct Welford {
  float mean = 0.f, m2 = 0.f, count = 0.f;
  __device__ __forceinline__ void add(float x) {
    count += 1.f;
    const float d = x - mean;
    mean += d / count;
    m2 += d * (x - mean);
  }
  __device__ __forceinline__ void merge(float omean, float om2, float ocount) {
    if (ocount == 0.f) return;
    const float n = count + ocount;
    const float d = omean - mean;
    mean += d * (ocount / n);
    m2 += om2 + d * d * (count * ocount / n);
    count = n;
  }
};

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// True when p is aligned to `bytes`.
inline bool aligned_to(const void* p, int bytes) {
  return (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes)) == 0;
}

}  // namespace kestrel::kernels

// Kernels whose weights come in the activation type or in f32: returns
// CALL(activation type, parameter type) for every accepted pair, else
// cudaErrorInvalidValue.
#define KESTREL_ACT_PARAM_DISPATCH(dt, param_dt, CALL)                              \
  switch (dt) {                                                                     \
    case KDType::F32: return CALL(float, float);                                    \
    case KDType::F16:                                                               \
      return param_dt == KDType::F32 ? CALL(__half, float) : CALL(__half, __half); \
    case KDType::BF16:                                                              \
      return param_dt == KDType::F32 ? CALL(__nv_bfloat16, float)                   \
                                     : CALL(__nv_bfloat16, __nv_bfloat16);          \
  }                                                                                 \
  return cudaErrorInvalidValue
