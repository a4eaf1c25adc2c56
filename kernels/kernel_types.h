// Plain types shared by every kernel launcher: the element type tag, the
// activation tag, and the launcher status. Nothing here knows an engine type;
// engine/cuda maps kestrel::DType / kestrel::Activation onto these by value.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

// Shape-struct helpers are callable from host and device code.
#ifdef __CUDACC__
#define KESTREL_HD __host__ __device__
#else
#define KESTREL_HD
#endif

namespace kestrel::kernels {

// Floating element types the hand-written kernels accept. Accumulation is f32.
enum class KDType : int { F32 = 0, F16 = 1, BF16 = 2 };

inline int kdtype_size(KDType t) { return t == KDType::F32 ? 4 : 2; }
inline const char* kdtype_name(KDType t) {
  return t == KDType::F32 ? "f32" : (t == KDType::F16 ? "f16" : "bf16");
}

// Same order as kestrel::Activation (engine/ops/elementwise.h), so the engine
// converts with a static_cast; tests/test_cuda_kernels.cpp pins the order.
enum class KAct : int { None = 0, ReLU, ReLU6, Sigmoid, Tanh, SiLU, HardSwish, HardSigmoid, GELU };

}  // namespace kestrel::kernels
