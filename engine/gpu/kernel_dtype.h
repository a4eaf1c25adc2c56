// The hand-written kernels' element type (kernels/kernel_types.h) of an engine
// DType, for the engine/gpu code that calls kernel launchers. Host-only.
#pragma once
#include "engine/dtype.h"
#include "engine/error.h"
#include "kernels/kernel_types.h"

namespace kestrel::gpu {

// f32, f16 or bf16; any other dtype raises a DTypeError naming the op and
// what the tensor is ("activations", "logits", "gradients").
inline kernels::KDType kernel_dtype(DType t, const char* op, const char* what) {
  switch (t) {
    case DType::F32: return kernels::KDType::F32;
    case DType::F16: return kernels::KDType::F16;
    case DType::BF16: return kernels::KDType::BF16;
    default: break;
  }
  throw DTypeError(detail::concat(op, ": the CUDA kernels take f32, f16 or bf16 ", what, ", got ", dtype_name(t)));
}

}  // namespace kestrel::gpu
