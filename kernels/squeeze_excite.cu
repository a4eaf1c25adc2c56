// Fused squeeze-and-excitation forward; see squeeze_excite.h.
//
// Proof: tests/test_cuda_kernels.cpp against an f64 CPU loop (N=1..3, HW 1,
// 49, 1089, C 8..100, Cr 2..25). Napkin math: x is read twice (pool, apply)
// and y written once: 3 * N*HW*C*sizeof(T) bytes; the FCs are tiny.
#include "kernels/squeeze_excite.h"

#include <algorithm>

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;

int pool_splits(const SqueezeExciteShape& s) { return std::clamp((s.HW + 255) / 256, 1, 32); }

// Partial channel sums over a slice of HW: part[n][split][c].
template <typename T>
__global__ void __launch_bounds__(kThreads) se_pool_kernel(const T* __restrict__ x, int HW, int C, int splits,
                                                           float* __restrict__ part) {
  __shared__ float red[kThreads];
  const int n = blockIdx.x / splits, sp = blockIdx.x % splits;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  const int per = (HW + splits - 1) / splits;
  const int beg = sp * per, end = min(HW, beg + per);
  float acc = 0.f;
  if (c < C) {
    const T* xn = x + static_cast<int64_t>(n) * HW * C + c;
    for (int p = beg + threadIdx.y; p < end; p += blockDim.y) acc += to_f32(xn[static_cast<int64_t>(p) * C]);
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

// One block per sample: both FCs with the pooled vector in shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads) se_fc_kernel(const float* __restrict__ part, int HW, int C, int Cr,
                                                         int splits, const T* __restrict__ w1,
                                                         const T* __restrict__ b1, const T* __restrict__ w2,
                                                         const T* __restrict__ b2, KAct inner, KAct gate,
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
    const T* row = w1 + static_cast<int64_t>(j) * C;
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
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const T* row = w2 + static_cast<int64_t>(c) * Cr;
    float acc = b2 != nullptr ? to_f32(b2[c]) : 0.f;
    for (int j = 0; j < Cr; ++j) acc = fmaf(to_f32(row[j]), sh[j], acc);
    scale[static_cast<int64_t>(n) * C + c] = act_forward(gate, acc);
  }
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

template <typename T>
cudaError_t forward_t(const SqueezeExciteShape& s, KAct inner, KAct gate, const T* x, const T* w1, const T* b1,
                      const T* w2, const T* b2, T* y, void* ws, cudaStream_t st) {
  const int splits = pool_splits(s);
  const SqueezeExciteSaved sv = squeeze_excite_saved(s, ws);
  float* part = sv.scale + static_cast<int64_t>(s.N) * s.C;
  int tx = 1;
  while (tx < s.C && tx < 64) tx <<= 1;
  const int ty = kThreads / tx;
  se_pool_kernel<T><<<dim3(s.N * splits, ceil_div(s.C, tx)), dim3(tx, ty), 0, st>>>(x, s.HW, s.C, splits, part);
  const size_t smem = static_cast<size_t>(s.C + s.Cr) * sizeof(float);
  se_fc_kernel<T><<<s.N, kThreads, smem, st>>>(part, s.HW, s.C, s.Cr, splits, w1, b1, w2, b2, inner, gate, sv.pooled,
                                               sv.hidden, sv.scale);
  constexpr int V = vec_width<T>();
  const int64_t total = static_cast<int64_t>(s.N) * s.HW * s.C;
  const int64_t per_sample = static_cast<int64_t>(s.HW) * s.C;
  if (s.C % V == 0 && aligned_to(x, 16) && aligned_to(y, 16)) {
    se_apply_kernel<T, V><<<std::min<unsigned>(65536, ceil_div(total / V, kThreads)), kThreads, 0, st>>>(
        x, sv.scale, y, total, per_sample, s.C);
  } else {
    se_apply_kernel<T, 1><<<std::min<unsigned>(65536, ceil_div(total, kThreads)), kThreads, 0, st>>>(
        x, sv.scale, y, total, per_sample, s.C);
  }
  return cudaGetLastError();
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

cudaError_t squeeze_excite_forward(KDType dt, const SqueezeExciteShape& s, KAct inner, KAct gate, const void* x,
                                   const void* w1, const void* b1, const void* w2, const void* b2, void* y,
                                   void* workspace, cudaStream_t stream) {
  if (s.N < 1 || s.HW < 1 || s.C < 1 || s.Cr < 1 || workspace == nullptr) return cudaErrorInvalidValue;
  switch (dt) {
    case KDType::F32:
      return forward_t<float>(s, inner, gate, static_cast<const float*>(x), static_cast<const float*>(w1),
                              static_cast<const float*>(b1), static_cast<const float*>(w2),
                              static_cast<const float*>(b2), static_cast<float*>(y), workspace, stream);
    case KDType::F16:
      return forward_t<__half>(s, inner, gate, static_cast<const __half*>(x), static_cast<const __half*>(w1),
                               static_cast<const __half*>(b1), static_cast<const __half*>(w2),
                               static_cast<const __half*>(b2), static_cast<__half*>(y), workspace, stream);
    case KDType::BF16:
      return forward_t<__nv_bfloat16>(
          s, inner, gate, static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w1),
          static_cast<const __nv_bfloat16*>(b1), static_cast<const __nv_bfloat16*>(w2),
          static_cast<const __nv_bfloat16*>(b2), static_cast<__nv_bfloat16*>(y), workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kestrel::kernels
