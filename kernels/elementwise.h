// Vectorized elementwise kernels and reductions over contiguous buffers of n
// elements (f32, f16, bf16; arithmetic in f32). 16-byte vectors when the
// pointers are 16-byte aligned, scalar tail otherwise. Launchers return the
// launch status and do not synchronize. Compiles; untested on GPU at the time
// of writing.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

// y = act(x)            (y may alias x)
cudaError_t activation_forward(KDType dt, int64_t n, KAct act, const void* x, void* y, cudaStream_t stream);
// dx = dy * act'(x)     x is the pre-activation input (dx may alias dy)
cudaError_t activation_backward(KDType dt, int64_t n, KAct act, const void* dy, const void* x, void* dx,
                                cudaStream_t stream);
// y = alpha * x + beta * y
cudaError_t axpby(KDType dt, int64_t n, float alpha, const void* x, float beta, void* y, cudaStream_t stream);
// dst = src converted (round to nearest even)
cudaError_t cast(KDType src_dt, const void* src, KDType dst_dt, void* dst, int64_t n, cudaStream_t stream);
// *out (f32, device) = sum(x), deterministic two-pass; workspace of
// reduce_sum_workspace_bytes(n) bytes.
size_t reduce_sum_workspace_bytes(int64_t n);
cudaError_t reduce_sum(KDType dt, int64_t n, const void* x, float* out, void* workspace, cudaStream_t stream);
// *flag (i32, device) is set to 1 if any element is inf or nan; never cleared
// here, so one flag can collect many tensors (dynamic loss scaling).
cudaError_t find_nonfinite(KDType dt, int64_t n, const void* x, int* flag, cudaStream_t stream);

}  // namespace kestrel::kernels
