// CUDA pooling and bilinear resize on NHWC activations (f32, f16, bf16, f64),
// the same geometry and results as engine/cpu/pool.h. Tensors are contiguous
// and on one CUDA device; outputs are allocated by the caller. Every backward
// is a gather (one thread per input element sums the outputs that read it), so
// results are deterministic and need no atomics. Launches go on the current
// stream and do not synchronize. Compiles; untested on GPU at the time of writing.
#pragma once
#include "engine/cpu/pool.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

// argmax: i32, the flat index ih * w + iw of each output's chosen input.
void max_pool2d_forward(const cpu::PoolGeom& g, const Tensor& x, const Tensor& y, const Tensor& argmax);
void max_pool2d_backward(const cpu::PoolGeom& g, const Tensor& gy, const Tensor& argmax, const Tensor& gx);

void avg_pool2d_forward(const cpu::PoolGeom& g, bool count_include_pad, const Tensor& x, const Tensor& y);
void avg_pool2d_backward(const cpu::PoolGeom& g, bool count_include_pad, const Tensor& gy, const Tensor& gx);

// A 1x1 output (global pooling) runs a per-(n, c) reduction coalesced over C.
void adaptive_avg_pool2d_forward(const cpu::PoolGeom& g, const Tensor& x, const Tensor& y);
void adaptive_avg_pool2d_backward(const cpu::PoolGeom& g, const Tensor& gy, const Tensor& gx);

// Coordinate attention's poolings, y [n, h + w, 1, c] (cpu::coord_pool_forward's
// layout: the rows' means, then the columns'), and their one-pass gradient.
void coord_pool_forward(const cpu::PoolGeom& g, const Tensor& x, const Tensor& y);
void coord_pool_backward(const cpu::PoolGeom& g, const Tensor& gy, const Tensor& gx);

void resize_bilinear_forward(const cpu::PoolGeom& g, bool align_corners, const Tensor& x, const Tensor& y);
void resize_bilinear_backward(const cpu::PoolGeom& g, bool align_corners, const Tensor& gy, const Tensor& gx);

}  // namespace kestrel::gpu
