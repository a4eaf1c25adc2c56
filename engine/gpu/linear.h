// Row broadcasts and column sums on CUDA: the bias halves of linear and
// convolution (NHWC activations are [rows, channels] matrices).
// Compiled only with CUDA; written and compiled, untested on GPU at the time
// of writing.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace kestrel::gpu {

// Every row of `out` (contiguous, numel a multiple of row.numel()) becomes
// `row` (contiguous, same dtype and device). `op` names the caller in errors.
void broadcast_rows(const Tensor& row, const Tensor& out, const char* op);

// [cols] tensor with out[c] = sum over r of a[r, c], for a contiguous `a`
// read as [a.numel() / cols, cols]. Accumulates in f32 (f64 for f64) in a
// fixed order: deterministic.
Tensor column_sums(const Tensor& a, int64_t cols, const char* op);

}  // namespace kestrel::gpu
