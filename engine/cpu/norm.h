// CPU kernels for batch normalization over the last (channel) dim, fused with
// an optional residual add and activation. Tensors are viewed as [rows, C] and
// contiguous, except the forward's y and the backward's grad_y, which may be a
// channel slice of a wider tensor (rows a fixed stride apart: a ghost
// module's halves); per-channel vectors are double arrays of length C.
//
// Reductions split rows into a fixed number of blocks that depends only on the
// shape, so results are identical for any OpenMP thread count.
#pragma once
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel::cpu {

// Per-channel mean and biased variance, accumulated in double around a per-channel shift.
void batch_norm_stats(const Tensor& x, int64_t rows, int64_t channels, double* mean, double* var);

// y = act((x - mean[c]) * scale[c] + bias[c] + residual), scale = weight * invstd;
// bias may be nullptr (0), residual may be undefined.
void batch_norm_act_forward(const Tensor& x, const double* mean, const double* scale, const double* bias,
                            const Tensor& residual, Activation act, const Tensor& y);

struct BatchNormBackward {
  const double* mean = nullptr;    // statistics that normalized x (batch or running)
  const double* invstd = nullptr;  // 1 / sqrt(var + eps)
  const double* weight = nullptr;  // gamma, or nullptr for 1
  const double* bias = nullptr;    // beta, or nullptr for 0
  bool training = true;            // batch statistics depend on x
  Activation act = Activation::None;
};

// From grad_y computes (each output optional: undefined tensor / nullptr skips it)
// grad_x, grad_residual (= grad of the pre-activation), and per-channel
// grad_weight = sum(gz * xhat), grad_bias = sum(gz).
void batch_norm_act_backward(const Tensor& x, const Tensor& residual, const Tensor& grad_y, const BatchNormBackward& a,
                             const Tensor& grad_x, const Tensor& grad_residual, double* grad_weight, double* grad_bias);

}  // namespace kestrel::cpu
