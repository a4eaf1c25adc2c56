// The integer grids of int8 inference, shared by quantization-aware training
// (engine/nn/quant.h) and the ONNX exporter: uint8 activations with a zero
// point, int8 weights symmetric per output channel.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace kestrel {

struct QuantGrid {
  float scale = 1.0f;  // real value = scale * (q - zero_point)
  int64_t zero_point = 0;
  int64_t qmin = 0, qmax = 255;
};

constexpr int64_t kWeightQmax = 127;  // int8 weights use [-127, 127]: symmetric, zero point 0

// The uint8 grid of an observed range [lo, hi], widened to hold 0 so that zero
// (padding, ReLU) is exact.
QuantGrid activation_grid(float lo, float hi);

// Per output channel (dim 0) of a weight: max |w_c| / 127, never below 1e-12.
// Not differentiable (fake_quantize_weight treats it as a constant).
Tensor weight_scales(const Tensor& w);

// w rounded to its channels' int8 grids (scales = weight_scales(w)) and back;
// the gradient passes straight through. A tensor-keeping trace (ONNX export)
// sees one "fake_quantize_weight" event with inputs {w, scales}.
Tensor fake_quantize_weight(const Tensor& w, const Tensor& scales);

// A bias on the int32 grid int8 kernels add it on: per channel, scale
// input_scale * weight_scale_c (f32), zero point 0. Straight-through gradient.
Tensor fake_quantize_bias(const Tensor& bias, float input_scale, const Tensor& weight_scales);

}  // namespace kestrel
