// CUDA softmax and losses; see loss.h. Row-wise work runs one warp per row
// (lanes stride over the classes, butterfly shuffles reduce: deterministic);
// softmax over a strided dim runs one thread per column, reading rows in order.
#include "engine/gpu/loss.h"

#include <climits>

#include "engine/gpu/device_scalar.cuh"
#include "engine/gpu/kernel_dtype.h"
#include "kernels/softmax_xent.h"

namespace kestrel::gpu {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_log(float v) { return logf(v); }
__device__ __forceinline__ double dev_log(double v) { return log(v); }
__device__ __forceinline__ float dev_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double dev_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float dev_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double dev_pow(double a, double b) { return pow(a, b); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const A other = __shfl_xor_sync(kFullMask, v, o);
    v = other > v ? other : v;
  }
  return v;
}

// Loops `row` over [0, rows) one warp per row; every lane of a warp sees the same row.
#define KESTREL_FOR_EACH_ROW(row, rows)                                                                     \
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; row < (rows); \
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock)

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x % kWarp); }

// log(sum_k exp(row[k] * inv_t)), computed by the whole warp.
template <typename T>
__device__ __forceinline__ MathT<T> warp_row_logsumexp(const T* row, int64_t n, MathT<T> inv_t) {
  using A = MathT<T>;
  A mx = -INFINITY;
  for (int64_t k = lane_id(); k < n; k += kWarp) {
    const A v = to_math(row[k]) * inv_t;
    mx = v > mx ? v : mx;
  }
  mx = warp_max(mx);
  A sum = 0;
  for (int64_t k = lane_id(); k < n; k += kWarp) sum += dev_exp(to_math(row[k]) * inv_t - mx);
  return mx + dev_log(warp_sum(sum));
}

unsigned row_grid(int64_t rows) { return grid_for(rows, kWarpsPerBlock); }


// ---------------------------------------------------------------- softmax

template <typename T>
__global__ void softmax_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t n, bool log) {
  using A = MathT<T>;
  KESTREL_FOR_EACH_ROW(r, rows) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    A mx = -INFINITY;
    for (int64_t k = lane_id(); k < n; k += kWarp) mx = to_math(xr[k]) > mx ? to_math(xr[k]) : mx;
    mx = warp_max(mx);
    A sum = 0;
    for (int64_t k = lane_id(); k < n; k += kWarp) sum += dev_exp(to_math(xr[k]) - mx);
    sum = warp_sum(sum);
    if (log) {
      const A log_sum = dev_log(sum);
      for (int64_t k = lane_id(); k < n; k += kWarp) yr[k] = from_math<T>((to_math(xr[k]) - mx) - log_sum);
    } else {
      const A inv = A(1) / sum;
      for (int64_t k = lane_id(); k < n; k += kWarp) yr[k] = from_math<T>(dev_exp(to_math(xr[k]) - mx) * inv);
    }
  }
}

// One thread per (outer, inner) column of [outer, n, inner].
template <typename T>
__global__ void softmax_cols_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t n,
                                    int64_t inner, bool log) {
  using A = MathT<T>;
  KESTREL_GRID_LOOP(col, outer * inner) {
    const int64_t base = (col / inner) * n * inner + col % inner;
    A mx = -INFINITY;
    for (int64_t k = 0; k < n; ++k) mx = to_math(x[base + k * inner]) > mx ? to_math(x[base + k * inner]) : mx;
    A sum = 0;
    for (int64_t k = 0; k < n; ++k) sum += dev_exp(to_math(x[base + k * inner]) - mx);
    if (log) {
      const A log_sum = dev_log(sum);
      for (int64_t k = 0; k < n; ++k) y[base + k * inner] = from_math<T>((to_math(x[base + k * inner]) - mx) - log_sum);
    } else {
      const A inv = A(1) / sum;
      for (int64_t k = 0; k < n; ++k)
        y[base + k * inner] = from_math<T>(dev_exp(to_math(x[base + k * inner]) - mx) * inv);
    }
  }
}

// softmax: gx = y * (gy - sum(gy * y)); log_softmax: gx = gy - exp(y) * sum(gy).
template <typename T>
__device__ __forceinline__ MathT<T> softmax_grad(MathT<T> y, MathT<T> gy, MathT<T> dot, bool log) {
  return log ? gy - dev_exp(y) * dot : y * (gy - dot);
}

template <typename T>
__global__ void softmax_backward_rows_kernel(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx,
                                             int64_t rows, int64_t n, bool log) {
  using A = MathT<T>;
  KESTREL_FOR_EACH_ROW(r, rows) {
    const int64_t base = r * n;
    A dot = 0;
    for (int64_t k = lane_id(); k < n; k += kWarp)
      dot += log ? to_math(gy[base + k]) : to_math(gy[base + k]) * to_math(y[base + k]);
    dot = warp_sum(dot);
    for (int64_t k = lane_id(); k < n; k += kWarp)
      gx[base + k] = from_math<T>(softmax_grad<T>(to_math(y[base + k]), to_math(gy[base + k]), dot, log));
  }
}

template <typename T>
__global__ void softmax_backward_cols_kernel(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx,
                                             int64_t outer, int64_t n, int64_t inner, bool log) {
  using A = MathT<T>;
  KESTREL_GRID_LOOP(col, outer * inner) {
    const int64_t base = (col / inner) * n * inner + col % inner;
    A dot = 0;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t e = base + k * inner;
      dot += log ? to_math(gy[e]) : to_math(gy[e]) * to_math(y[e]);
    }
    for (int64_t k = 0; k < n; ++k) {
      const int64_t e = base + k * inner;
      gx[e] = from_math<T>(softmax_grad<T>(to_math(y[e]), to_math(gy[e]), dot, log));
    }
  }
}

// ---------------------------------------------------------------- shared loss pieces

__global__ void labels_to_i32_kernel(const int64_t* __restrict__ in, int32_t* __restrict__ out, int64_t n) {
  KESTREL_GRID_LOOP(i, n) out[i] = static_cast<int32_t>(in[i]);
}

// out = factor * mean(rows), one block summing in a fixed order (deterministic).
template <typename T>
__global__ void mean_rows_kernel(const MathT<T>* __restrict__ rows, int64_t n, MathT<T> factor, T* __restrict__ out) {
  using A = MathT<T>;
  __shared__ A partial[kThreads];
  A sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) sum += rows[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = from_math<T>(factor * (partial[0] / static_cast<A>(n)));
}

// The backward's scale, read from the upstream gradient on the device: factor * upstream.
template <typename U, typename A>
__global__ void upstream_scale_kernel(const U* __restrict__ upstream, A factor, A* __restrict__ scale) {
  scale[0] = factor * static_cast<A>(to_math(upstream[0]));
}

template <typename T>
__global__ void scale_kernel(const T* __restrict__ in, const MathT<T>* __restrict__ scale, T* __restrict__ out,
                             int64_t total) {
  const MathT<T> s = scale[0];
  KESTREL_GRID_LOOP(i, total) out[i] = from_math<T>(to_math(in[i]) * s);
}

template <typename T>
__global__ void cast_to_f32_kernel(const T* __restrict__ in, float* __restrict__ out, int64_t total) {
  KESTREL_GRID_LOOP(i, total) out[i] = static_cast<float>(to_math(in[i]));
}

// gq = -scale * (x - lse) per row.
template <typename T>
__global__ void soft_target_grad_kernel(const T* __restrict__ x, const MathT<T>* __restrict__ scale,
                                        T* __restrict__ gq, int64_t rows, int64_t n) {
  using A = MathT<T>;
  const A s = scale[0];
  KESTREL_FOR_EACH_ROW(r, rows) {
    const T* xr = x + r * n;
    const A lse = warp_row_logsumexp(xr, n, A(1));
    for (int64_t k = lane_id(); k < n; k += kWarp) gq[r * n + k] = from_math<T>(-s * (to_math(xr[k]) - lse));
  }
}

// ---------------------------------------------------------------- focal loss

template <typename A>
struct FocalTerms {
  A value, dvalue_dlogpt;
};

// The CPU's formula (engine/cpu/loss.cpp) in the accumulation type.
template <typename A>
__device__ __forceinline__ FocalTerms<A> focal_terms(A logpt, A gamma, A alpha) {
  const A pt = dev_exp(logpt);
  const A one_minus = -dev_expm1(logpt);
  const A w = dev_pow(one_minus, gamma);
  const A second = (gamma == A(0) || one_minus <= A(0)) ? A(0) : gamma * dev_pow(one_minus, gamma - A(1)) * pt * logpt;
  return {-alpha * w * logpt, -alpha * (w - second)};
}

template <typename T>
__global__ void focal_forward_kernel(const T* __restrict__ x, const int32_t* __restrict__ labels, int64_t rows,
                                     int64_t n, MathT<T> gamma, MathT<T> alpha, MathT<T>* __restrict__ lse_out,
                                     MathT<T>* __restrict__ loss_rows) {
  using A = MathT<T>;
  KESTREL_FOR_EACH_ROW(r, rows) {
    const T* xr = x + r * n;
    const A lse = warp_row_logsumexp(xr, n, A(1));
    if (lane_id() == 0) {
      lse_out[r] = lse;
      loss_rows[r] = focal_terms<A>(to_math(xr[labels[r]]) - lse, gamma, alpha).value;
    }
  }
}

// gx = d * ([k == t] - p_k), d = scale * dloss/dlog p_t.
template <typename T>
__global__ void focal_backward_kernel(const T* __restrict__ x, const int32_t* __restrict__ labels,
                                      const MathT<T>* __restrict__ lse, const MathT<T>* __restrict__ scale,
                                      int64_t rows, int64_t n, MathT<T> gamma, MathT<T> alpha, T* __restrict__ gx) {
  using A = MathT<T>;
  KESTREL_FOR_EACH_ROW(r, rows) {
    const T* xr = x + r * n;
    const int32_t t = labels[r];
    const A d = scale[0] * focal_terms<A>(to_math(xr[t]) - lse[r], gamma, alpha).dvalue_dlogpt;
    for (int64_t k = lane_id(); k < n; k += kWarp)
      gx[r * n + k] = from_math<T>((k == t ? d : A(0)) - d * dev_exp(to_math(xr[k]) - lse[r]));
  }
}

// ---------------------------------------------------------------- distillation

template <typename T>
__global__ void kl_forward_kernel(const T* __restrict__ s, const T* __restrict__ t, int64_t rows, int64_t n,
                                  MathT<T> inv_t, MathT<T>* __restrict__ lse_s_out, MathT<T>* __restrict__ lse_t_out,
                                  MathT<T>* __restrict__ loss_rows) {
  using A = MathT<T>;
  KESTREL_FOR_EACH_ROW(r, rows) {
    const T* sr = s + r * n;
    const T* tr = t + r * n;
    const A lse_s = warp_row_logsumexp(sr, n, inv_t);
    const A lse_t = warp_row_logsumexp(tr, n, inv_t);
    A sum = 0;
    for (int64_t k = lane_id(); k < n; k += kWarp) {
      const A log_t = to_math(tr[k]) * inv_t - lse_t;
      const A log_s = to_math(sr[k]) * inv_t - lse_s;
      sum += dev_exp(log_t) * (log_t - log_s);  // 0 when p_t underflows, as torch's xlogy
    }
    sum = warp_sum(sum);
    if (lane_id() == 0) {
      lse_s_out[r] = lse_s;
      lse_t_out[r] = lse_t;
      loss_rows[r] = sum;
    }
  }
}

// gs = scale * (p_s - p_t).
template <typename T>
__global__ void kl_backward_kernel(const T* __restrict__ s, const T* __restrict__ t, const MathT<T>* __restrict__ lse_s,
                                   const MathT<T>* __restrict__ lse_t, const MathT<T>* __restrict__ scale,
                                   int64_t n, MathT<T> inv_t, int64_t total, T* __restrict__ gs) {
  using A = MathT<T>;
  const A sc = scale[0];
  KESTREL_GRID_LOOP(i, total) {
    const int64_t r = i / n;
    const A p_s = dev_exp(to_math(s[i]) * inv_t - lse_s[r]);
    const A p_t = dev_exp(to_math(t[i]) * inv_t - lse_t[r]);
    gs[i] = from_math<T>(sc * (p_s - p_t));
  }
}

#undef KESTREL_FOR_EACH_ROW

// ---------------------------------------------------------------- host helpers

// factor * mean(rows) as a scalar tensor of `dtype`; rows hold math_dtype(dtype) values.
Tensor mean_rows(const Tensor& rows, DType dtype, double factor, const char* op) {
  Tensor out = Tensor::empty({}, dtype, rows.device());
  launch_float_dev(out, op, [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    using A = MathT<T>;
    mean_rows_kernel<T><<<1, kThreads, 0, stream>>>(device_ptr<const A>(rows), rows.numel(), static_cast<A>(factor),
                                                    device_ptr<T>(out));
  });
  return out;
}

// factor * upstream as a one-element device tensor of math_dtype(dtype).
Tensor upstream_scale(const Tensor& upstream, double factor, DType dtype, const char* op) {
  KCHECK(upstream.numel() == 1, ShapeError, op, ": the gradient of a scalar loss must have one element, got ",
         shape_str(upstream.shape()));
  const Tensor up = upstream.contiguous();
  Tensor scale = Tensor::empty({1}, math_dtype(dtype), up.device());
  launch_float_dev(up, op, [&](auto tag, cudaStream_t stream) {
    using U = KESTREL_SCALAR(tag);
    if (scale.dtype() == DType::F64)
      upstream_scale_kernel<U, double><<<1, 1, 0, stream>>>(device_ptr<const U>(up), factor, device_ptr<double>(scale));
    else
      upstream_scale_kernel<U, float><<<1, 1, 0, stream>>>(device_ptr<const U>(up), static_cast<float>(factor),
                                                           device_ptr<float>(scale));
  });
  return scale;
}

kernels::SoftmaxXentShape xent_shape(const Tensor& logits, const char* op) {
  KCHECK(logits.size(0) <= INT_MAX && logits.size(1) <= INT_MAX, ShapeError, op, ": logits ",
         shape_str(logits.shape()), " exceed the CUDA kernel's int limits");
  kernels::SoftmaxXentShape s;
  s.B = static_cast<int>(logits.size(0));
  s.K = static_cast<int>(logits.size(1));
  return s;
}

// Soft targets as the f32 values the fused kernel reads.
Tensor targets_f32(const Tensor& q) {
  if (q.dtype() == DType::F32) return q;
  Tensor out = Tensor::empty(q.shape(), DType::F32, q.device());
  launch_float_dev(q, "cross_entropy_soft (targets to f32)", [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    cast_to_f32_kernel<T><<<grid_for(q.numel()), kThreads, 0, stream>>>(device_ptr<const T>(q), device_ptr<float>(out),
                                                                        q.numel());
  });
  return out;
}

Tensor fused_cross_entropy(const char* op, const Tensor& logits, const Tensor& labels_i32, const Tensor& soft_f32,
                           double label_smoothing, Tensor* grad_rows) {
  const kernels::KDType dt = kernel_dtype(logits.dtype(), op, "logits");
  const kernels::SoftmaxXentShape s = xent_shape(logits, op);
  const OnDevice on(logits);
  const Tensor rows = Tensor::empty({logits.size(0)}, DType::F32, logits.device());
  const Tensor grad = grad_rows != nullptr ? Tensor::empty(logits.shape(), logits.dtype(), logits.device()) : Tensor();
  KESTREL_CUDA_CHECK_CTX(
      kernels::softmax_cross_entropy(dt, s, logits.data_ptr(), device_ptr_or_null<const int32_t>(labels_i32),
                                     device_ptr_or_null<const float>(soft_f32), static_cast<float>(label_smoothing),
                                     1.0f, device_ptr<float>(rows), grad.defined() ? grad.data_ptr() : nullptr,
                                     on.stream),
      op, " logits ", shape_str(logits.shape()), " ", dtype_name(logits.dtype()));
  if (grad_rows != nullptr) *grad_rows = grad;
  return mean_rows(rows, logits.dtype(), 1.0, op);
}

}  // namespace

void softmax_forward(const Tensor& x, int64_t outer, int64_t n, int64_t inner, bool log, const Tensor& y) {
  launch_float_dev(x, log ? "log_softmax" : "softmax", [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    if (inner == 1)
      softmax_rows_kernel<T><<<row_grid(outer), kThreads, 0, stream>>>(device_ptr<const T>(x), device_ptr<T>(y), outer,
                                                                       n, log);
    else
      softmax_cols_kernel<T><<<grid_for(outer * inner), kThreads, 0, stream>>>(device_ptr<const T>(x),
                                                                               device_ptr<T>(y), outer, n, inner, log);
  });
}

void softmax_backward(const Tensor& y, const Tensor& gy, int64_t outer, int64_t n, int64_t inner, bool log,
                      const Tensor& gx) {
  launch_float_dev(y, log ? "log_softmax backward" : "softmax backward", [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    if (inner == 1)
      softmax_backward_rows_kernel<T><<<row_grid(outer), kThreads, 0, stream>>>(
          device_ptr<const T>(y), device_ptr<const T>(gy), device_ptr<T>(gx), outer, n, log);
    else
      softmax_backward_cols_kernel<T><<<grid_for(outer * inner), kThreads, 0, stream>>>(
          device_ptr<const T>(y), device_ptr<const T>(gy), device_ptr<T>(gx), outer, n, inner, log);
  });
}

Tensor labels_to_i32(const Tensor& target, int64_t classes, const char* op) {
  const std::vector<int64_t> host = target.to_vector_i64();
  for (size_t i = 0; i < host.size(); ++i) {
    KCHECK(host[i] >= 0 && host[i] < classes, ValueError, op, ": target[", i, "] = ", host[i],
           " is out of range for ", classes, " classes (labels must be in [0, ", classes - 1, "])");
  }
  const Tensor src = target.contiguous();
  Tensor out = Tensor::empty(target.shape(), DType::I32, target.device());
  const OnDevice on(src);
  labels_to_i32_kernel<<<grid_for(src.numel()), kThreads, 0, on.stream>>>(device_ptr<const int64_t>(src),
                                                                          device_ptr<int32_t>(out), src.numel());
  check_launch(op, target);
  return out;
}

Tensor cross_entropy_forward(const Tensor& logits, const Tensor& labels_i32, double label_smoothing,
                             Tensor* grad_rows) {
  return fused_cross_entropy("cross_entropy", logits, labels_i32, Tensor(), label_smoothing, grad_rows);
}

Tensor cross_entropy_soft_forward(const Tensor& logits, const Tensor& q, Tensor* grad_rows) {
  const char* op = "cross_entropy_soft";
  kernel_dtype(logits.dtype(), op, "logits");  // rejects f64 before any launch
  return fused_cross_entropy(op, logits, Tensor(), targets_f32(q), 0.0, grad_rows);
}

Tensor scale_row_grads(const Tensor& grad_rows, const Tensor& upstream) {
  const char* op = "cross_entropy backward";
  const Tensor scale = upstream_scale(upstream, 1.0 / static_cast<double>(grad_rows.size(0)), grad_rows.dtype(), op);
  Tensor out = Tensor::empty(grad_rows.shape(), grad_rows.dtype(), grad_rows.device());
  launch_float_dev(grad_rows, op, [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    scale_kernel<T><<<grid_for(out.numel()), kThreads, 0, stream>>>(
        device_ptr<const T>(grad_rows), device_ptr<const MathT<T>>(scale), device_ptr<T>(out), out.numel());
  });
  return out;
}

Tensor cross_entropy_soft_target_grad(const Tensor& logits, const Tensor& upstream) {
  const char* op = "cross_entropy_soft backward";
  const int64_t N = logits.size(0), C = logits.size(1);
  const Tensor scale = upstream_scale(upstream, 1.0 / static_cast<double>(N), logits.dtype(), op);
  Tensor gq = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  launch_float_dev(logits, op, [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    soft_target_grad_kernel<T><<<row_grid(N), kThreads, 0, stream>>>(
        device_ptr<const T>(logits), device_ptr<const MathT<T>>(scale), device_ptr<T>(gq), N, C);
  });
  return gq;
}

Tensor focal_forward(const Tensor& logits, const Tensor& labels_i32, double gamma, double alpha, Tensor* lse) {
  const char* op = "focal_loss";
  const int64_t N = logits.size(0), C = logits.size(1);
  const DType acc = math_dtype(logits.dtype());
  *lse = Tensor::empty({N}, acc, logits.device());
  const Tensor rows = Tensor::empty({N}, acc, logits.device());
  launch_float_dev(logits, op, [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    using A = MathT<T>;
    focal_forward_kernel<T><<<row_grid(N), kThreads, 0, stream>>>(
        device_ptr<const T>(logits), device_ptr<const int32_t>(labels_i32), N, C, static_cast<A>(gamma),
        static_cast<A>(alpha), device_ptr<A>(*lse), device_ptr<A>(rows));
  });
  return mean_rows(rows, logits.dtype(), 1.0, op);
}

Tensor focal_backward(const Tensor& logits, const Tensor& labels_i32, double gamma, double alpha, const Tensor& lse,
                      const Tensor& upstream) {
  const char* op = "focal_loss backward";
  const int64_t N = logits.size(0), C = logits.size(1);
  const Tensor scale = upstream_scale(upstream, 1.0 / static_cast<double>(N), logits.dtype(), op);
  Tensor gx = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  launch_float_dev(logits, op, [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    using A = MathT<T>;
    focal_backward_kernel<T><<<row_grid(N), kThreads, 0, stream>>>(
        device_ptr<const T>(logits), device_ptr<const int32_t>(labels_i32), device_ptr<const A>(lse),
        device_ptr<const A>(scale), N, C, static_cast<A>(gamma), static_cast<A>(alpha), device_ptr<T>(gx));
  });
  return gx;
}

Tensor kl_distill_forward(const Tensor& student, const Tensor& teacher, double temperature, Tensor* lse_student,
                          Tensor* lse_teacher) {
  const char* op = "kl_div_distill";
  const int64_t N = student.size(0), C = student.size(1);
  const DType acc = math_dtype(student.dtype());
  *lse_student = Tensor::empty({N}, acc, student.device());
  *lse_teacher = Tensor::empty({N}, acc, student.device());
  const Tensor rows = Tensor::empty({N}, acc, student.device());
  launch_float_dev(student, op, [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    using A = MathT<T>;
    kl_forward_kernel<T><<<row_grid(N), kThreads, 0, stream>>>(
        device_ptr<const T>(student), device_ptr<const T>(teacher), N, C, static_cast<A>(1.0 / temperature),
        device_ptr<A>(*lse_student), device_ptr<A>(*lse_teacher), device_ptr<A>(rows));
  });
  return mean_rows(rows, student.dtype(), temperature * temperature, op);
}

Tensor kl_distill_backward(const Tensor& student, const Tensor& teacher, double temperature,
                           const Tensor& lse_student, const Tensor& lse_teacher, const Tensor& upstream) {
  const char* op = "kl_div_distill backward";
  const int64_t N = student.size(0), C = student.size(1);
  // d/ds [T^2 KL / N] = T^2 / N * (1/T) * (p_s - p_t)
  const Tensor scale = upstream_scale(upstream, temperature / static_cast<double>(N), student.dtype(), op);
  Tensor gs = Tensor::empty(student.shape(), student.dtype(), student.device());
  launch_float_dev(student, op, [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    using A = MathT<T>;
    kl_backward_kernel<T><<<grid_for(N * C), kThreads, 0, stream>>>(
        device_ptr<const T>(student), device_ptr<const T>(teacher), device_ptr<const A>(lse_student),
        device_ptr<const A>(lse_teacher), device_ptr<const A>(scale), C, static_cast<A>(1.0 / temperature), N * C,
        device_ptr<T>(gs));
  });
  return gs;
}

}  // namespace kestrel::gpu
