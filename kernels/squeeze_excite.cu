// Fused squeeze-and-excitation forward and backward; see squeeze_excite.h.
//
// Proof: tests/test_cuda_kernels.cpp against f64 CPU loops (N 1..3, HW 1..4096,
// C 7..100, Cr 1..25; the backward loop is itself checked against central
// finite differences of the forward loop, on the CPU). Napkin math: the
// forward reads x twice (pool, apply) and writes y once: 3 * N*HW*C*sizeof(T)
// bytes; the backward reads dy and x (ds), dy again and writes dx: 4 passes.
// The FCs and weight gradients touch N*(C+Cr) values, small beside N*HW*C.
#include "kernels/squeeze_excite.h"

#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/gate_weight_grads.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;

int pool_splits(const SqueezeExciteShape& s) { return std::clamp((s.HW + 255) / 256, 1, 32); }

// Partial channel sums over a slice of HW: part[n][split][c] = sum x (or, for
// the backward, sum dy * x).
template <typename T, bool kProduct>
__global__ void __launch_bounds__(kThreads) se_pool_kernel(const T* __restrict__ x, const T* __restrict__ dy, int HW,
                                                           int C, int splits, float* __restrict__ part) {
  __shared__ float red[kThreads];
  const int n = blockIdx.x / splits, sp = blockIdx.x % splits;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  const int per = (HW + splits - 1) / splits;
  const int beg = sp * per, end = min(HW, beg + per);
  float acc = 0.f;
  if (c < C) {
    const int64_t off = static_cast<int64_t>(n) * HW * C + c;
    for (int p = beg + threadIdx.y; p < end; p += blockDim.y) {
      const int64_t e = off + static_cast<int64_t>(p) * C;
      acc += kProduct ? to_f32(x[e]) * to_f32(dy[e]) : to_f32(x[e]);
    }
  }
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  red[tid] = acc;
  __syncthreads();
  for (int half = blockDim.y / 2; half > 0; half >>= 1) {
    if (threadIdx.y < half) red[tid] += red[tid + half * blockDim.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < C) part[(static_cast<int64_t>(n) * splits + sp) * C + c] = red[tid];
}

template <typename T, bool kProduct>
void launch_pool(const SqueezeExciteShape& s, const T* x, const T* dy, float* part, cudaStream_t st) {
  int tx = 1;
  while (tx < s.C && tx < 64) tx <<= 1;
  const int ty = kThreads / tx;
  const int splits = pool_splits(s);
  se_pool_kernel<T, kProduct><<<dim3(s.N * splits, ceil_div(s.C, tx)), dim3(tx, ty), 0, st>>>(x, dy, s.HW, s.C,
                                                                                              splits, part);
}

// Gate pre-activation z[c] = b2[c] + sum_j w2[c,j] * a[j]; the forward and the
// backward evaluate it with this one function, so they agree bit for bit.
template <typename W>
__device__ __forceinline__ float gate_input(const W* __restrict__ w2, const W* __restrict__ b2, int c, int Cr,
                                            const float* a) {
  const W* row = w2 + static_cast<int64_t>(c) * Cr;
  float acc = b2 != nullptr ? to_f32(b2[c]) : 0.f;
  for (int j = 0; j < Cr; ++j) acc = fmaf(to_f32(row[j]), a[j], acc);
  return acc;
}

// One block per sample: both FCs with the pooled vector in shared memory.
template <typename W>
__global__ void __launch_bounds__(kThreads) se_fc_kernel(const float* __restrict__ part, int HW, int C, int Cr,
                                                         int splits, const W* __restrict__ w1,
                                                         const W* __restrict__ b1, const W* __restrict__ w2,
                                                         const W* __restrict__ b2, KAct inner, KAct gate,
                                                         float* __restrict__ pooled, float* __restrict__ hidden,
                                                         float* __restrict__ scale) {
  extern __shared__ float sm[];  // pooled [C], hidden activations [Cr]
  float* sp = sm;
  float* sh = sm + C;
  const int n = blockIdx.x;
  const float inv = 1.f / static_cast<float>(HW);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.f;
    for (int k = 0; k < splits; ++k) acc += part[(static_cast<int64_t>(n) * splits + k) * C + c];
    sp[c] = acc * inv;
    pooled[static_cast<int64_t>(n) * C + c] = acc * inv;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int j = warp; j < Cr; j += nwarps) {
    const W* row = w1 + static_cast<int64_t>(j) * C;
    float acc = 0.f;
    for (int c = lane; c < C; c += 32) acc = fmaf(to_f32(row[c]), sp[c], acc);
    acc = warp_sum(acc);
    if (lane == 0) {
      const float h = acc + (b1 != nullptr ? to_f32(b1[j]) : 0.f);
      hidden[static_cast<int64_t>(n) * Cr + j] = h;
      sh[j] = act_forward(inner, h);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    scale[static_cast<int64_t>(n) * C + c] = act_forward(gate, gate_input(w2, b2, c, Cr, sh));
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) se_apply_kernel(const T* x, const float* __restrict__ scale, T* y,
                                                            int64_t total, int64_t per_sample, int C) {
  const int64_t nvec = total / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    const int64_t n = e / per_sample;
    const int c0 = static_cast<int>(e % C);
    const float* sc = scale + n * C + c0;
    float v[V];
    load_f32<T, V>(x + e, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] *= sc[k];
    store_f32<T, V>(y + e, v);
  }
}

// One block per sample: from ds = part sums to dz, dh and dpool (/ HW).
template <typename W>
__global__ void __launch_bounds__(kThreads) se_fc_backward_kernel(const float* __restrict__ part, int HW, int C, int Cr,
                                                                  int splits, const W* __restrict__ w1,
                                                                  const W* __restrict__ w2, const W* __restrict__ b2,
                                                                  KAct inner, KAct gate,
                                                                  const float* __restrict__ hidden,
                                                                  float* __restrict__ dz_out,
                                                                  float* __restrict__ dh_out,
                                                                  float* __restrict__ dpool) {
  extern __shared__ float sm[];  // dz [C], inner activations [Cr], dh [Cr]
  float* sdz = sm;
  float* sa = sm + C;
  float* sdh = sa + Cr;
  const int n = blockIdx.x;
  const float* hn = hidden + static_cast<int64_t>(n) * Cr;
  for (int j = threadIdx.x; j < Cr; j += blockDim.x) sa[j] = act_forward(inner, hn[j]);
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float ds = 0.f;
    for (int k = 0; k < splits; ++k) ds += part[(static_cast<int64_t>(n) * splits + k) * C + c];
    const float dz = ds * act_derivative(gate, gate_input(w2, b2, c, Cr, sa));
    sdz[c] = dz;
    dz_out[static_cast<int64_t>(n) * C + c] = dz;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int j = warp; j < Cr; j += nwarps) {
    float acc = 0.f;
    for (int c = lane; c < C; c += 32) acc = fmaf(to_f32(w2[static_cast<int64_t>(c) * Cr + j]), sdz[c], acc);
    acc = warp_sum(acc);
    if (lane == 0) {
      const float dh = acc * act_derivative(inner, hn[j]);
      sdh[j] = dh;
      dh_out[static_cast<int64_t>(n) * Cr + j] = dh;
    }
  }
  __syncthreads();
  const float inv = 1.f / static_cast<float>(HW);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < Cr; ++j) acc = fmaf(to_f32(w1[static_cast<int64_t>(j) * C + c]), sdh[j], acc);
    dpool[static_cast<int64_t>(n) * C + c] = acc * inv;
  }
}

// dx = dy * scale[n,c] + dpool[n,c]
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) se_dx_kernel(const T* dy, const float* __restrict__ scale,
                                                         const float* __restrict__ dpool, T* dx, int64_t total,
                                                         int64_t per_sample, int C) {
  const int64_t nvec = total / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    const int64_t nc = (e / per_sample) * C + e % C;
    float v[V];
    load_f32<T, V>(dy + e, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = fmaf(v[k], scale[nc + k], dpool[nc + k]);
    store_f32<T, V>(dx + e, v);
  }
}

unsigned grid_for(int64_t items) { return std::min<unsigned>(65536, std::max(1u, ceil_div(items, kThreads))); }

// Backward workspace: ds partials [N, splits, C], dz [N, C], dh [N, Cr],
// dpool [N, C], then the weight-gradient chunk sums (reused by both FCs).
struct BackwardScratch {
  float *part, *dz, *dh, *dpool, *grads;
};
size_t grad_floats(const SqueezeExciteShape& s) {
  return std::max(gate_grad_workspace_floats(s.N, s.C, s.Cr), gate_grad_workspace_floats(s.N, s.Cr, s.C));
}
BackwardScratch backward_scratch(const SqueezeExciteShape& s, void* ws) {
  float* f = static_cast<float*>(ws);
  const int64_t n = s.N;
  BackwardScratch b;
  b.part = f;
  b.dz = b.part + n * pool_splits(s) * s.C;
  b.dh = b.dz + n * s.C;
  b.dpool = b.dh + n * s.Cr;
  b.grads = b.dpool + n * s.C;
  return b;
}

template <typename T, typename W>
cudaError_t forward_t(const SqueezeExciteShape& s, KAct inner, KAct gate, const T* x, const W* w1, const W* b1,
                      const W* w2, const W* b2, T* y, void* ws, cudaStream_t st) {
  const SqueezeExciteSaved sv = squeeze_excite_saved(s, ws);
  float* part = sv.scale + static_cast<int64_t>(s.N) * s.C;
  launch_pool<T, false>(s, x, nullptr, part, st);
  const size_t smem = static_cast<size_t>(s.C + s.Cr) * sizeof(float);
  se_fc_kernel<W><<<s.N, kThreads, smem, st>>>(part, s.HW, s.C, s.Cr, pool_splits(s), w1, b1, w2, b2, inner, gate,
                                               sv.pooled, sv.hidden, sv.scale);
  constexpr int V = vec_width<T>();
  const int64_t total = static_cast<int64_t>(s.N) * s.HW * s.C;
  const int64_t per_sample = static_cast<int64_t>(s.HW) * s.C;
  if (s.C % V == 0 && aligned_to(x, 16) && aligned_to(y, 16)) {
    se_apply_kernel<T, V><<<grid_for(total / V), kThreads, 0, st>>>(x, sv.scale, y, total, per_sample, s.C);
  } else {
    se_apply_kernel<T, 1><<<grid_for(total), kThreads, 0, st>>>(x, sv.scale, y, total, per_sample, s.C);
  }
  return cudaGetLastError();
}

template <typename T, typename W>
cudaError_t backward_t(const SqueezeExciteShape& s, KAct inner, KAct gate, const T* dy, const T* x, const W* w1,
                       const W* w2, const W* b2, const void* fws, T* dx, W* dw1, W* db1, W* dw2, W* db2, void* ws,
                       cudaStream_t st) {
  const SqueezeExciteSaved sv = squeeze_excite_saved(s, const_cast<void*>(fws));
  const BackwardScratch b = backward_scratch(s, ws);
  launch_pool<T, true>(s, x, dy, b.part, st);
  const size_t smem = static_cast<size_t>(s.C + 2 * s.Cr) * sizeof(float);
  se_fc_backward_kernel<W><<<s.N, kThreads, smem, st>>>(b.part, s.HW, s.C, s.Cr, pool_splits(s), w1, w2, b2, inner,
                                                        gate, sv.hidden, b.dz, b.dh, b.dpool);
  GateGradArgs g2;  // dw2 [C, Cr] = dz^T inner(hidden)
  g2.A = b.dz;
  g2.a_cols = s.C;
  g2.B = sv.hidden;
  g2.b_cols = s.Cr;
  g2.b_act = inner;
  g2.rows.count = s.N;
  launch_gate_grads<W>(g2, b.grads, dw2, db2, st);
  GateGradArgs g1;  // dw1 [Cr, C] = dh^T pooled
  g1.A = b.dh;
  g1.a_cols = s.Cr;
  g1.B = sv.pooled;
  g1.b_cols = s.C;
  g1.rows.count = s.N;
  launch_gate_grads<W>(g1, b.grads, dw1, db1, st);
  constexpr int V = vec_width<T>();
  const int64_t total = static_cast<int64_t>(s.N) * s.HW * s.C;
  const int64_t per_sample = static_cast<int64_t>(s.HW) * s.C;
  if (s.C % V == 0 && aligned_to(dy, 16) && aligned_to(dx, 16)) {
    se_dx_kernel<T, V><<<grid_for(total / V), kThreads, 0, st>>>(dy, sv.scale, b.dpool, dx, total, per_sample, s.C);
  } else {
    se_dx_kernel<T, 1><<<grid_for(total), kThreads, 0, st>>>(dy, sv.scale, b.dpool, dx, total, per_sample, s.C);
  }
  return cudaGetLastError();
}

bool valid(const SqueezeExciteShape& s, KDType dt, KDType param_dt) {
  const int64_t shared_floats = static_cast<int64_t>(s.C) + 2 * s.Cr;  // the backward's, the larger
  return s.N >= 1 && s.HW >= 1 && s.C >= 1 && s.Cr >= 1 && (param_dt == dt || param_dt == KDType::F32) &&
         shared_floats * sizeof(float) <= kDefaultDynamicSharedBytes;
}

}  // namespace

size_t squeeze_excite_workspace_bytes(const SqueezeExciteShape& s) {
  const size_t n = static_cast<size_t>(s.N);
  return (n * s.C * 2 + n * s.Cr + n * pool_splits(s) * s.C) * sizeof(float);
}

SqueezeExciteSaved squeeze_excite_saved(const SqueezeExciteShape& s, void* workspace) {
  float* f = static_cast<float*>(workspace);
  const int64_t n = s.N;
  return {f, f + n * s.C, f + n * s.C + n * s.Cr};
}

size_t squeeze_excite_backward_workspace_bytes(const SqueezeExciteShape& s) {
  const size_t n = static_cast<size_t>(s.N);
  return (n * pool_splits(s) * s.C + 2 * n * s.C + n * s.Cr + grad_floats(s)) * sizeof(float);
}

cudaError_t squeeze_excite_forward(KDType dt, KDType param_dt, const SqueezeExciteShape& s, KAct inner, KAct gate,
                                   const void* x, const void* w1, const void* b1, const void* w2, const void* b2,
                                   void* y, void* workspace, cudaStream_t stream) {
  if (!valid(s, dt, param_dt) || workspace == nullptr) return cudaErrorInvalidValue;
#define KESTREL_SE_FWD(T, W)                                                                                       \
  forward_t<T, W>(s, inner, gate, static_cast<const T*>(x), static_cast<const W*>(w1), static_cast<const W*>(b1), \
                  static_cast<const W*>(w2), static_cast<const W*>(b2), static_cast<T*>(y), workspace, stream)
  KESTREL_ACT_PARAM_DISPATCH(dt, param_dt, KESTREL_SE_FWD);
#undef KESTREL_SE_FWD
}

cudaError_t squeeze_excite_forward(KDType dt, const SqueezeExciteShape& s, KAct inner, KAct gate, const void* x,
                                   const void* w1, const void* b1, const void* w2, const void* b2, void* y,
                                   void* workspace, cudaStream_t stream) {
  return squeeze_excite_forward(dt, dt, s, inner, gate, x, w1, b1, w2, b2, y, workspace, stream);
}

cudaError_t squeeze_excite_backward(KDType dt, KDType param_dt, const SqueezeExciteShape& s, KAct inner, KAct gate,
                                    const void* dy, const void* x, const void* w1, const void* w2, const void* b2,
                                    const void* forward_workspace, void* dx, void* dw1, void* db1, void* dw2,
                                    void* db2, void* workspace, cudaStream_t stream) {
  if (!valid(s, dt, param_dt) || forward_workspace == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
#define KESTREL_SE_BWD(T, W)                                                                                     \
  backward_t<T, W>(s, inner, gate, static_cast<const T*>(dy), static_cast<const T*>(x),                         \
                   static_cast<const W*>(w1), static_cast<const W*>(w2), static_cast<const W*>(b2),             \
                   forward_workspace, static_cast<T*>(dx), static_cast<W*>(dw1), static_cast<W*>(db1),          \
                   static_cast<W*>(dw2), static_cast<W*>(db2), workspace, stream)
  KESTREL_ACT_PARAM_DISPATCH(dt, param_dt, KESTREL_SE_BWD);
#undef KESTREL_SE_BWD
}


}  // namespace kestrel::kernels
