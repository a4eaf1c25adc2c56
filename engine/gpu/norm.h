// CUDA batch normalization over the channel (last) dim, fused with an optional
// residual add and activation, on kernels/batch_norm_act.h. Everything stays on
// the device: the training forward updates the running statistics in its
// kernel, the statistics the backward needs are f32 device tensors, and
// nothing reads a value back to the host. x and residual are f32, f16 or bf16;
// weight, bias and the running statistics are f32 [C] (also for f16/bf16
// activations: that is how mixed precision runs). Launches go on the current
// stream. Compiles; untested on GPU at the time of writing.
#pragma once
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

// The per-channel statistics that normalized x: f32 [C] device tensors.
struct BatchNormStats {
  Tensor mean, invstd;
};

struct BatchNormForward {
  Tensor y;
  BatchNormStats saved;  // defined when keep_stats was set
};

// x, residual contiguous [..., C]; weight, bias, residual may be undefined. In
// training the batch statistics normalize and running_mean/var (f32 [C],
// contiguous, may be undefined) are updated in place; in eval the running
// statistics normalize and keep_stats snapshots them for the backward. out,
// when defined, is where y goes: x's shape and dtype, contiguous or a channel
// slice of a wider tensor with evenly spaced rows (then y is out).
BatchNormForward batch_norm_act_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                        const Tensor& running_mean, const Tensor& running_var,
                                        const Tensor& residual, bool training, double momentum, double eps,
                                        Activation act, bool keep_stats, const Tensor& out = Tensor());

struct BatchNormGrads {
  Tensor x, weight, bias, residual;  // undefined where not requested
};

// need: which of x, weight, bias, residual want a gradient. grad_y may be a
// channel slice with evenly spaced rows, like the forward's out.
BatchNormGrads batch_norm_act_backward(const Tensor& grad_y, const Tensor& x, const Tensor& residual,
                                       const Tensor& weight, const Tensor& bias, const BatchNormStats& saved,
                                       bool training, Activation act, const std::vector<bool>& need);

// counter (i64 scalar on the device) += 1, without a host round trip.
void increment_counter(const Tensor& counter);

}  // namespace kestrel::gpu
