// CUDA batch norm; see norm.h. Training forward and backward and the inference
// forward are kernels/batch_norm_act.h. The eval-mode backward (frozen
// statistics: dx = gamma * invstd * dz, no batch terms) is here, with its
// per-channel parameter-gradient reduction.
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

struct EvalBackwardArgs {
  const float* mean;
  const float* invstd;
  const float* gamma;  // may be null (1)
  const float* beta;   // may be null (0)
  int64_t total;
  int C;
  KAct act;
};

// dz = dy * act'(z), z = gamma * xhat + beta + residual; dresidual = dz; dx = gamma * invstd * dz.
template <typename T>
__global__ void eval_backward_kernel(EvalBackwardArgs a, const T* __restrict__ dy, const T* __restrict__ x,
                                     const T* __restrict__ res, T* __restrict__ dx, T* __restrict__ dres) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % a.C);
    const float g = a.gamma != nullptr ? a.gamma[c] : 1.f;
    float dz = to_math(dy[i]);
    if (a.act != KAct::None) {
      const float xhat = (to_math(x[i]) - a.mean[c]) * a.invstd[c];
      const float z = fmaf(g, xhat, a.beta != nullptr ? a.beta[c] : 0.f) + (res != nullptr ? to_math(res[i]) : 0.f);
      dz *= kernels::act_derivative(a.act, z);
    }
    if (dres != nullptr) dres[i] = from_math<T>(dz);
    if (dx != nullptr) dx[i] = from_math<T>(g * a.invstd[c] * dz);
  }
}

// Per-channel sum(dz) and sum(dz * xhat) over row splits: block (32 channels, 8
// row lanes) per (channel tile, split); lanes and splits are summed in a fixed
// order, so the result is deterministic.
constexpr int kTileC = 32;
constexpr int kLanes = 8;

template <typename T>
__global__ void eval_param_grad_partial_kernel(EvalBackwardArgs a, int64_t rows, int splits, const T* __restrict__ dy,
                                               const T* __restrict__ x, const T* __restrict__ res,
                                               float* __restrict__ psum, float* __restrict__ psumx) {
  __shared__ float sh[2][kLanes][kTileC];
  const int c = blockIdx.x * kTileC + threadIdx.x;
  const int64_t per = (rows + splits - 1) / splits;
  const int64_t beg = blockIdx.y * per, end = beg + per < rows ? beg + per : rows;
  float s0 = 0.f, s1 = 0.f;
  if (c < a.C) {
    const float mu = a.mean[c], is = a.invstd[c];
    const float g = a.gamma != nullptr ? a.gamma[c] : 1.f, b = a.beta != nullptr ? a.beta[c] : 0.f;
    for (int64_t r = beg + threadIdx.y; r < end; r += kLanes) {
      const int64_t e = r * a.C + c;
      const float xhat = (to_math(x[e]) - mu) * is;
      float dz = to_math(dy[e]);
      if (a.act != KAct::None) dz *= kernels::act_derivative(a.act, fmaf(g, xhat, b) + (res ? to_math(res[e]) : 0.f));
      s0 += dz;
      s1 = fmaf(dz, xhat, s1);
    }
  }
  sh[0][threadIdx.y][threadIdx.x] = s0;
  sh[1][threadIdx.y][threadIdx.x] = s1;
  __syncthreads();
  if (threadIdx.y != 0 || c >= a.C) return;
  for (int l = 1; l < kLanes; ++l) {
    s0 += sh[0][l][threadIdx.x];
    s1 += sh[1][l][threadIdx.x];
  }
  psum[static_cast<int64_t>(blockIdx.y) * a.C + c] = s0;
  psumx[static_cast<int64_t>(blockIdx.y) * a.C + c] = s1;
}

__global__ void eval_param_grad_finalize_kernel(const float* __restrict__ psum, const float* __restrict__ psumx,
                                                int C, int splits, float* dgamma, float* dbeta) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s0 = 0.f, s1 = 0.f;
  for (int sp = 0; sp < splits; ++sp) {
    s0 += psum[static_cast<int64_t>(sp) * C + c];
    s1 += psumx[static_cast<int64_t>(sp) * C + c];
  }
  if (dbeta != nullptr) dbeta[c] = s0;
  if (dgamma != nullptr) dgamma[c] = s1;
}

__global__ void increment_kernel(int64_t* counter) { *counter += 1; }

BatchNormGrads eval_backward(const Tensor& gy, const Tensor& x, const Tensor& res, const Tensor& weight,
                             const Tensor& bias, const BatchNormStats& saved, Activation act,
                             const std::vector<bool>& need) {
  const char* op = "batch_norm backward";
  const kernels::BatchNormShape s = shape_of(x, op);
  const Device d = x.device();
  BatchNormGrads out;
  if (need[0]) out.x = Tensor::empty(x.shape(), x.dtype(), d);
  if (need[3]) out.residual = Tensor::empty(x.shape(), x.dtype(), d);
  if (need[1]) out.weight = f32_channels(s.C, d);
  if (need[2]) out.bias = f32_channels(s.C, d);
  const EvalBackwardArgs a{device_ptr<const float>(saved.mean),
                           device_ptr<const float>(saved.invstd),
                           device_ptr_or_null<const float>(weight),
                           device_ptr_or_null<const float>(bias),
                           s.M * s.C,
                           s.C,
                           kernel_act(act)};
  const OnDevice on(x);
  const cudaStream_t st = on.stream;
  const int splits = static_cast<int>(std::clamp<int64_t>((s.M + 127) / 128, 1, 256));
  const Tensor partial = (need[1] || need[2]) ? Tensor::empty({2, splits, s.C}, DType::F32, d) : Tensor();
  dispatch_float_dev(x.dtype(), op, [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    const T* res_p = device_ptr_or_null<const T>(res);
    if (need[0] || need[3]) {
      eval_backward_kernel<T><<<grid_for(a.total), kThreads, 0, st>>>(
          a, device_ptr<const T>(gy), device_ptr<const T>(x), res_p, device_ptr_or_null<T>(out.x),
          device_ptr_or_null<T>(out.residual));
    }
    if (partial.defined()) {
      float* psum = device_ptr<float>(partial);
      float* psumx = psum + static_cast<int64_t>(splits) * s.C;
      const dim3 grid(static_cast<unsigned>((s.C + kTileC - 1) / kTileC), static_cast<unsigned>(splits));
      eval_param_grad_partial_kernel<T><<<grid, dim3(kTileC, kLanes), 0, st>>>(
          a, s.M, splits, device_ptr<const T>(gy), device_ptr<const T>(x), res_p, psum, psumx);
      eval_param_grad_finalize_kernel<<<kernels::ceil_div(s.C, 128), 128, 0, st>>>(
          psum, psumx, s.C, splits, device_ptr_or_null<float>(out.weight), device_ptr_or_null<float>(out.bias));
    }
  });
  check_launch(op, x);
  return out;
}

}  // namespace

BatchNormForward batch_norm_act_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                        const Tensor& running_mean, const Tensor& running_var,
                                        const Tensor& residual, bool training, double momentum, double eps,
                                        Activation act, bool keep_stats) {
  const char* op = "batch_norm";
  const KDType dt = kernel_dtype(x.dtype(), op, "activations");
  const kernels::BatchNormShape s = shape_of(x, op);
  const Device d = x.device();
  const OnDevice on(x);
  const cudaStream_t st = on.stream;
  kernels::BatchNormActArgs args;
  args.eps = static_cast<float>(eps);
  args.momentum = static_cast<float>(momentum);
  args.act = kernel_act(act);
  const Tensor ws = workspace_for(s, d);
  BatchNormForward out;
  out.y = Tensor::empty(x.shape(), x.dtype(), d);
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
  const kernels::BatchNormShape s = shape_of(x, op);
  if (!training) return eval_backward(grad_y, x, residual, weight, bias, saved, act, need);
  const OnDevice on(x);
  const Device d = x.device();
  kernels::BatchNormActArgs args;
  args.act = kernel_act(act);
  BatchNormGrads out;
  // The kernel always writes dx; it is dropped below when x needs no gradient.
  const Tensor dx = Tensor::empty(x.shape(), x.dtype(), d);
  if (need[3]) out.residual = Tensor::empty(x.shape(), x.dtype(), d);
  if (need[1]) out.weight = f32_channels(s.C, d);
  if (need[2]) out.bias = f32_channels(s.C, d);
  const Tensor ws = workspace_for(s, d);
  KESTREL_CUDA_CHECK_CTX(kernels::batch_norm_act_backward(
                             dt, s, args, grad_y.data_ptr(), x.data_ptr(), device_ptr_or_null<const void>(residual),
                             device_ptr_or_null<const float>(weight), device_ptr_or_null<const float>(bias),
                             device_ptr<const float>(saved.mean), device_ptr<const float>(saved.invstd), dx.data_ptr(),
                             device_ptr_or_null<void>(out.residual), device_ptr_or_null<float>(out.weight),
                             device_ptr_or_null<float>(out.bias), ws.data_ptr(), on.stream),
                         op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
  if (need[0]) out.x = dx;
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
