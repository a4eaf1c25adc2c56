// CUDA batch norm; see norm.h. Every forward and backward, the eval-mode one
// (frozen statistics) included, is kernels/batch_norm_act.h.
#include "engine/gpu/norm.h"

#include <climits>

#include "engine/gpu/device_scalar.cuh"
#include "engine/gpu/kernel_dtype.h"
#include "kernels/batch_norm_act.h"
#include "kernels/common.cuh"

namespace kestrel::gpu {

namespace {

using kernels::KAct;
using kernels::KDType;

KAct kernel_act(Activation a) { return static_cast<KAct>(static_cast<int>(a)); }

Tensor f32_channels(int64_t c, Device d) { return Tensor::empty({c}, DType::F32, d); }

kernels::BatchNormShape shape_of(const Tensor& x, const char* op) {
  const int64_t C = x.size(x.dim() - 1);
  KCHECK(C >= 1 && C <= INT_MAX, ShapeError, op, ": ", C, " channels are outside the CUDA kernel's range [1, ",
         INT_MAX, "]");
  kernels::BatchNormShape s;
  s.C = static_cast<int>(C);
  s.M = x.numel() / C;
  return s;
}

// s.y_pitch for y (forward) or dy (backward): x's shape and dtype, rows evenly spaced.
void set_y_pitch(kernels::BatchNormShape& s, const Tensor& t, const Tensor& x, const char* op, const char* what) {
  const int64_t pitch = even_row_stride(t);
  KCHECK(t.shape() == x.shape() && t.dtype() == x.dtype() && t.device() == x.device() && pitch > 0, ShapeError, op,
         ": ", what, " ", shape_str(t.shape()), " ", dtype_name(t.dtype()), " must be the input's shape and dtype (",
         shape_str(x.shape()), " ", dtype_name(x.dtype()), "), contiguous or a channel slice with evenly spaced rows");
  s.y_pitch = pitch;
}

Tensor workspace_for(const kernels::BatchNormShape& s, Device d) {
  const size_t bytes = kernels::batch_norm_act_workspace_bytes(s);
  return Tensor::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, DType::F32, d);
}

// ---------------------------------------------------------------- eval-mode helpers

__global__ void eval_stats_kernel(const float* __restrict__ rmean, const float* __restrict__ rvar, float eps, int C,
                                  float* __restrict__ mean, float* __restrict__ invstd) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  mean[c] = rmean[c];
  invstd[c] = rsqrtf(rvar[c] + eps);
}

__global__ void increment_kernel(int64_t* counter) { *counter += 1; }

}  // namespace

BatchNormForward batch_norm_act_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                        const Tensor& running_mean, const Tensor& running_var,
                                        const Tensor& residual, bool training, double momentum, double eps,
                                        Activation act, bool keep_stats, const Tensor& out_y) {
  const char* op = "batch_norm";
  const KDType dt = kernel_dtype(x.dtype(), op, "activations");
  kernels::BatchNormShape s = shape_of(x, op);
  if (out_y.defined()) set_y_pitch(s, out_y, x, op, "output");
  const Device d = x.device();
  const OnDevice on(x);
  const cudaStream_t st = on.stream;
  kernels::BatchNormActArgs args;
  args.eps = static_cast<float>(eps);
  args.momentum = static_cast<float>(momentum);
  args.act = kernel_act(act);
  const Tensor ws = workspace_for(s, d);
  BatchNormForward out;
  out.y = out_y.defined() ? out_y : Tensor::empty(x.shape(), x.dtype(), d);
  if (training) {
    // The kernel needs somewhere to put the batch statistics only when the backward reads them.
    if (keep_stats) out.saved = {f32_channels(s.C, d), f32_channels(s.C, d)};
    KESTREL_CUDA_CHECK_CTX(kernels::batch_norm_act_forward_training(
                               dt, s, args, x.data_ptr(), device_ptr_or_null<const void>(residual),
                               device_ptr_or_null<const float>(weight), device_ptr_or_null<const float>(bias),
                               device_ptr_or_null<float>(running_mean), device_ptr_or_null<float>(running_var),
                               device_ptr_or_null<float>(out.saved.mean), device_ptr_or_null<float>(out.saved.invstd),
                               out.y.data_ptr(), ws.data_ptr(), st),
                           op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
    return out;
  }
  KESTREL_CUDA_CHECK_CTX(
      kernels::batch_norm_act_forward_inference(
          dt, s, args, x.data_ptr(), device_ptr_or_null<const void>(residual), device_ptr_or_null<const float>(weight),
          device_ptr_or_null<const float>(bias), device_ptr<const float>(running_mean),
          device_ptr<const float>(running_var), out.y.data_ptr(), ws.data_ptr(), st),
      op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
  if (keep_stats) {
    // A snapshot: a later training step updates the running statistics in place.
    out.saved = {f32_channels(s.C, d), f32_channels(s.C, d)};
    eval_stats_kernel<<<kernels::ceil_div(s.C, 128), 128, 0, st>>>(
        device_ptr<const float>(running_mean), device_ptr<const float>(running_var), static_cast<float>(eps), s.C,
        device_ptr<float>(out.saved.mean), device_ptr<float>(out.saved.invstd));
    check_launch("batch_norm (eval statistics)", x);
  }
  return out;
}

BatchNormGrads batch_norm_act_backward(const Tensor& grad_y, const Tensor& x, const Tensor& residual,
                                       const Tensor& weight, const Tensor& bias, const BatchNormStats& saved,
                                       bool training, Activation act, const std::vector<bool>& need) {
  const char* op = "batch_norm backward";
  const KDType dt = kernel_dtype(x.dtype(), op, "activations");
  kernels::BatchNormShape s = shape_of(x, op);
  set_y_pitch(s, grad_y, x, op, "grad_y");
  const OnDevice on(x);
  const Device d = x.device();
  kernels::BatchNormActArgs args;
  args.act = kernel_act(act);
  BatchNormGrads out;
  if (need[0]) out.x = Tensor::empty(x.shape(), x.dtype(), d);
  if (need[3]) out.residual = Tensor::empty(x.shape(), x.dtype(), d);
  if (need[1]) out.weight = f32_channels(s.C, d);
  if (need[2]) out.bias = f32_channels(s.C, d);
  const Tensor ws = workspace_for(s, d);
  // Eval mode: the running statistics were constants of the forward.
  const auto backward = training ? kernels::batch_norm_act_backward : kernels::batch_norm_act_backward_frozen;
  KESTREL_CUDA_CHECK_CTX(backward(dt, s, args, grad_y.data_ptr(), x.data_ptr(), device_ptr_or_null<const void>(residual),
                                  device_ptr_or_null<const float>(weight), device_ptr_or_null<const float>(bias),
                                  device_ptr<const float>(saved.mean), device_ptr<const float>(saved.invstd),
                                  device_ptr_or_null<void>(out.x), device_ptr_or_null<void>(out.residual),
                                  device_ptr_or_null<float>(out.weight), device_ptr_or_null<float>(out.bias),
                                  ws.data_ptr(), on.stream),
                         op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()), training ? "" : " (eval)");
  return out;
}

void increment_counter(const Tensor& counter) {
  KCHECK(counter.dtype() == DType::I64 && counter.numel() == 1, DTypeError,
         "increment_counter: expected an i64 scalar, got ", dtype_name(counter.dtype()), " ",
         shape_str(counter.shape()));
  const OnDevice on(counter);
  increment_kernel<<<1, 1, 0, on.stream>>>(device_ptr<int64_t>(counter));
  check_launch("increment_counter", counter);
}

}  // namespace kestrel::gpu
