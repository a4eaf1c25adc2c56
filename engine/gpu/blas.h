// Row-major GEMM on CUDA through cuBLAS, mirroring engine/cpu/gemm.h.
//
// One cuBLAS handle per thread and device, created on first use and bound to
// engine/cuda's current stream on every call. f32 runs in strict f32 unless
// TF32 is switched on (KESTREL_TF32=1 at first use, or set_tf32_enabled);
// f16 and bf16 multiply with f32 accumulation; f64 in f64.
// Compiled only with CUDA; written and compiled, untested on GPU at the time
// of writing.
#pragma once
#include <cstdint>

#include "engine/dtype.h"

namespace kestrel::gpu {

// TF32 tensor cores for f32 GEMMs and convolutions. Off by default so CUDA
// results match the CPU within the f32 tolerance.
bool tf32_enabled();
void set_tf32_enabled(bool on);

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C on cuda:`device`,
// on its current stream. Row-major with leading dimensions lda, ldb, ldc (elements);
// op(X) = X^T when trans_x. A, B, C are device pointers of `dtype` (f32, f16,
// bf16, f64). `op` names the calling op in errors.
void gemm(int device, DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const void* A, int64_t lda, const void* B, int64_t ldb, double beta, void* C, int64_t ldc, const char* op);

}  // namespace kestrel::gpu
