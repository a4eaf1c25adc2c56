// CUDA reductions with the contracts of engine/cpu/reduce.h, plus the
// scatter of max()'s backward. f32, f64, f16, bf16; sums accumulate in f32
// (f64 for f64) in a fixed order that depends only on the shape, never on the
// device or launch configuration, so results are reproducible run to run.
#pragma once
#include "engine/tensor.h"

namespace kestrel::gpu {

// x viewed as [outer, inner] rows (contiguous): out[o] = sum of the row.
void sum_rows(const Tensor& x, int64_t outer, int64_t inner, const Tensor& out);
// x viewed as [rows, cols] (contiguous): out[c] = sum over rows.
void sum_cols(const Tensor& x, int64_t rows, int64_t cols, const Tensor& out);
// x viewed as [outer, n, inner] (contiguous): max over n, with the index of
// the first maximum (NaN handling as the CPU: a NaN wins only at index 0).
void max_mid(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& values, const Tensor& indices);
// grad_in (contiguous [outer, n, inner], already zero) at (o, indices[o, i], i)
// = grad[o, i]; grad contiguous [outer, inner], indices i64 [outer, inner].
void max_backward_scatter(const Tensor& grad, const Tensor& indices, int64_t outer, int64_t n, int64_t inner,
                          const Tensor& grad_in);

}  // namespace kestrel::gpu
