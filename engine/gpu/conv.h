// 2-D convolution on CUDA: NHWC activations, OHWI weights (engine/ops/conv.h).
//
//   depthwise (groups == C_in == C_out, kernel <= 7, f32/f16/bf16)
//       -> the hand-written kernels in kernels/depthwise_conv.h
//   1x1, stride 1, no padding, one group -> one cuBLAS GEMM over [N*H*W, C_in]
//   everything else -> cuDNN (NHWC tensors and filters), the algorithm chosen
//       once per (device, shape, dtype, direction, math mode) and cached
// Bias forward: the output is filled with the bias and the convolution adds
// onto it; bias gradient: column sums of gy read as [N*OH*OW, C_out].
// Without cuDNN at build time the cuDNN cases raise DeviceError.
// Compiled only with CUDA; written and compiled, untested on GPU at the time
// of writing.
#pragma once
#include <cstdint>

#include "engine/cpu/conv.h"
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

// Inputs contiguous, on one CUDA device, one floating dtype; bias may be
// undefined. On the depthwise path x may be a channel slice of a wider tensor
// (g.x_pixel_stride, evenly spaced pixels), here and in conv2d_backward_params.
Tensor conv2d_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, const Tensor& bias);
// act(depthwise conv + bias) in one kernel, the activation in its epilogue
// (inference: no gradient). The depthwise path only (conv2d_path).
Tensor depthwise_forward_act(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, const Tensor& bias,
                             Activation act);
// d(loss)/dx [n, h, w, c_in] from gy [n, oh, ow, c_out].
Tensor conv2d_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w);

struct ConvParamGrads {
  Tensor weight;  // [c_out, kh, kw, c_in / groups], defined when asked for
  Tensor bias;    // [c_out], defined when asked for
};
// x is only read when want_weight.
ConvParamGrads conv2d_backward_params(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, bool want_weight,
                                      bool want_bias);

enum class ConvPath { Depthwise, Gemm, Cudnn };
ConvPath conv2d_path(const cpu::ConvGeom& g, DType dtype);

// cuDNN algorithm cache counters (all devices and directions); a lookup that
// finds a cached algorithm is a hit, one that runs the heuristic a miss. A
// fallback: the ranked algorithm was refused when run (not supported, or its
// workspace could not be allocated) and the next usable one took its place,
// in the cache too.
struct ConvAlgoCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t fallbacks = 0;
};
ConvAlgoCacheStats conv_algo_cache_stats();

// How cuDNN's algorithm is chosen, once per shape: by its heuristics (the
// default), or by running every candidate and taking the fastest usable one
// (KESTREL_CUDNN_BENCHMARK=1, like torch.backends.cudnn.benchmark; costs one
// timed trial per new shape). Cached choices are kept per mode.
bool cudnn_benchmark_enabled();
void set_cudnn_benchmark(bool on);

}  // namespace kestrel::gpu
