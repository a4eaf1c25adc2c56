// The cuDNN tensor operations bench_kernels composes its baselines from, for
// the CPU emulator: activation forward/backward, add and op-tensor with
// broadcasting, reductions, and spatial batch norm (training forward and
// backward). Plain loops in f64 over 4-d tensors; results go through a
// temporary, so outputs may alias inputs wherever cuDNN allows it. The rules
// cuDNN states for broadcasting, in-place use and workspace size are checked,
// so a baseline that breaks them fails here before it runs on a GPU.
#include <cmath>
#include <vector>

#include "tests/emu/cudnn_emu.h"

struct cudnnActivationStruct {
  cudnnActivationMode_t mode = CUDNN_ACTIVATION_IDENTITY;  // the modes modelled take no coefficient
};

struct cudnnOpTensorStruct {
  cudnnOpTensorOp_t op = CUDNN_OP_TENSOR_ADD;
};

struct cudnnReduceTensorStruct {
  cudnnReduceTensorOp_t op = CUDNN_REDUCE_TENSOR_ADD;  // without indices (the only kind modelled)
};

namespace {

using kestrel::emu::blend;
using kestrel::emu::elements;
using kestrel::emu::load_element;
using kestrel::emu::scalar;

// t's dims each equal out's or 1 (t broadcasts to out).
bool broadcasts_to(const cudnnTensorStruct& t, const cudnnTensorStruct& out) {
  auto ok = [](int a, int b) { return a == b || a == 1; };
  return t.kind >= 0 && ok(t.n, out.n) && ok(t.c, out.c) && ok(t.h, out.h) && ok(t.w, out.w);
}

bool same_shape(const cudnnTensorStruct& a, const cudnnTensorStruct& b) {
  return a.kind >= 0 && a.n == b.n && a.c == b.c && a.h == b.h && a.w == b.w;
}

// Element (n, c, h, w) of out's index space read from t, broadcasting its size-1 dims.
double broadcast_load(const cudnnTensorStruct& t, const void* p, int n, int c, int h, int w) {
  return load_element(p, t.kind, t.index(t.n == 1 ? 0 : n, t.c == 1 ? 0 : c, t.h == 1 ? 0 : h, t.w == 1 ? 0 : w));
}

// Calls f(n, c, h, w, memory index in t) over every element of t.
template <typename F>
void for_each_element(const cudnnTensorStruct& t, F&& f) {
  for (int n = 0; n < t.n; ++n)
    for (int c = 0; c < t.c; ++c)
      for (int h = 0; h < t.h; ++h)
        for (int w = 0; w < t.w; ++w) f(n, c, h, w, t.index(n, c, h, w));
}

double activate(const cudnnActivationStruct& a, double x) {
  switch (a.mode) {
    case CUDNN_ACTIVATION_RELU: return x > 0 ? x : 0.0;
    case CUDNN_ACTIVATION_SIGMOID: return 1.0 / (1.0 + std::exp(-x));
    case CUDNN_ACTIVATION_TANH: return std::tanh(x);
    default: return x;  // identity
  }
}

// d activation / dx, from the input x and the output y.
double activation_slope(const cudnnActivationStruct& a, double x, double y) {
  switch (a.mode) {
    case CUDNN_ACTIVATION_RELU: return x > 0 ? 1.0 : 0.0;
    case CUDNN_ACTIVATION_SIGMOID: return y * (1.0 - y);
    case CUDNN_ACTIVATION_TANH: return 1.0 - y * y;
    default: return 1.0;
  }
}

bool activation_supported(cudnnActivationMode_t m) {
  return m == CUDNN_ACTIVATION_RELU || m == CUDNN_ACTIVATION_SIGMOID || m == CUDNN_ACTIVATION_TANH ||
         m == CUDNN_ACTIVATION_IDENTITY;
}

// Bytes of workspace the emulated reduction asks for: an f32 per input
// element, the order of what cuDNN's split reductions ask for.
size_t reduction_workspace(const cudnnTensorStruct& a) { return elements(a) * sizeof(float); }

bool is_spatial(cudnnBatchNormMode_t mode) {
  return mode == CUDNN_BATCHNORM_SPATIAL || mode == CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
}

// The [1, C, 1, 1] statistics descriptor matches x (f32 for f16/bf16/f32 data, f64 for f64).
bool bn_params_match(const cudnnTensorStruct& x, const cudnnTensorStruct& p) {
  const int want = x.kind == kestrel::emu::kF64 ? kestrel::emu::kF64 : kestrel::emu::kF32;
  return p.kind == want && p.n == 1 && p.c == x.c && p.h == 1 && p.w == 1;
}

// Per-channel batch mean and biased variance of x over N, H, W.
void channel_moments(const cudnnTensorStruct& xd, const void* x, std::vector<double>& mean, std::vector<double>& var) {
  mean.assign(xd.c, 0.0);
  var.assign(xd.c, 0.0);
  const double m = static_cast<double>(xd.n) * xd.h * xd.w;
  for_each_element(xd, [&](int, int c, int, int, int64_t i) { mean[c] += load_element(x, xd.kind, i); });
  for (double& v : mean) v /= m;
  for_each_element(xd, [&](int, int c, int, int, int64_t i) {
    const double d = load_element(x, xd.kind, i) - mean[c];
    var[c] += d * d;
  });
  for (double& v : var) v /= m;
}

// p[c] = value(c) for each channel c.
template <typename F>
void store_channels(void* p, int kind, int channels, F&& value) {
  for (int c = 0; c < channels; ++c) kestrel::emu::store_element(p, kind, c, value(c));
}

}  // namespace

extern "C" {

size_t cudnnGetVersion(void) { return CUDNN_VERSION; }

cudnnStatus_t cudnnCreateActivationDescriptor(cudnnActivationDescriptor_t* d) {
  *d = new cudnnActivationStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyActivationDescriptor(cudnnActivationDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d, cudnnActivationMode_t mode,
                                           cudnnNanPropagation_t, double) {
  if (!activation_supported(mode)) return CUDNN_STATUS_NOT_SUPPORTED;
  d->mode = mode;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateOpTensorDescriptor(cudnnOpTensorDescriptor_t* d) {
  *d = new cudnnOpTensorStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyOpTensorDescriptor(cudnnOpTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetOpTensorDescriptor(cudnnOpTensorDescriptor_t d, cudnnOpTensorOp_t op, cudnnDataType_t,
                                         cudnnNanPropagation_t) {
  if (op != CUDNN_OP_TENSOR_ADD && op != CUDNN_OP_TENSOR_MUL && op != CUDNN_OP_TENSOR_MIN &&
      op != CUDNN_OP_TENSOR_MAX)
    return CUDNN_STATUS_NOT_SUPPORTED;
  d->op = op;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateReduceTensorDescriptor(cudnnReduceTensorDescriptor_t* d) {
  *d = new cudnnReduceTensorStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyReduceTensorDescriptor(cudnnReduceTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetReduceTensorDescriptor(cudnnReduceTensorDescriptor_t d, cudnnReduceTensorOp_t op,
                                             cudnnDataType_t, cudnnNanPropagation_t,
                                             cudnnReduceTensorIndices_t indices, cudnnIndicesType_t) {
  if (op != CUDNN_REDUCE_TENSOR_ADD && op != CUDNN_REDUCE_TENSOR_AVG && op != CUDNN_REDUCE_TENSOR_MAX &&
      op != CUDNN_REDUCE_TENSOR_MIN && op != CUDNN_REDUCE_TENSOR_AMAX)
    return CUDNN_STATUS_NOT_SUPPORTED;
  if (indices != CUDNN_REDUCE_TENSOR_NO_INDICES) return CUDNN_STATUS_NOT_SUPPORTED;
  d->op = op;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnActivationForward(cudnnHandle_t, cudnnActivationDescriptor_t a, const void* alpha,
                                     const cudnnTensorDescriptor_t xd, const void* x, const void* beta,
                                     const cudnnTensorDescriptor_t yd, void* y) {
  if (!same_shape(*xd, *yd) || xd->kind != yd->kind || xd->format != yd->format) return CUDNN_STATUS_BAD_PARAM;
  std::vector<double> out(elements(*yd));
  for (size_t i = 0; i < out.size(); ++i) out[i] = activate(*a, load_element(x, xd->kind, static_cast<int64_t>(i)));
  blend(y, yd->kind, out, alpha, beta);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnActivationBackward(cudnnHandle_t, cudnnActivationDescriptor_t a, const void* alpha,
                                      const cudnnTensorDescriptor_t yd, const void* y,
                                      const cudnnTensorDescriptor_t dyd, const void* dy,
                                      const cudnnTensorDescriptor_t xd, const void* x, const void* beta,
                                      const cudnnTensorDescriptor_t dxd, void* dx) {
  for (const cudnnTensorStruct* t : {dyd, xd, dxd})
    if (!same_shape(*yd, *t) || t->kind != yd->kind || t->format != yd->format) return CUDNN_STATUS_BAD_PARAM;
  const int k = yd->kind;
  std::vector<double> out(elements(*dxd));
  for (size_t i = 0; i < out.size(); ++i) {
    const auto j = static_cast<int64_t>(i);
    out[i] = load_element(dy, k, j) * activation_slope(*a, load_element(x, k, j), load_element(y, k, j));
  }
  blend(dx, k, out, alpha, beta);
  return CUDNN_STATUS_SUCCESS;
}

// C = alpha * A + beta * C, A broadcast over C.
cudnnStatus_t cudnnAddTensor(cudnnHandle_t, const void* alpha, const cudnnTensorDescriptor_t ad, const void* A,
                             const void* beta, const cudnnTensorDescriptor_t cd, void* C) {
  if (!broadcasts_to(*ad, *cd) || ad->kind != cd->kind) return CUDNN_STATUS_BAD_PARAM;
  std::vector<double> out(elements(*cd));
  for_each_element(*cd, [&](int n, int c, int h, int w, int64_t i) { out[i] = broadcast_load(*ad, A, n, c, h, w); });
  blend(C, cd->kind, out, alpha, beta);
  return CUDNN_STATUS_SUCCESS;
}

// C = op(alpha1 * A, alpha2 * B) + beta * C; A has C's shape, B broadcasts.
// cuDNN allows C to alias A, and B only when A aliases it too.
cudnnStatus_t cudnnOpTensor(cudnnHandle_t, const cudnnOpTensorDescriptor_t op, const void* alpha1,
                            const cudnnTensorDescriptor_t ad, const void* A, const void* alpha2,
                            const cudnnTensorDescriptor_t bd, const void* B, const void* beta,
                            const cudnnTensorDescriptor_t cd, void* C) {
  if (!same_shape(*ad, *cd) || !broadcasts_to(*bd, *cd) || ad->kind != cd->kind || bd->kind != cd->kind)
    return CUDNN_STATUS_BAD_PARAM;
  if (B == C && A != C) return CUDNN_STATUS_BAD_PARAM;
  const double a1 = scalar(alpha1, cd->kind), a2 = scalar(alpha2, cd->kind);
  const double one = 1.0;
  const float one_f = 1.f;
  std::vector<double> out(elements(*cd));
  for_each_element(*cd, [&](int n, int c, int h, int w, int64_t i) {
    const double a = a1 * load_element(A, ad->kind, ad->index(n, c, h, w));
    const double b = a2 * broadcast_load(*bd, B, n, c, h, w);
    switch (op->op) {
      case CUDNN_OP_TENSOR_MUL: out[i] = a * b; break;
      case CUDNN_OP_TENSOR_MIN: out[i] = std::fmin(a, b); break;
      case CUDNN_OP_TENSOR_MAX: out[i] = std::fmax(a, b); break;
      default: out[i] = a + b; break;
    }
  });
  blend(C, cd->kind, out, cd->kind == kestrel::emu::kF64 ? static_cast<const void*>(&one) : &one_f, beta);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetReductionWorkspaceSize(cudnnHandle_t, const cudnnReduceTensorDescriptor_t,
                                             const cudnnTensorDescriptor_t ad, const cudnnTensorDescriptor_t,
                                             size_t* bytes) {
  *bytes = reduction_workspace(*ad);
  return CUDNN_STATUS_SUCCESS;
}

// C = alpha * reduce(A) + beta * C over the dims where C has size 1 and A not.
cudnnStatus_t cudnnReduceTensor(cudnnHandle_t, const cudnnReduceTensorDescriptor_t r, void*, size_t, void*,
                                size_t workspace_bytes, const void* alpha, const cudnnTensorDescriptor_t ad,
                                const void* A, const void* beta, const cudnnTensorDescriptor_t cd, void* C) {
  if (!broadcasts_to(*cd, *ad) || ad->kind != cd->kind) return CUDNN_STATUS_BAD_PARAM;
  if (workspace_bytes < reduction_workspace(*ad)) return CUDNN_STATUS_BAD_PARAM;
  const size_t count = elements(*ad) / elements(*cd);
  std::vector<double> out(elements(*cd), r->op == CUDNN_REDUCE_TENSOR_ADD || r->op == CUDNN_REDUCE_TENSOR_AVG ||
                                                 r->op == CUDNN_REDUCE_TENSOR_AMAX
                                             ? 0.0
                                             : NAN);
  for_each_element(*ad, [&](int n, int c, int h, int w, int64_t i) {
    const double v = load_element(A, ad->kind, i);
    double& o = out[cd->index(cd->n == 1 ? 0 : n, cd->c == 1 ? 0 : c, cd->h == 1 ? 0 : h, cd->w == 1 ? 0 : w)];
    switch (r->op) {
      case CUDNN_REDUCE_TENSOR_MAX: o = std::isnan(o) ? v : std::fmax(o, v); break;
      case CUDNN_REDUCE_TENSOR_MIN: o = std::isnan(o) ? v : std::fmin(o, v); break;
      case CUDNN_REDUCE_TENSOR_AMAX: o = std::fmax(o, std::fabs(v)); break;
      default: o += v; break;
    }
  });
  if (r->op == CUDNN_REDUCE_TENSOR_AVG)
    for (double& o : out) o /= static_cast<double>(count);
  blend(C, cd->kind, out, alpha, beta);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDeriveBNTensorDescriptor(cudnnTensorDescriptor_t derived, const cudnnTensorDescriptor_t xd,
                                            cudnnBatchNormMode_t mode) {
  if (!is_spatial(mode) || xd->kind < 0) return CUDNN_STATUS_NOT_SUPPORTED;
  *derived = cudnnTensorStruct{xd->kind == kestrel::emu::kF64 ? kestrel::emu::kF64 : kestrel::emu::kF32,
                               CUDNN_TENSOR_NCHW, 1, xd->c, 1, 1};
  return CUDNN_STATUS_SUCCESS;
}

// y = alpha * (gamma * (x - mean) * invstd + beta) + beta_blend * y over N, H, W per
// channel; running stats move by `factor` (variance unbiased); the saved
// statistics are the batch mean and 1 / sqrt(var + eps).
cudnnStatus_t cudnnBatchNormalizationForwardTraining(
    cudnnHandle_t, cudnnBatchNormMode_t mode, const void* alpha, const void* beta, const cudnnTensorDescriptor_t xd,
    const void* x, const cudnnTensorDescriptor_t yd, void* y, const cudnnTensorDescriptor_t pd, const void* scale,
    const void* bias, double factor, void* running_mean, void* running_var, double eps, void* save_mean,
    void* save_invstd) {
  if (!is_spatial(mode)) return CUDNN_STATUS_NOT_SUPPORTED;
  if (!same_shape(*xd, *yd) || xd->kind != yd->kind || !bn_params_match(*xd, *pd) || eps < CUDNN_BN_MIN_EPSILON)
    return CUDNN_STATUS_BAD_PARAM;
  const int pk = pd->kind;
  std::vector<double> mean, var;
  channel_moments(*xd, x, mean, var);
  std::vector<double> out(elements(*yd));
  for_each_element(*xd, [&](int, int c, int, int, int64_t i) {
    const double xhat = (load_element(x, xd->kind, i) - mean[c]) / std::sqrt(var[c] + eps);
    out[i] = load_element(scale, pk, c) * xhat + load_element(bias, pk, c);
  });
  blend(y, yd->kind, out, alpha, beta);
  const double m = static_cast<double>(xd->n) * xd->h * xd->w;
  if (running_mean)
    store_channels(running_mean, pk, xd->c,
                   [&](int c) { return (1 - factor) * load_element(running_mean, pk, c) + factor * mean[c]; });
  if (running_var)
    store_channels(running_var, pk, xd->c, [&](int c) {
      return (1 - factor) * load_element(running_var, pk, c) + factor * var[c] * m / std::max(m - 1, 1.0);
    });
  if (save_mean) store_channels(save_mean, pk, xd->c, [&](int c) { return mean[c]; });
  if (save_invstd) store_channels(save_invstd, pk, xd->c, [&](int c) { return 1.0 / std::sqrt(var[c] + eps); });
  return CUDNN_STATUS_SUCCESS;
}

// dx = gamma * invstd / M * (M dy - sum dy - xhat sum(dy xhat)); dgamma = sum dy xhat;
// dbeta = sum dy; each blended with its own alpha/beta pair. The saved
// statistics are used when given (both or neither), else recomputed.
cudnnStatus_t cudnnBatchNormalizationBackward(cudnnHandle_t, cudnnBatchNormMode_t mode, const void* alpha_data,
                                              const void* beta_data, const void* alpha_param, const void* beta_param,
                                              const cudnnTensorDescriptor_t xd, const void* x,
                                              const cudnnTensorDescriptor_t dyd, const void* dy,
                                              const cudnnTensorDescriptor_t dxd, void* dx,
                                              const cudnnTensorDescriptor_t pd, const void* scale, void* dscale,
                                              void* dbias, double eps, const void* save_mean,
                                              const void* save_invstd) {
  if (!is_spatial(mode)) return CUDNN_STATUS_NOT_SUPPORTED;
  if (!same_shape(*xd, *dyd) || !same_shape(*xd, *dxd) || dyd->kind != xd->kind || dxd->kind != xd->kind ||
      !bn_params_match(*xd, *pd) || (save_mean == nullptr) != (save_invstd == nullptr))
    return CUDNN_STATUS_BAD_PARAM;
  const int k = xd->kind, pk = pd->kind;
  std::vector<double> mean, invstd;
  channel_moments(*xd, x, mean, invstd);
  for (int c = 0; c < xd->c; ++c) {
    invstd[c] = save_invstd ? load_element(save_invstd, pk, c) : 1.0 / std::sqrt(invstd[c] + eps);
    if (save_mean) mean[c] = load_element(save_mean, pk, c);
  }
  std::vector<double> sum_dy(xd->c, 0.0), sum_dy_xhat(xd->c, 0.0);
  for_each_element(*xd, [&](int, int c, int, int, int64_t i) {
    const double g = load_element(dy, k, i);
    sum_dy[c] += g;
    sum_dy_xhat[c] += g * (load_element(x, k, i) - mean[c]) * invstd[c];
  });
  const double m = static_cast<double>(xd->n) * xd->h * xd->w;
  std::vector<double> out(elements(*dxd));
  for_each_element(*xd, [&](int, int c, int, int, int64_t i) {
    const double xhat = (load_element(x, k, i) - mean[c]) * invstd[c];
    out[i] = load_element(scale, pk, c) * invstd[c] / m * (m * load_element(dy, k, i) - sum_dy[c] - xhat * sum_dy_xhat[c]);
  });
  blend(dx, k, out, alpha_data, beta_data);
  blend(dscale, pk, sum_dy_xhat, alpha_param, beta_param);
  blend(dbias, pk, sum_dy, alpha_param, beta_param);
  return CUDNN_STATUS_SUCCESS;
}

}  // extern "C"
