// Fused coordinate attention forward; see coord_attention.h.
//
// Proof: tests/test_cuda_kernels.cpp against an f64 CPU loop at H=W=1, 7, 33
// and H != W. Napkin math: x read twice (pool, apply), y written once; the
// transform touches N*(H+W)*(C+mip) values, small beside N*H*W*C.
#include "kernels/coord_attention.h"

#include <algorithm>

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;

// Both directional means in one launch. Block (tx channels, ty reducers);
// grid.x = N * (H + W): position p < H averages row h over w, p >= H averages
// column w over h.
template <typename T>
__global__ void __launch_bounds__(kThreads) ca_pool_kernel(const T* __restrict__ x, CoordAttentionShape s,
                                                           float* __restrict__ pooled) {
  __shared__ float red[kThreads];
  const int L = s.H + s.W;
  const int n = blockIdx.x / L, p = blockIdx.x % L;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  const int64_t C = s.C;
  const T* base;
  int64_t stride;
  int count;
  if (p < s.H) {
    base = x + ((static_cast<int64_t>(n) * s.H + p) * s.W) * C;
    stride = C;
    count = s.W;
  } else {
    base = x + (static_cast<int64_t>(n) * s.H * s.W + (p - s.H)) * C;
    stride = static_cast<int64_t>(s.W) * C;
    count = s.H;
  }
  float acc = 0.f;
  if (c < s.C)
    for (int k = threadIdx.y; k < count; k += blockDim.y) acc += to_f32(base[k * stride + c]);
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  red[tid] = acc;
  __syncthreads();
  for (int half = blockDim.y / 2; half > 0; half >>= 1) {
    if (threadIdx.y < half) red[tid] += red[tid + half * blockDim.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < s.C) pooled[static_cast<int64_t>(blockIdx.x) * C + c] = red[tid] / count;
}

// One block per (n, position): shared transform, then that direction's gate.
template <typename T>
__global__ void __launch_bounds__(kThreads) ca_transform_kernel(const float* __restrict__ pooled, CoordAttentionShape s,
                                                                KAct act, const T* __restrict__ w1,
                                                                const T* __restrict__ b1, const T* __restrict__ wh,
                                                                const T* __restrict__ bh, const T* __restrict__ ww,
                                                                const T* __restrict__ bw, float* __restrict__ hidden,
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
    const T* wr = w1 + static_cast<int64_t>(j) * s.C;
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
  const T* wg = p < s.H ? wh : ww;
  const T* bg = p < s.H ? bh : bw;
  for (int c = threadIdx.x; c < s.C; c += blockDim.x) {
    const T* wr = wg + static_cast<int64_t>(c) * s.mip;
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

template <typename T>
cudaError_t forward_t(const CoordAttentionShape& s, KAct act, const T* x, const T* w1, const T* b1, const T* wh,
                      const T* bh, const T* ww, const T* bw, T* y, void* ws, cudaStream_t st) {
  const CoordAttentionSaved sv = coord_attention_saved(s, ws);
  const int L = s.H + s.W;
  int tx = 1;
  while (tx < s.C && tx < 64) tx <<= 1;
  const int ty = kThreads / tx;
  ca_pool_kernel<T><<<dim3(s.N * L, ceil_div(s.C, tx)), dim3(tx, ty), 0, st>>>(x, s, sv.pooled);
  const size_t smem = static_cast<size_t>(s.C + s.mip) * sizeof(float);
  ca_transform_kernel<T><<<s.N * L, kThreads, smem, st>>>(sv.pooled, s, act, w1, b1, wh, bh, ww, bw, sv.hidden,
                                                          sv.gates);
  constexpr int V = vec_width<T>();
  const int64_t total = static_cast<int64_t>(s.N) * s.H * s.W * s.C;
  if (s.C % V == 0 && aligned_to(x, 16) && aligned_to(y, 16)) {
    ca_apply_kernel<T, V><<<std::min<unsigned>(65536, ceil_div(total / V, kThreads)), kThreads, 0, st>>>(
        x, sv.gates, y, s, total);
  } else {
    ca_apply_kernel<T, 1><<<std::min<unsigned>(65536, ceil_div(total, kThreads)), kThreads, 0, st>>>(
        x, sv.gates, y, s, total);
  }
  return cudaGetLastError();
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

cudaError_t coord_attention_forward(KDType dt, const CoordAttentionShape& s, KAct act, const void* x,
                                    const void* w1, const void* b1, const void* wh, const void* bh, const void* ww,
                                    const void* bw, void* y, void* workspace, cudaStream_t stream) {
  if (s.N < 1 || s.H < 1 || s.W < 1 || s.C < 1 || s.mip < 1 || workspace == nullptr) return cudaErrorInvalidValue;
#define KESTREL_CA_CALL(T)                                                                                   \
  forward_t<T>(s, act, static_cast<const T*>(x), static_cast<const T*>(w1), static_cast<const T*>(b1),      \
               static_cast<const T*>(wh), static_cast<const T*>(bh), static_cast<const T*>(ww),             \
               static_cast<const T*>(bw), static_cast<T*>(y), workspace, stream)
  switch (dt) {
    case KDType::F32: return KESTREL_CA_CALL(float);
    case KDType::F16: return KESTREL_CA_CALL(__half);
    case KDType::BF16: return KESTREL_CA_CALL(__nv_bfloat16);
  }
#undef KESTREL_CA_CALL
  return cudaErrorInvalidValue;
}

}  // namespace kestrel::kernels
