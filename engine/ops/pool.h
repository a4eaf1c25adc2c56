// Pooling and resizing on NHWC activations.
#pragma once
#include "engine/tensor.h"

namespace kestrel {

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding);
// count_include_pad as PyTorch's default (true).
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding, bool count_include_pad = true);
// [N,H,W,C] -> [N,1,1,C]
Tensor global_avg_pool(const Tensor& x);
// PyTorch's adaptive bins; (H,1) and (1,W) are what coordinate attention uses.
Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w);
// Coordinate attention's poolings of x [N,H,W,C] as one [N,H+W,1,C] tensor:
// the mean of each row (adaptive_avg_pool2d(x, H, 1)), then of each column
// (adaptive_avg_pool2d(x, 1, W), transposed), concatenated. One pass over x
// (the backward one pass too), on the CPU and CUDA, when no trace names each
// layer; else those three ops, as a model's summary and ONNX export see them.
Tensor coord_pool(const Tensor& x);
// Bilinear resize, half-pixel centres (align_corners=false) as PyTorch's default.
Tensor resize_bilinear(const Tensor& x, int64_t out_h, int64_t out_w, bool align_corners = false);

}  // namespace kestrel
