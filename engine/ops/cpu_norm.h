// The CPU batch norm's three steps, shared by batch_norm_act and the ops that
// run a norm inside them (ghost_norms): statistics (with the running update),
// the normalize-add-activate pass, and its backward. x is contiguous [..., C];
// y and grad_y may be channel slices of wider tensors (engine/cpu/norm.h).
#pragma once
#include <memory>
#include <vector>

#include "engine/ops/norm.h"

namespace kestrel {

// What a forward pass fixed and its backward reuses.
struct CpuNorm {
  std::shared_ptr<const std::vector<double>> mean, invstd;  // the statistics that normalized x
  std::shared_ptr<const std::vector<double>> weight, bias;  // null: 1 and 0
  bool training = true;
  Activation act = Activation::None;
  DType param_dtype = DType::F32;  // of the weight and bias gradients
};

// The batch's statistics in training (running_mean and running_var, when
// defined, updated as PyTorch does: the variance unbiased), else the running
// ones. Throws where var + eps is not positive.
CpuNorm cpu_norm_prepare(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias,
                         Tensor& running_mean, Tensor& running_var, const BatchNormParams& p, Activation act);

// y = act((x - mean) * invstd * weight + bias + residual); residual may be undefined.
void cpu_norm_forward(const CpuNorm& n, const Tensor& x, const Tensor& residual, const Tensor& y);

// The gradients {x, weight, bias, residual} given grad_y, each where needs says.
std::vector<Tensor> cpu_norm_backward(const CpuNorm& n, const Tensor& x, const Tensor& residual, const Tensor& grad_y,
                                      const std::vector<bool>& needs);

}  // namespace kestrel
