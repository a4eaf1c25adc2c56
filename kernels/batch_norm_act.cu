// Batch norm + activation (+ residual), NHWC, training and inference, and the
// fused backward. See batch_norm_act.h.
//
// Proof: tests/test_cuda_kernels.cpp checks forward (y, saved and running
// stats) and backward (dx, dresidual, dgamma, dbeta) against an f64 CPU loop
// for every activation, with and without residual, at odd shapes; the bench
// times it beside cudnnBatchNormalizationForwardTraining + cudnnActivationForward.
//
// Napkin math, forward training, f16: stats pass reads x (2 B/elem), apply
// pass reads x (+ residual) and writes y: 6 B/elem without residual, 8 with.
// Backward: reduce pass reads dy, x (4 B) and apply pass reads dy, x, writes dx
// (6 B): 10 B/elem. "% of copy bandwidth" in the bench counts these bytes.
#include "kernels/batch_norm_act.h"

#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;

struct ReduceGeom {
  int tx, ty, cblocks, splits;
};

ReduceGeom reduce_geometry(const BatchNormShape& s) {
  ReduceGeom g;
  g.tx = 1;
  while (g.tx < s.C && g.tx < 32) g.tx <<= 1;
  g.ty = kThreads / g.tx;
  g.cblocks = (s.C + g.tx - 1) / g.tx;
  const int64_t rows_per_block_min = static_cast<int64_t>(g.ty) * 16;
  const int64_t want = (s.M + rows_per_block_min - 1) / rows_per_block_min;
  const int64_t cap = std::max<int64_t>(1, 2048 / g.cblocks);
  g.splits = static_cast<int>(std::clamp<int64_t>(std::min(want, cap), 1, 1024));
  return g;
}

// Workspace (f32): [3][splits][C] partials, then scale[C], shift[C], coef[C].
struct WsLayout {
  float* p0;
  float* p1;
  float* p2;
  float* scale;
  float* shift;
  float* coef;
};
WsLayout ws_layout(void* ws, const BatchNormShape& s, int splits) {
  float* f = static_cast<float*>(ws);
  const int64_t plane = static_cast<int64_t>(splits) * s.C;
  return {f, f + plane, f + 2 * plane, f + 3 * plane, f + 3 * plane + s.C, f + 3 * plane + 2 * s.C};
}

// ---- training stats: per-(split, channel) Welford partials.
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_stats_partial_kernel(const T* __restrict__ x, int64_t M, int C,
                                                                    int splits, float* __restrict__ pmean,
                                                                    float* __restrict__ pm2, float* __restrict__ pcnt) {
  __shared__ float sh[3][kThreads];
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t per = (M + splits - 1) / splits;
  const int64_t beg = blockIdx.y * per, end = min(M, beg + per);
  Welford w;
  if (c < C) {
    for (int64_t r = beg + threadIdx.y; r < end; r += blockDim.y) w.add(to_f32(x[r * C + c]));
  }
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  sh[0][tid] = w.mean;
  sh[1][tid] = w.m2;
  sh[2][tid] = w.count;
  __syncthreads();
  for (int half = blockDim.y / 2; half > 0; half >>= 1) {
    if (threadIdx.y < half) {
      const int o = tid + half * blockDim.x;
      w.merge(sh[0][o], sh[1][o], sh[2][o]);
      sh[0][tid] = w.mean;
      sh[1][tid] = w.m2;
      sh[2][tid] = w.count;
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < C) {
    const int64_t i = static_cast<int64_t>(blockIdx.y) * C + c;
    pmean[i] = w.mean;
    pm2[i] = w.m2;
    pcnt[i] = w.count;
  }
}

__global__ void bn_stats_finalize_kernel(const float* __restrict__ pmean, const float* __restrict__ pm2,
                                         const float* __restrict__ pcnt, int C, int splits, int64_t M, float eps,
                                         float momentum, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, float* running_mean, float* running_var,
                                         float* save_mean, float* save_invstd, float* scale, float* shift) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  Welford w;
  for (int sp = 0; sp < splits; ++sp) {
    const int64_t i = static_cast<int64_t>(sp) * C + c;
    w.merge(pmean[i], pm2[i], pcnt[i]);
  }
  const float var = w.count > 0.f ? w.m2 / w.count : 0.f;
  const float invstd = rsqrtf(var + eps);
  if (save_mean != nullptr) save_mean[c] = w.mean;
  if (save_invstd != nullptr) save_invstd[c] = invstd;
  if (running_mean != nullptr) running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * w.mean;
  if (running_var != nullptr) {
    const float unbiased = M > 1 ? w.m2 / static_cast<float>(M - 1) : var;
    running_var[c] = (1.f - momentum) * running_var[c] + momentum * unbiased;
  }
  const float g = gamma != nullptr ? gamma[c] : 1.f;
  const float b = beta != nullptr ? beta[c] : 0.f;
  scale[c] = g * invstd;
  shift[c] = b - w.mean * g * invstd;
}

__global__ void bn_inference_coef_kernel(int C, float eps, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, const float* __restrict__ rmean,
                                         const float* __restrict__ rvar, float* scale, float* shift) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const float invstd = rsqrtf(rvar[c] + eps);
  const float g = gamma != nullptr ? gamma[c] : 1.f;
  const float b = beta != nullptr ? beta[c] : 0.f;
  scale[c] = g * invstd;
  shift[c] = b - rmean[c] * g * invstd;
}

// ---- apply: y = act(x * scale[c] + shift[c] + residual), V elements per step.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) bn_apply_kernel(const T* __restrict__ x, const T* __restrict__ res,
                                                            const float* __restrict__ scale,
                                                            const float* __restrict__ shift, T* __restrict__ y,
                                                            int64_t total, int C, int64_t ypitch, KAct act) {
  const int64_t nvec = total / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    const int c0 = static_cast<int>(e % C);
    float xv[V], rv[V];
    load_f32<T, V>(x + e, xv);
    if (res != nullptr) {
      load_f32<T, V>(res + e, rv);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) rv[k] = 0.f;
    }
    float out[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = (V == 1) ? c0 : c0 + k;  // V divides C: the vector stays in one row
      out[k] = act_forward(act, fmaf(xv[k], scale[c], shift[c]) + rv[k]);
    }
    store_f32<T, V>(y + (e / C) * ypitch + c0, out);
  }
}

// ---- backward reduce: per channel sum(dz) and sum(dz * xhat).
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_backward_reduce_kernel(
    const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ res, const float* __restrict__ mean,
    const float* __restrict__ invstd, const float* __restrict__ gamma, const float* __restrict__ beta, int64_t M,
    int C, int64_t dypitch, int splits, KAct act, float* __restrict__ psum, float* __restrict__ psumx) {
  __shared__ float sh[2][kThreads];
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t per = (M + splits - 1) / splits;
  const int64_t beg = blockIdx.y * per, end = min(M, beg + per);
  float s0 = 0.f, s1 = 0.f;
  if (c < C) {
    const float mu = mean[c], is = invstd[c];
    const float g = gamma != nullptr ? gamma[c] : 1.f, b = beta != nullptr ? beta[c] : 0.f;
    for (int64_t r = beg + threadIdx.y; r < end; r += blockDim.y) {
      const int64_t e = r * C + c;
      const float xhat = (to_f32(x[e]) - mu) * is;
      float dz = to_f32(dy[r * dypitch + c]);
      if (act != KAct::None) {
        const float z = fmaf(g, xhat, b) + (res != nullptr ? to_f32(res[e]) : 0.f);
        dz *= act_derivative(act, z);
      }
      s0 += dz;
      s1 = fmaf(dz, xhat, s1);
    }
  }
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  sh[0][tid] = s0;
  sh[1][tid] = s1;
  __syncthreads();
  for (int half = blockDim.y / 2; half > 0; half >>= 1) {
    if (threadIdx.y < half) {
      sh[0][tid] += sh[0][tid + half * blockDim.x];
      sh[1][tid] += sh[1][tid + half * blockDim.x];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < C) {
    psum[static_cast<int64_t>(blockIdx.y) * C + c] = sh[0][tid];
    psumx[static_cast<int64_t>(blockIdx.y) * C + c] = sh[1][tid];
  }
}

// dx = gamma*invstd * (dz - sum(dz)/M - xhat * sum(dz*xhat)/M); stores
// coef_a = gamma*invstd, coef_b = sum(dz)/M, coef_d = sum(dz*xhat)/M. With
// frozen statistics the batch terms vanish: coef_b = coef_d = 0 (and splits
// may be 0 when no parameter gradient is asked for).
__global__ void bn_backward_finalize_kernel(const float* __restrict__ psum, const float* __restrict__ psumx, int C,
                                            int splits, int64_t M, bool frozen, const float* __restrict__ gamma,
                                            const float* __restrict__ invstd, float* dgamma, float* dbeta,
                                            float* coef_a, float* coef_b, float* coef_d) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s0 = 0.f, s1 = 0.f;
  for (int sp = 0; sp < splits; ++sp) {
    s0 += psum[static_cast<int64_t>(sp) * C + c];
    s1 += psumx[static_cast<int64_t>(sp) * C + c];
  }
  if (dbeta != nullptr) dbeta[c] = s0;
  if (dgamma != nullptr) dgamma[c] = s1;
  const float g = gamma != nullptr ? gamma[c] : 1.f;
  coef_a[c] = g * invstd[c];
  coef_b[c] = frozen ? 0.f : s0 / static_cast<float>(M);
  coef_d[c] = frozen ? 0.f : s1 / static_cast<float>(M);
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) bn_backward_apply_kernel(
    const T* dy, const T* __restrict__ x, const T* __restrict__ res, const float* __restrict__ mean,
    const float* __restrict__ invstd, const float* __restrict__ gamma, const float* __restrict__ beta,
    const float* __restrict__ ca, const float* __restrict__ cb, const float* __restrict__ cd, T* dx,
    T* __restrict__ dres, int64_t total, int C, int64_t dypitch, KAct act) {
  const int64_t nvec = total / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    const int c0 = static_cast<int>(e % C);
    float g[V], xv[V], rv[V];
    load_f32<T, V>(dy + (e / C) * dypitch + c0, g);
    load_f32<T, V>(x + e, xv);
    if (res != nullptr && act != KAct::None) {
      load_f32<T, V>(res + e, rv);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) rv[k] = 0.f;
    }
    float dz[V], out[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = (V == 1) ? c0 : c0 + k;
      const float xhat = (xv[k] - mean[c]) * invstd[c];
      dz[k] = g[k];
      if (act != KAct::None) {
        const float gm = gamma != nullptr ? gamma[c] : 1.f, bt = beta != nullptr ? beta[c] : 0.f;
        dz[k] *= act_derivative(act, fmaf(gm, xhat, bt) + rv[k]);
      }
      out[k] = ca[c] * (dz[k] - cb[c] - xhat * cd[c]);
    }
    if (dres != nullptr) store_f32<T, V>(dres + e, dz);
    if (dx != nullptr) store_f32<T, V>(dx + e, out);
  }
}

unsigned elementwise_blocks(int64_t nvec) {
  return static_cast<unsigned>(std::clamp<int64_t>((nvec + kThreads - 1) / kThreads, 1, 65536));
}

// Reduction geometry and workspace carve-up of one call.
struct Plan {
  ReduceGeom g;
  WsLayout w;
};
Plan make_plan(const BatchNormShape& s, void* ws) {
  const ReduceGeom g = reduce_geometry(s);
  return {g, ws_layout(ws, s, g.splits)};
}

// Runs launch(std::integral_constant<int, V>{}, blocks) with V the 16-byte
// vector width of T when every pointer allows it (C % V == 0, aligned), else 1.
template <typename T, typename Launch>
void launch_elementwise(const BatchNormShape& s, std::initializer_list<const void*> ptrs, Launch&& launch) {
  constexpr int V = vec_width<T>();
  bool vec = s.C % V == 0 && s.yp() % V == 0;
  for (const void* p : ptrs) vec = vec && (p == nullptr || aligned_to(p, 16));
  const int64_t total = s.M * s.C;
  if (vec)
    launch(std::integral_constant<int, V>{}, elementwise_blocks(total / V));
  else
    launch(std::integral_constant<int, 1>{}, elementwise_blocks(total));
}

template <typename T>
void launch_apply(const BatchNormShape& s, const T* x, const T* res, const float* scale, const float* shift, T* y,
                  KAct act, cudaStream_t st) {
  launch_elementwise<T>(s, {x, y, res}, [&](auto vec, unsigned blocks) {
    bn_apply_kernel<T, decltype(vec)::value><<<blocks, kThreads, 0, st>>>(x, res, scale, shift, y, s.M * s.C, s.C,
                                                                          s.yp(), act);
  });
}

template <typename T>
void forward_training_t(const BatchNormShape& s, const BatchNormActArgs& a, const T* x, const T* res,
                        const float* gamma, const float* beta, float* rmean, float* rvar, float* smean,
                        float* sinvstd, T* y, void* ws, cudaStream_t st) {
  const Plan p = make_plan(s, ws);
  bn_stats_partial_kernel<T><<<dim3(p.g.cblocks, p.g.splits), dim3(p.g.tx, p.g.ty), 0, st>>>(
      x, s.M, s.C, p.g.splits, p.w.p0, p.w.p1, p.w.p2);
  bn_stats_finalize_kernel<<<ceil_div(s.C, 128), 128, 0, st>>>(p.w.p0, p.w.p1, p.w.p2, s.C, p.g.splits, s.M, a.eps,
                                                               a.momentum, gamma, beta, rmean, rvar, smean, sinvstd,
                                                               p.w.scale, p.w.shift);
  launch_apply<T>(s, x, res, p.w.scale, p.w.shift, y, a.act, st);
}

template <typename T>
void forward_inference_t(const BatchNormShape& s, const BatchNormActArgs& a, const T* x, const T* res,
                         const float* gamma, const float* beta, const float* rmean, const float* rvar, T* y, void* ws,
                         cudaStream_t st) {
  const Plan p = make_plan(s, ws);
  bn_inference_coef_kernel<<<ceil_div(s.C, 128), 128, 0, st>>>(s.C, a.eps, gamma, beta, rmean, rvar, p.w.scale,
                                                               p.w.shift);
  launch_apply<T>(s, x, res, p.w.scale, p.w.shift, y, a.act, st);
}

// frozen: the statistics were constants of the forward (eval mode); the
// reduction then runs only for dgamma / dbeta.
template <typename T>
void backward_t(const BatchNormShape& s, const BatchNormActArgs& a, bool frozen, const T* dy, const T* x,
                const T* res, const float* gamma, const float* beta, const float* smean, const float* sinvstd, T* dx,
                T* dres, float* dgamma, float* dbeta, void* ws, cudaStream_t st) {
  const Plan p = make_plan(s, ws);
  const bool reduce = !frozen || dgamma != nullptr || dbeta != nullptr;
  if (reduce) {
    bn_backward_reduce_kernel<T><<<dim3(p.g.cblocks, p.g.splits), dim3(p.g.tx, p.g.ty), 0, st>>>(
        dy, x, res, smean, sinvstd, gamma, beta, s.M, s.C, s.yp(), p.g.splits, a.act, p.w.p0, p.w.p1);
  }
  bn_backward_finalize_kernel<<<ceil_div(s.C, 128), 128, 0, st>>>(p.w.p0, p.w.p1, s.C, reduce ? p.g.splits : 0, s.M,
                                                                  frozen, gamma, sinvstd, dgamma, dbeta, p.w.scale,
                                                                  p.w.shift, p.w.coef);
  if (dx == nullptr && dres == nullptr) return;  // parameter gradients only
  launch_elementwise<T>(s, {dy, x, dx, dres, res}, [&](auto vec, unsigned blocks) {
    bn_backward_apply_kernel<T, decltype(vec)::value><<<blocks, kThreads, 0, st>>>(
        dy, x, res, smean, sinvstd, gamma, beta, p.w.scale, p.w.shift, p.w.coef, dx, dres, s.M * s.C, s.C, s.yp(),
        a.act);
  });
}

bool valid(const BatchNormShape& s) { return s.M >= 1 && s.C >= 1 && (s.y_pitch == 0 || s.y_pitch >= s.C); }

template <typename T>
struct Elem {
  using type = T;
};

// The launchers' shared prologue and epilogue: rejects bad arguments, runs
// launch(Elem<T>{}) with T the element type of dt, returns the launch status.
template <typename Launch>
cudaError_t launch_typed(KDType dt, bool args_ok, Launch&& launch) {
  if (!args_ok) return cudaErrorInvalidValue;
  switch (dt) {
    case KDType::F32: launch(Elem<float>{}); break;
    case KDType::F16: launch(Elem<__half>{}); break;
    case KDType::BF16: launch(Elem<__nv_bfloat16>{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

size_t batch_norm_act_workspace_bytes(const BatchNormShape& s) {
  const ReduceGeom g = reduce_geometry(s);
  return (static_cast<size_t>(3) * g.splits * s.C + 3 * static_cast<size_t>(s.C)) * sizeof(float);
}

cudaError_t batch_norm_act_forward_training(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a,
                                            const void* x, const void* residual, const float* gamma,
                                            const float* beta, float* running_mean, float* running_var,
                                            float* save_mean, float* save_invstd, void* y, void* workspace,
                                            cudaStream_t stream) {
  return launch_typed(dt, valid(s) && workspace != nullptr, [&](auto e) {
    using T = typename decltype(e)::type;
    forward_training_t<T>(s, a, static_cast<const T*>(x), static_cast<const T*>(residual), gamma, beta, running_mean,
                          running_var, save_mean, save_invstd, static_cast<T*>(y), workspace, stream);
  });
}

cudaError_t batch_norm_act_forward_inference(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a,
                                             const void* x, const void* residual, const float* gamma,
                                             const float* beta, const float* running_mean, const float* running_var,
                                             void* y, void* workspace, cudaStream_t stream) {
  const bool ok = valid(s) && workspace != nullptr && running_mean != nullptr && running_var != nullptr;
  return launch_typed(dt, ok, [&](auto e) {
    using T = typename decltype(e)::type;
    forward_inference_t<T>(s, a, static_cast<const T*>(x), static_cast<const T*>(residual), gamma, beta,
                           running_mean, running_var, static_cast<T*>(y), workspace, stream);
  });
}

cudaError_t batch_norm_act_backward(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a, const void* dy,
                                    const void* x, const void* residual, const float* gamma, const float* beta,
                                    const float* save_mean, const float* save_invstd, void* dx, void* dresidual,
                                    float* dgamma, float* dbeta, void* workspace, cudaStream_t stream) {
  return launch_typed(dt, valid(s) && workspace != nullptr, [&](auto e) {
    using T = typename decltype(e)::type;
    backward_t<T>(s, a, false, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(residual),
                  gamma, beta, save_mean, save_invstd, static_cast<T*>(dx), static_cast<T*>(dresidual), dgamma, dbeta,
                  workspace, stream);
  });
}

cudaError_t batch_norm_act_backward_frozen(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a,
                                           const void* dy, const void* x, const void* residual, const float* gamma,
                                           const float* beta, const float* mean, const float* invstd, void* dx,
                                           void* dresidual, float* dgamma, float* dbeta, void* workspace,
                                           cudaStream_t stream) {
  return launch_typed(dt, valid(s) && workspace != nullptr && mean != nullptr && invstd != nullptr, [&](auto e) {
    using T = typename decltype(e)::type;
    backward_t<T>(s, a, true, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(residual),
                  gamma, beta, mean, invstd, static_cast<T*>(dx), static_cast<T*>(dresidual), dgamma, dbeta,
                  workspace, stream);
  });
}

}  // namespace kestrel::kernels
