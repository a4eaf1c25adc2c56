// Device-side scalar helpers for engine/gpu/*.cu: the device type of each
// DType, conversions that mirror engine/cpu/scalar_cast.h value for value,
// the math type (f32 for f32/f16/bf16, f64 for f64), products that are never
// fused into an FMA (so f32 results round like the CPU's), and launch
// plumbing (grid size, checked launches). Only .cu files include this.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "engine/cuda/runtime.h"
#include "engine/dtype.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

template <typename T>
struct DevTag {
  using type = T;
};
#define KESTREL_DEV_SCALAR(tag) typename decltype(tag)::type

// f(DevTag<T>{}) with T the device element type of `t`.
template <typename F>
void dispatch_all_dev(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(DevTag<float>{}); return;
    case DType::F64: f(DevTag<double>{}); return;
    case DType::F16: f(DevTag<__half>{}); return;
    case DType::BF16: f(DevTag<__nv_bfloat16>{}); return;
    case DType::I32: f(DevTag<int32_t>{}); return;
    case DType::I64: f(DevTag<int64_t>{}); return;
    case DType::U8: f(DevTag<uint8_t>{}); return;
    case DType::I8: f(DevTag<int8_t>{}); return;
  }
}

// Floating dtypes only; others raise a DTypeError naming the op.
template <typename F>
void dispatch_float_dev(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: f(DevTag<float>{}); return;
    case DType::F64: f(DevTag<double>{}); return;
    case DType::F16: f(DevTag<__half>{}); return;
    case DType::BF16: f(DevTag<__nv_bfloat16>{}); return;
    default: break;
  }
  throw DTypeError(std::string(op) + ": CUDA tensors of dtype " + dtype_name(t) +
                   " are not supported (f32, f64, f16, bf16 are)");
}

// Unsigned integer of the same width, for copies and fills that move bits.
template <size_t Bytes> struct BitsOf;
template <> struct BitsOf<1> { using type = uint8_t; };
template <> struct BitsOf<2> { using type = uint16_t; };
template <> struct BitsOf<4> { using type = uint32_t; };
template <> struct BitsOf<8> { using type = uint64_t; };

template <typename T>
constexpr bool is_reduced_float = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Arithmetic type of T: f16/bf16 compute in f32, f64 in f64.
template <typename T>
using MathT = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
__device__ __forceinline__ MathT<T> to_math(T v) {
  if constexpr (std::is_same_v<T, __half>)
    return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(v);
  else
    return v;
}

template <typename T>
__device__ __forceinline__ T from_math(MathT<T> v) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else
    return v;
}

// ---- conversions, value for value as cpu::cast_value
template <typename T>
__device__ __forceinline__ double to_double(T v) {
  if constexpr (is_reduced_float<T>)
    return static_cast<double>(to_math(v));
  else
    return static_cast<double>(v);
}

template <typename T>
__device__ __forceinline__ T from_double(double v) {
  if constexpr (is_reduced_float<T>)
    return from_math<T>(static_cast<float>(v));  // via f32, as the CPU's Half(float(v))
  else
    return static_cast<T>(v);
}

template <typename D, typename S>
__device__ __forceinline__ D cast_value(S v) {
  if constexpr (std::is_same_v<D, S>)
    return v;
  else if constexpr (std::is_same_v<S, float> && is_reduced_float<D>)
    return from_math<D>(v);
  else if constexpr (std::is_same_v<D, float> && is_reduced_float<S>)
    return to_math(v);
  else
    return from_double<D>(to_double(v));
}

// ---- arithmetic helpers
// a * b rounded on its own: never contracted into an FMA with a following add.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// std::max / std::min semantics (NaN in `a` propagates), unlike fmaxf/fminf.
template <typename M>
__device__ __forceinline__ M std_max(M a, M b) {
  return a < b ? b : a;
}
template <typename M>
__device__ __forceinline__ M std_min(M a, M b) {
  return b < a ? b : a;
}

// ---- launches
constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` items (results never depend on it).
inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

// for (i over [0, n)) as a grid-stride loop.
#define KESTREL_GRID_LOOP(i, n)                                                                    \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);           \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Device of a tensor, made current for the scope, and its current stream.
struct OnDevice {
  explicit OnDevice(const Tensor& t) : guard(t.device().index), stream(cuda::current_stream(t.device().index)) {}
  cuda::DeviceGuard guard;
  cudaStream_t stream;
};

}  // namespace kestrel::gpu
