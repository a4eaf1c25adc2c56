// Device-side scalar helpers for engine/gpu/*.cu: the device type of each
// DType and the dispatch on it, conversions that mirror engine/cpu/scalar_cast.h
// value for value, the math type (f32 for f32/f16/bf16, f64 for f64: what
// kernels compute and accumulate in), operations that are never fused into an
// FMA (so f32 results round like the CPU's), and launch plumbing (grid size,
// device and stream of a tensor, checked launches). Only .cu files include this.
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

// ---- dispatch: f(TypeTag<T>{}) as dispatch_all / dispatch_float in
// engine/dtype.h, with T the device type (__half, __nv_bfloat16 for f16, bf16).
// Inside the lambda, KESTREL_SCALAR(tag) names T.

// Every dtype.
template <typename F>
void dispatch_all_dev(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(TypeTag<float>{}); return;
    case DType::F64: f(TypeTag<double>{}); return;
    case DType::F16: f(TypeTag<__half>{}); return;
    case DType::BF16: f(TypeTag<__nv_bfloat16>{}); return;
    case DType::I32: f(TypeTag<int32_t>{}); return;
    case DType::I64: f(TypeTag<int64_t>{}); return;
    case DType::U8: f(TypeTag<uint8_t>{}); return;
    case DType::I8: f(TypeTag<int8_t>{}); return;
  }
}

// Floating dtypes only; others raise a DTypeError naming the op.
template <typename F>
void dispatch_float_dev(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: f(TypeTag<float>{}); return;
    case DType::F64: f(TypeTag<double>{}); return;
    case DType::F16: f(TypeTag<__half>{}); return;
    case DType::BF16: f(TypeTag<__nv_bfloat16>{}); return;
    default: break;
  }
  throw DTypeError(std::string(op) + ": CUDA tensors of dtype " + dtype_name(t) +
                   " are not supported (f32, f64, f16, bf16 are)");
}

// f(TypeTag<B>{}) with B the unsigned integer of `width` bytes (1, 2, 4 or 8),
// for copies and fills that move bits.
template <typename F>
void dispatch_bits(size_t width, F&& f) {
  switch (width) {
    case 1: f(TypeTag<uint8_t>{}); return;
    case 2: f(TypeTag<uint16_t>{}); return;
    case 4: f(TypeTag<uint32_t>{}); return;
    default: f(TypeTag<uint64_t>{}); return;
  }
}

// ---- the math type and conversions
template <typename T>
constexpr bool is_reduced_float = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Arithmetic type of T: f16/bf16 compute in f32, f64 in f64.
template <typename T>
using MathT = std::conditional_t<std::is_same_v<T, double>, double, float>;

// The DType of MathT for tensors of dtype t (workspaces, saved statistics).
inline DType math_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

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

// Value for value as cpu::cast_value.
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

// ---- arithmetic rounded operation by operation: never contracted into an
// FMA with a neighbouring add or multiply.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

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

// Blocks of `threads` for a grid-stride loop over `work` items (results never depend on it).
inline unsigned grid_for(int64_t work, int threads = kThreads) {
  const int64_t blocks = (work + threads - 1) / threads;
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

// Typed device pointer of a contiguous tensor.
template <typename T>
T* device_ptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Typed device pointer, or null for an undefined tensor.
template <typename T>
T* device_ptr_or_null(const Tensor& t) {
  return t.defined() ? device_ptr<T>(t) : nullptr;
}

// Raises DeviceError naming the op and the tensor when the last launch failed.
inline void check_launch(const char* op, const Tensor& x) {
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
}

// The usual op launch: on t's device and current stream, f(tag, stream) with
// tag the device type of t's floating dtype, then the launch is checked.
template <typename F>
void launch_float_dev(const Tensor& t, const char* op, F&& f) {
  OnDevice on(t);
  dispatch_float_dev(t.dtype(), op, [&](auto tag) { f(tag, on.stream); });
  check_launch(op, t);
}

}  // namespace kestrel::gpu
