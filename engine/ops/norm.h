// Batch normalization over the channel (last) dim of NHWC activations.
#pragma once
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel {

struct BatchNormParams {
  bool training = true;
  double momentum = 0.1;  // running = (1 - momentum) * running + momentum * batch (unbiased var), as PyTorch
  double eps = 1e-5;
};

// x [..., C]; weight, bias, running_mean, running_var [C]. In training mode the
// batch statistics normalize and the running stats are updated in place.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                  Tensor& running_var, const BatchNormParams& p);

// Fused: act(batch_norm(x) + residual); residual may be undefined.
Tensor batch_norm_act(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                      Tensor& running_var, const BatchNormParams& p, Activation act,
                      const Tensor& residual = Tensor());

}  // namespace kestrel
