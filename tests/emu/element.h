// Scalar loads and stores by runtime element type, for the emulated cuBLAS
// and cuDNN (their loops run in f64 whatever the storage type).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <library_types.h>

#include <cstdint>

namespace kestrel::emu {

enum Element { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

// -1 for a type the emulator does not model.
inline int element_kind(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F: return kF32;
    case CUDA_R_16F: return kF16;
    case CUDA_R_16BF: return kBF16;
    case CUDA_R_64F: return kF64;
    default: return -1;
  }
}

inline double load_element(const void* p, int kind, int64_t i) {
  switch (kind) {
    case kF32: return static_cast<const float*>(p)[i];
    case kF16: return __half2float(static_cast<const __half*>(p)[i]);
    case kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const double*>(p)[i];
  }
}

inline void store_element(void* p, int kind, int64_t i, double v) {
  switch (kind) {
    case kF32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case kF16: static_cast<__half*>(p)[i] = __float2half_rn(static_cast<float>(v)); break;
    case kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(static_cast<float>(v)); break;
    default: static_cast<double*>(p)[i] = v; break;
  }
}

}  // namespace kestrel::emu
