// Fused coordinate attention forward and backward; see coord_attention.h.
//
// Proof: tests/test_cuda_kernels.cpp against f64 CPU loops at H=W=1, 7, 33
// and H != W (the backward loop is itself checked against central finite
// differences of the forward loop, on the CPU). Napkin math: the forward
// reads x once per direction to pool (twice; the second read mostly from L2
// for small images) and once to apply, and writes y once; the backward reads
// dy and x once per direction, dy once more and writes dx. The transform
// touches N*(H+W)*(C+mip) values, small beside N*H*W*C.
#include "kernels/coord_attention.h"

#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/gate_weight_grads.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;

// Both directional reductions in one launch. Block (tx channels, ty reducers);
// grid.x = N * (H + W): position p < H reduces row h over w, p >= H reduces
// column w over h. Forward: the mean of x. Backward: sum of dy * x * the
// other direction's gate (the gradient at this direction's gate).
template <typename T, bool kBackward>
__global__ void __launch_bounds__(kThreads) ca_pool_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                                           const float* __restrict__ gates, CoordAttentionShape s,
                                                           float* __restrict__ out) {
  __shared__ float red[kThreads];
  const int L = s.H + s.W;
  const int n = blockIdx.x / L, p = blockIdx.x % L;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  const int64_t C = s.C;
  int64_t base, stride;
  int count;
  const float* other;  // the other direction's gates, indexed by k
  if (p < s.H) {
    base = ((static_cast<int64_t>(n) * s.H + p) * s.W) * C;
    stride = C;
    count = s.W;
    other = gates + (static_cast<int64_t>(n) * L + s.H) * C;
  } else {
    base = (static_cast<int64_t>(n) * s.H * s.W + (p - s.H)) * C;
    stride = static_cast<int64_t>(s.W) * C;
    count = s.H;
    other = gates + static_cast<int64_t>(n) * L * C;
  }
  float acc = 0.f;
  if (c < s.C) {
    for (int k = threadIdx.y; k < count; k += blockDim.y) {
      const int64_t e = base + k * stride + c;
      if (kBackward) {
        acc = fmaf(to_f32(dy[e]) * to_f32(x[e]), other[k * C + c], acc);
      } else {
        acc += to_f32(x[e]);
      }
    }
  }
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  red[tid] = acc;
  __syncthreads();
  for (int half = blockDim.y / 2; half > 0; half >>= 1) {
    if (threadIdx.y < half) red[tid] += red[tid + half * blockDim.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < s.C)
    out[static_cast<int64_t>(blockIdx.x) * C + c] = kBackward ? red[tid] : red[tid] / count;
}

template <typename T, bool kBackward>
void launch_pool(const CoordAttentionShape& s, const T* x, const T* dy, const float* gates, float* out,
                 cudaStream_t st) {
  int tx = 1;
  while (tx < s.C && tx < 64) tx <<= 1;
  const int ty = kThreads / tx;
  ca_pool_kernel<T, kBackward><<<dim3(s.N * (s.H + s.W), ceil_div(s.C, tx)), dim3(tx, ty), 0, st>>>(x, dy, gates, s,
                                                                                                   out);
}

// One block per (n, position): shared transform, then that direction's gate.
template <typename W>
__global__ void __launch_bounds__(kThreads) ca_transform_kernel(const float* __restrict__ pooled, CoordAttentionShape s,
                                                                KAct act, const W* __restrict__ w1,
                                                                const W* __restrict__ b1, const W* __restrict__ wh,
                                                                const W* __restrict__ bh, const W* __restrict__ ww,
                                                                const W* __restrict__ bw, float* __restrict__ hidden,
                                                                float* __restrict__ gates) {
  extern __shared__ float sm[];  // pooled [C], t [mip]
  float* sp = sm;
  float* st = sm + s.C;
  const int64_t row = blockIdx.x;
  const int p = static_cast<int>(row % (s.H + s.W));
  for (int c = threadIdx.x; c < s.C; c += blockDim.x) sp[c] = pooled[row * s.C + c];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int j = warp; j < s.mip; j += nwarps) {
    const W* wr = w1 + static_cast<int64_t>(j) * s.C;
    float acc = 0.f;
    for (int c = lane; c < s.C; c += 32) acc = fmaf(to_f32(wr[c]), sp[c], acc);
    acc = warp_sum(acc);
    if (lane == 0) {
      const float h = acc + (b1 != nullptr ? to_f32(b1[j]) : 0.f);
      hidden[row * s.mip + j] = h;
      st[j] = act_forward(act, h);
    }
  }
  __syncthreads();
  const W* wg = p < s.H ? wh : ww;
  const W* bg = p < s.H ? bh : bw;
  for (int c = threadIdx.x; c < s.C; c += blockDim.x) {
    const W* wr = wg + static_cast<int64_t>(c) * s.mip;
    float acc = bg != nullptr ? to_f32(bg[c]) : 0.f;
    for (int j = 0; j < s.mip; ++j) acc = fmaf(to_f32(wr[j]), st[j], acc);
    gates[row * s.C + c] = 1.f / (1.f + __expf(-acc));
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) ca_apply_kernel(const T* x, const float* __restrict__ gates, T* y,
                                                            CoordAttentionShape s, int64_t total) {
  const int64_t nvec = total / V;
  const int L = s.H + s.W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    const int c0 = static_cast<int>(e % s.C);
    const int64_t pix = e / s.C;
    const int w = static_cast<int>(pix % s.W);
    const int h = static_cast<int>((pix / s.W) % s.H);
    const int64_t n = pix / (static_cast<int64_t>(s.W) * s.H);
    const float* gh = gates + (n * L + h) * s.C + c0;
    const float* gw = gates + (n * L + s.H + w) * s.C + c0;
    float v[V];
    load_f32<T, V>(x + e, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] *= gh[k] * gw[k];
    store_f32<T, V>(y + e, v);
  }
}

// One block per (n, position): gate gradient -> dz (in place over da), dt
// (through the shared transform's activation), and the pooled gradient
// divided by the pooling count (dpool).
template <typename W>
__global__ void __launch_bounds__(kThreads) ca_transform_backward_kernel(
    CoordAttentionShape s, KAct act, const W* __restrict__ w1, const W* __restrict__ wh, const W* __restrict__ ww,
    const float* __restrict__ hidden, const float* __restrict__ gates, float* __restrict__ dz,
    float* __restrict__ dt_out, float* __restrict__ dpool) {
  extern __shared__ float sm[];  // dz [C], dt [mip]
  float* sdz = sm;
  float* sdt = sm + s.C;
  const int64_t row = blockIdx.x;
  const int p = static_cast<int>(row % (s.H + s.W));
  for (int c = threadIdx.x; c < s.C; c += blockDim.x) {
    const float g = gates[row * s.C + c];
    const float d = dz[row * s.C + c] * g * (1.f - g);
    sdz[c] = d;
    dz[row * s.C + c] = d;
  }
  __syncthreads();
  const W* wg = p < s.H ? wh : ww;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int j = warp; j < s.mip; j += nwarps) {
    float acc = 0.f;
    for (int c = lane; c < s.C; c += 32) acc = fmaf(to_f32(wg[static_cast<int64_t>(c) * s.mip + j]), sdz[c], acc);
    acc = warp_sum(acc);
    if (lane == 0) {
      const float d = acc * act_derivative(act, hidden[row * s.mip + j]);
      sdt[j] = d;
      dt_out[row * s.mip + j] = d;
    }
  }
  __syncthreads();
  const float inv = 1.f / static_cast<float>(p < s.H ? s.W : s.H);
  for (int c = threadIdx.x; c < s.C; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < s.mip; ++j) acc = fmaf(to_f32(w1[static_cast<int64_t>(j) * s.C + c]), sdt[j], acc);
    dpool[row * s.C + c] = acc * inv;
  }
}

// dx = dy * ah * aw + dpool[h] + dpool[H + w]
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) ca_dx_kernel(const T* dy, const float* __restrict__ gates,
                                                         const float* __restrict__ dpool, T* dx,
                                                         CoordAttentionShape s, int64_t total) {
  const int64_t nvec = total / V;
  const int L = s.H + s.W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    const int c0 = static_cast<int>(e % s.C);
    const int64_t pix = e / s.C;
    const int w = static_cast<int>(pix % s.W);
    const int h = static_cast<int>((pix / s.W) % s.H);
    const int64_t n = pix / (static_cast<int64_t>(s.W) * s.H);
    const int64_t ih = (n * L + h) * s.C + c0, iw = (n * L + s.H + w) * s.C + c0;
    float v[V];
    load_f32<T, V>(dy + e, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = v[k] * (gates[ih + k] * gates[iw + k]) + (dpool[ih + k] + dpool[iw + k]);
    store_f32<T, V>(dx + e, v);
  }
}

unsigned grid_for(int64_t items) { return std::min<unsigned>(65536, std::max(1u, ceil_div(items, kThreads))); }

int64_t rows_of(const CoordAttentionShape& s) { return static_cast<int64_t>(s.N) * (s.H + s.W); }

// Backward workspace: dz [N, L, C], dt [N, L, mip], dpool [N, L, C], then the
// weight-gradient chunk sums (reused by the three transforms in turn).
struct BackwardScratch {
  float *dz, *dt, *dpool, *grads;
};
size_t grad_floats(const CoordAttentionShape& s) {
  return std::max({gate_grad_workspace_floats(static_cast<int64_t>(s.N) * s.H, s.C, s.mip),
                   gate_grad_workspace_floats(static_cast<int64_t>(s.N) * s.W, s.C, s.mip),
                   gate_grad_workspace_floats(rows_of(s), s.mip, s.C)});
}
BackwardScratch backward_scratch(const CoordAttentionShape& s, void* ws) {
  float* f = static_cast<float*>(ws);
  const int64_t rows = rows_of(s);
  BackwardScratch b;
  b.dz = f;
  b.dt = b.dz + rows * s.C;
  b.dpool = b.dt + rows * s.mip;
  b.grads = b.dpool + rows * s.C;
  return b;
}

template <typename T>
void launch_apply(const CoordAttentionShape& s, const T* x, const float* gates, T* y, cudaStream_t st) {
  constexpr int V = vec_width<T>();
  const int64_t total = static_cast<int64_t>(s.N) * s.H * s.W * s.C;
  if (s.C % V == 0 && aligned_to(x, 16) && aligned_to(y, 16)) {
    ca_apply_kernel<T, V><<<grid_for(total / V), kThreads, 0, st>>>(x, gates, y, s, total);
  } else {
    ca_apply_kernel<T, 1><<<grid_for(total), kThreads, 0, st>>>(x, gates, y, s, total);
  }
}

template <typename T, typename W>
cudaError_t forward_t(const CoordAttentionShape& s, KAct act, const T* x, const W* w1, const W* b1, const W* wh,
                      const W* bh, const W* ww, const W* bw, T* y, void* ws, cudaStream_t st) {
  const CoordAttentionSaved sv = coord_attention_saved(s, ws);
  launch_pool<T, false>(s, x, nullptr, nullptr, sv.pooled, st);
  const size_t smem = static_cast<size_t>(s.C + s.mip) * sizeof(float);
  ca_transform_kernel<W><<<s.N * (s.H + s.W), kThreads, smem, st>>>(sv.pooled, s, act, w1, b1, wh, bh, ww, bw,
                                                                    sv.hidden, sv.gates);
  launch_apply<T>(s, x, sv.gates, y, st);
  return cudaGetLastError();
}

template <typename T, typename W>
cudaError_t backward_t(const CoordAttentionShape& s, KAct act, const T* dy, const T* x, const W* w1, const W* wh,
                       const W* ww, const void* fws, T* dx, W* dw1, W* db1, W* dwh, W* dbh, W* dww, W* dbw, void* ws,
                       cudaStream_t st) {
  const CoordAttentionSaved sv = coord_attention_saved(s, const_cast<void*>(fws));
  const BackwardScratch b = backward_scratch(s, ws);
  const int L = s.H + s.W;
  launch_pool<T, true>(s, x, dy, sv.gates, b.dz, st);
  const size_t smem = static_cast<size_t>(s.C + s.mip) * sizeof(float);
  ca_transform_backward_kernel<W><<<s.N * L, kThreads, smem, st>>>(s, act, w1, wh, ww, sv.hidden, sv.gates, b.dz,
                                                                   b.dt, b.dpool);
  GateGradArgs gh;  // dwh [C, mip] over rows [0, H) of each sample
  gh.A = b.dz;
  gh.a_cols = s.C;
  gh.B = sv.hidden;
  gh.b_cols = s.mip;
  gh.b_act = act;
  gh.rows.count = static_cast<int64_t>(s.N) * s.H;
  gh.rows.per_sample = s.H;
  gh.rows.sample_stride = L;
  launch_gate_grads<W>(gh, b.grads, dwh, dbh, st);
  GateGradArgs gw = gh;  // dww over rows [H, H+W)
  gw.rows.count = static_cast<int64_t>(s.N) * s.W;
  gw.rows.per_sample = s.W;
  gw.rows.offset = s.H;
  launch_gate_grads<W>(gw, b.grads, dww, dbw, st);
  GateGradArgs g1;  // dw1 [mip, C] over every row
  g1.A = b.dt;
  g1.a_cols = s.mip;
  g1.B = sv.pooled;
  g1.b_cols = s.C;
  g1.rows.count = rows_of(s);
  launch_gate_grads<W>(g1, b.grads, dw1, db1, st);
  constexpr int V = vec_width<T>();
  const int64_t total = static_cast<int64_t>(s.N) * s.H * s.W * s.C;
  if (s.C % V == 0 && aligned_to(dy, 16) && aligned_to(dx, 16)) {
    ca_dx_kernel<T, V><<<grid_for(total / V), kThreads, 0, st>>>(dy, sv.gates, b.dpool, dx, s, total);
  } else {
    ca_dx_kernel<T, 1><<<grid_for(total), kThreads, 0, st>>>(dy, sv.gates, b.dpool, dx, s, total);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t gate_forward_t(const CoordAttentionShape& s, const T* x, const float* gates, T* y, cudaStream_t st) {
  launch_apply<T>(s, x, gates, y, st);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gate_backward_t(const CoordAttentionShape& s, const T* dy, const T* x, const float* gates, T* dx,
                            float* dgates, cudaStream_t st) {
  if (dgates != nullptr) launch_pool<T, true>(s, x, dy, gates, dgates, st);
  if (dx != nullptr) launch_apply<T>(s, dy, gates, dx, st);  // dy * ah * aw
  return cudaGetLastError();
}

bool valid(const CoordAttentionShape& s, KDType dt, KDType param_dt) {
  return s.N >= 1 && s.H >= 1 && s.W >= 1 && s.C >= 1 && s.mip >= 1 && (param_dt == dt || param_dt == KDType::F32);
}

// The transform kernels keep C + mip floats in dynamic shared memory (the gate kernels none).
bool transform_fits(const CoordAttentionShape& s) {
  return (static_cast<int64_t>(s.C) + s.mip) * sizeof(float) <= kDefaultDynamicSharedBytes;
}

}  // namespace

size_t coord_attention_workspace_bytes(const CoordAttentionShape& s) {
  const size_t rows = static_cast<size_t>(s.N) * (s.H + s.W);
  return rows * (2 * static_cast<size_t>(s.C) + s.mip) * sizeof(float);
}

CoordAttentionSaved coord_attention_saved(const CoordAttentionShape& s, void* workspace) {
  float* f = static_cast<float*>(workspace);
  const int64_t rows = static_cast<int64_t>(s.N) * (s.H + s.W);
  return {f, f + rows * s.C, f + rows * s.C + rows * s.mip};
}

size_t coord_attention_backward_workspace_bytes(const CoordAttentionShape& s) {
  const size_t rows = static_cast<size_t>(rows_of(s));
  return (rows * (2 * static_cast<size_t>(s.C) + s.mip) + grad_floats(s)) * sizeof(float);
}

cudaError_t coord_attention_forward(KDType dt, KDType param_dt, const CoordAttentionShape& s, KAct act, const void* x,
                                    const void* w1, const void* b1, const void* wh, const void* bh, const void* ww,
                                    const void* bw, void* y, void* workspace, cudaStream_t stream) {
  if (!valid(s, dt, param_dt) || !transform_fits(s) || workspace == nullptr) return cudaErrorInvalidValue;
#define KESTREL_CA_FWD(T, W)                                                                                  \
  forward_t<T, W>(s, act, static_cast<const T*>(x), static_cast<const W*>(w1), static_cast<const W*>(b1),    \
                  static_cast<const W*>(wh), static_cast<const W*>(bh), static_cast<const W*>(ww),           \
                  static_cast<const W*>(bw), static_cast<T*>(y), workspace, stream)
  KESTREL_ACT_PARAM_DISPATCH(dt, param_dt, KESTREL_CA_FWD);
#undef KESTREL_CA_FWD
}

cudaError_t coord_attention_forward(KDType dt, const CoordAttentionShape& s, KAct act, const void* x,
                                    const void* w1, const void* b1, const void* wh, const void* bh, const void* ww,
                                    const void* bw, void* y, void* workspace, cudaStream_t stream) {
  return coord_attention_forward(dt, dt, s, act, x, w1, b1, wh, bh, ww, bw, y, workspace, stream);
}

cudaError_t coord_attention_backward(KDType dt, KDType param_dt, const CoordAttentionShape& s, KAct act,
                                     const void* dy, const void* x, const void* w1, const void* wh, const void* ww,
                                     const void* forward_workspace, void* dx, void* dw1, void* db1, void* dwh,
                                     void* dbh, void* dww, void* dbw, void* workspace, cudaStream_t stream) {
  if (!valid(s, dt, param_dt) || !transform_fits(s) || forward_workspace == nullptr || workspace == nullptr)
    return cudaErrorInvalidValue;
#define KESTREL_CA_BWD(T, W)                                                                                     \
  backward_t<T, W>(s, act, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const W*>(w1),      \
                   static_cast<const W*>(wh), static_cast<const W*>(ww), forward_workspace, static_cast<T*>(dx), \
                   static_cast<W*>(dw1), static_cast<W*>(db1), static_cast<W*>(dwh), static_cast<W*>(dbh),      \
                   static_cast<W*>(dww), static_cast<W*>(dbw), workspace, stream)
  KESTREL_ACT_PARAM_DISPATCH(dt, param_dt, KESTREL_CA_BWD);
#undef KESTREL_CA_BWD
}

cudaError_t coord_gate_forward(KDType dt, const CoordAttentionShape& s, const void* x, const float* gates, void* y,
                               cudaStream_t stream) {
  if (!valid(s, dt, dt) || gates == nullptr) return cudaErrorInvalidValue;
#define KESTREL_GATE_FWD(T, W) gate_forward_t<T>(s, static_cast<const T*>(x), gates, static_cast<T*>(y), stream)
  KESTREL_ACT_PARAM_DISPATCH(dt, dt, KESTREL_GATE_FWD);
#undef KESTREL_GATE_FWD
}

cudaError_t coord_gate_backward(KDType dt, const CoordAttentionShape& s, const void* dy, const void* x,
                                const float* gates, void* dx, float* dgates, cudaStream_t stream) {
  if (!valid(s, dt, dt) || gates == nullptr) return cudaErrorInvalidValue;
#define KESTREL_GATE_BWD(T, W)                                                                                   \
  gate_backward_t<T>(s, static_cast<const T*>(dy), static_cast<const T*>(x), gates, static_cast<T*>(dx), dgates, \
                     stream)
  KESTREL_ACT_PARAM_DISPATCH(dt, dt, KESTREL_GATE_BWD);
#undef KESTREL_GATE_BWD
}

}  // namespace kestrel::kernels
