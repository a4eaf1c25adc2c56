#include "engine/ops/norm.h"

#include <map>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/gpu/norm.h"
#include "engine/ops/check.h"
#include "engine/ops/cpu_norm.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

// A per-channel tensor (weight, bias, running stat) must be [C] and match x's
// dtype, except on CUDA: the kernels take f32 parameters and statistics, also
// for f16/bf16 activations (mixed precision keeps parameters in f32).
void check_channel_tensor(const Tensor& t, const Tensor& x, int64_t channels, const char* op, const char* what) {
  if (!t.defined()) return;
  KCHECK(t.dim() == 1 && t.size(0) == channels, ShapeError, op, ": ", what, " must be [", channels,
         "] for input ", shape_str(x.shape()), " (NHWC, channels last), got ", shape_str(t.shape()));
  check_same_device(t, x, op);
  if (x.device().is_cuda()) {
    KCHECK(t.dtype() == DType::F32, DTypeError, op, ": ", what, " is ", dtype_name(t.dtype()),
           " but the CUDA path takes f32 parameters and statistics (input ", dtype_name(x.dtype()), " ",
           shape_str(x.shape()), ")");
    KCHECK(t.is_contiguous(), ValueError, op, ": ", what, " must be contiguous on CUDA");
    return;
  }
  KCHECK(t.dtype() == x.dtype(), DTypeError, op, ": ", what, " is ", dtype_name(t.dtype()), " but input is ",
         dtype_name(x.dtype()));
}

void check_cuda_input(const Tensor& x, const char* op) {
  KCHECK(x.dtype() == DType::F32 || x.dtype() == DType::F16 || x.dtype() == DType::BF16, DTypeError, op,
         ": the CUDA path supports f32, f16 and bf16 input, got ", dtype_name(x.dtype()), " ", shape_str(x.shape()));
}

std::map<std::string, std::string> norm_trace_attrs(const BatchNormParams& p, Activation act) {
  if (active_trace() == nullptr) return {};
  return {{"act", activation_name(act)}, {"training", p.training ? "1" : "0"}, {"eps", exact_str(p.eps)}};
}

// CUDA: statistics, running-stat update and the backward all stay on the device.
Tensor batch_norm_cuda(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, const BatchNormParams& p,
                       Activation act, const Tensor& residual) {
  const Tensor xc = x.detach().contiguous();
  const Tensor rc = residual.defined() ? residual.detach().contiguous() : Tensor();
  const Tensor w = weight.defined() ? weight.detach() : Tensor();
  const Tensor b = bias.defined() ? bias.detach() : Tensor();
  const bool grad = needs_grad({x, weight, bias, residual});
  gpu::BatchNormForward f =
      gpu::batch_norm_act_forward(xc, w, b, running_mean, running_var, rc, p.training, p.momentum, p.eps, act, grad);
  trace_op(op, {x, weight, bias, residual, running_mean, running_var}, f.y, x.numel(), norm_trace_attrs(p, act));
  if (!grad) return f.y;
  const gpu::BatchNormStats saved = f.saved;
  const bool training = p.training;
  return record(f.y, op, {x, weight, bias, residual},
                [xc, rc, w, b, saved, training, act](const Tensor& g, const std::vector<bool>& needs) {
                  gpu::BatchNormGrads gr =
                      gpu::batch_norm_act_backward(g.contiguous(), xc, rc, w, b, saved, training, act, needs);
                  return std::vector<Tensor>{gr.x, gr.weight, gr.bias, gr.residual};
                });
}

Tensor batch_norm_impl(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias,
                       Tensor& running_mean, Tensor& running_var, const BatchNormParams& p, Activation act,
                       const Tensor& residual) {
  check_defined(x, op, "input");
  if (x.device().is_cuda()) check_cuda_input(x, op);
  KCHECK(x.dim() >= 2, ShapeError, op, ": input must be [N, ..., C] (channels last) with at least 2 dims, got ",
         shape_str(x.shape()));
  const int64_t C = x.size(x.dim() - 1);
  KCHECK(C > 0 && x.numel() > 0, ShapeError, op, ": input ", shape_str(x.shape()), " is empty");
  const int64_t rows = x.numel() / C;
  check_channel_tensor(weight, x, C, op, "weight");
  check_channel_tensor(bias, x, C, op, "bias");
  check_channel_tensor(running_mean, x, C, op, "running_mean");
  check_channel_tensor(running_var, x, C, op, "running_var");
  KCHECK(running_mean.defined() == running_var.defined(), ValueError, op,
         ": running_mean and running_var must both be given or both be undefined");
  if (residual.defined()) {
    KCHECK(residual.shape() == x.shape(), ShapeError, op, ": residual ", shape_str(residual.shape()),
           " must have the input's shape ", shape_str(x.shape()));
    check_same_device_and_dtype(residual, x, op);
  }
  KCHECK(p.eps >= 0.0, ValueError, op, ": eps must be non-negative, got ", p.eps);
  KCHECK(p.momentum >= 0.0 && p.momentum <= 1.0, ValueError, op, ": momentum must be in [0, 1], got ", p.momentum);
  if (p.training) {
    check_batch_statistics(x, rows, op);
  } else {
    KCHECK(running_mean.defined(), ValueError, op, ": eval mode needs running_mean and running_var");
  }
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) {
      // No per-channel check of var + eps > 0 here: it would read the statistics back to the host.
      return batch_norm_cuda(op, x, weight, bias, running_mean, running_var, p, act, residual);
    }
  }

  const Tensor xc = x.detach().contiguous();
  const Tensor rc = residual.defined() ? residual.detach().contiguous() : Tensor();
  const CpuNorm n = cpu_norm_prepare(op, xc, weight, bias, running_mean, running_var, p, act);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cpu_norm_forward(n, xc, rc, y);
  trace_op(op, {x, weight, bias, residual, running_mean, running_var}, y, x.numel(), norm_trace_attrs(p, act));
  if (!needs_grad({x, weight, bias, residual})) return y;
  return record(y, op, {x, weight, bias, residual}, [xc, rc, n](const Tensor& g, const std::vector<bool>& needs) {
    return cpu_norm_backward(n, xc, rc, g.contiguous(), needs);
  });
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                  Tensor& running_var, const BatchNormParams& p) {
  return batch_norm_impl("batch_norm", x, weight, bias, running_mean, running_var, p, Activation::None, Tensor());
}

Tensor batch_norm_act(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                      Tensor& running_var, const BatchNormParams& p, Activation act, const Tensor& residual) {
  return batch_norm_impl("batch_norm_act", x, weight, bias, running_mean, running_var, p, act, residual);
}

}  // namespace kestrel
