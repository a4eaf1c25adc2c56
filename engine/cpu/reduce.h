#pragma once
#include <vector>

#include "engine/tensor.h"

namespace kestrel::cpu {

// x viewed as [outer, inner] rows (contiguous): out[o] = sum of the row.
void sum_rows(const Tensor& x, int64_t outer, int64_t inner, const Tensor& out);
// x viewed as [rows, cols] (contiguous): out[c] = sum over rows.
void sum_cols(const Tensor& x, int64_t rows, int64_t cols, const Tensor& out);
// x viewed as [outer, n, inner] (contiguous): out[o, i] = sum over n.
void sum_mid(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out);
// x viewed as [outer, n, inner]: max over n, with the index of the first maximum.
void max_mid(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& values, const Tensor& indices);

}  // namespace kestrel::cpu
