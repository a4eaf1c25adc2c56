#include "engine/ops/cpu_norm.h"

#include <cmath>
#include <utility>

#include "engine/cpu/norm.h"
#include "engine/error.h"

namespace kestrel {

namespace {

std::shared_ptr<const std::vector<double>> values_or_null(const Tensor& t) {
  if (!t.defined()) return nullptr;
  return std::make_shared<const std::vector<double>>(t.to_vector_f64());
}

}  // namespace

CpuNorm cpu_norm_prepare(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias,
                         Tensor& running_mean, Tensor& running_var, const BatchNormParams& p, Activation act) {
  const int64_t C = x.size(x.dim() - 1);
  const int64_t rows = x.numel() / C;
  std::vector<double> mean(C), var(C);
  if (p.training) {
    cpu::batch_norm_stats(x, rows, C, mean.data(), var.data());
    if (running_mean.defined()) {
      // PyTorch's rule: the running variance tracks the unbiased batch variance.
      const double m = p.momentum;
      const double unbias = static_cast<double>(rows) / static_cast<double>(rows - 1);
      std::vector<double> rm = running_mean.to_vector_f64(), rv = running_var.to_vector_f64();
      for (int64_t c = 0; c < C; ++c) {
        rm[c] = (1.0 - m) * rm[c] + m * mean[c];
        rv[c] = (1.0 - m) * rv[c] + m * var[c] * unbias;
      }
      running_mean.copy_(Tensor::from_vector_f64(rm, {C}));
      running_var.copy_(Tensor::from_vector_f64(rv, {C}));
    }
  } else {
    mean = running_mean.to_vector_f64();
    var = running_var.to_vector_f64();
  }
  std::vector<double> invstd(C);
  for (int64_t c = 0; c < C; ++c) {
    KCHECK(var[c] + p.eps > 0.0, ValueError, op, ": variance plus eps is ", var[c] + p.eps, " for channel ", c,
           " (eps = 0 with a constant channel?)");
    invstd[c] = 1.0 / std::sqrt(var[c] + p.eps);
  }
  CpuNorm n;
  n.mean = std::make_shared<const std::vector<double>>(std::move(mean));
  n.invstd = std::make_shared<const std::vector<double>>(std::move(invstd));
  n.weight = values_or_null(weight);
  n.bias = values_or_null(bias);
  n.training = p.training;
  n.act = act;
  n.param_dtype = weight.defined() ? weight.dtype() : x.dtype();
  return n;
}

void cpu_norm_forward(const CpuNorm& n, const Tensor& x, const Tensor& residual, const Tensor& y) {
  const size_t C = n.mean->size();
  std::vector<double> scale(C);
  for (size_t c = 0; c < C; ++c) scale[c] = (n.weight ? (*n.weight)[c] : 1.0) * (*n.invstd)[c];
  cpu::batch_norm_act_forward(x, n.mean->data(), scale.data(), n.bias ? n.bias->data() : nullptr, residual, n.act,
                              y);
}

std::vector<Tensor> cpu_norm_backward(const CpuNorm& n, const Tensor& x, const Tensor& residual, const Tensor& grad_y,
                                      const std::vector<bool>& needs) {
  const int64_t C = static_cast<int64_t>(n.mean->size());
  cpu::BatchNormBackward a;
  a.mean = n.mean->data();
  a.invstd = n.invstd->data();
  a.weight = n.weight ? n.weight->data() : nullptr;
  a.bias = n.bias ? n.bias->data() : nullptr;
  a.training = n.training;
  a.act = n.act;
  Tensor gx = needs[0] ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  Tensor gr = needs[3] ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  std::vector<double> gw(C), gb(C);
  cpu::batch_norm_act_backward(x, residual, grad_y, a, gx, gr, gw.data(), gb.data());
  Tensor gwt = needs[1] ? Tensor::from_vector_f64(gw, {C}).to(n.param_dtype) : Tensor();
  Tensor gbt = needs[2] ? Tensor::from_vector_f64(gb, {C}).to(n.param_dtype) : Tensor();
  return {gx, gwt, gbt, gr};
}

}  // namespace kestrel
