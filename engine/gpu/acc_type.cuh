// Element types of the engine's CUDA ops (pool, norm, loss): f32, f16, bf16
// and f64, each with an accumulation type (f32, or f64 for f64) and
// conversions, plus the host-side dtype dispatch and launch helpers. Only .cu
// files include this.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "engine/cuda/runtime.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Calls f(TypeTag<T>{}) with T the device element type of a floating dtype.
template <typename F>
void dispatch_device_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: f(TypeTag<float>{}); return;
    case DType::F64: f(TypeTag<double>{}); return;
    case DType::F16: f(TypeTag<__half>{}); return;
    case DType::BF16: f(TypeTag<__nv_bfloat16>{}); return;
    default: break;
  }
  throw DTypeError(detail::concat(op, ": CUDA path supports f32, f16, bf16 and f64, got ", dtype_name(t)));
}

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over `n` items.
inline unsigned grid_for(int64_t n, int block = kBlock) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + block - 1) / block, 1, int64_t{1} << 20));
}

// Typed device pointer of a contiguous tensor.
template <typename T>
T* device_ptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Raises DeviceError naming the op and shape when the last launch failed.
inline void check_launch(const char* op, const Tensor& x) {
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
}

}  // namespace kestrel::gpu
