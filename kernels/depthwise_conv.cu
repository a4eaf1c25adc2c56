// Depthwise convolution, NHWC. See depthwise_conv.h for layouts.
//
// Proof: the CPU reference is the naive loop in tests/test_cuda_kernels.cpp
// (and engine conv2d with groups == C once the CPU op lands); every variant
// below (unrolled K=3/5/7 and generic, vector and scalar) is checked there on
// random inputs at odd shapes with NaN-poisoned outputs. Timing beside
// cuDNN's grouped convolution is bench/bench_kernels.cpp.
//
// Napkin math, forward, f16, 3x3 stride 1: each output element reads one
// input element from DRAM (the 8 neighbour reads hit L1/L2), 9 weights from
// shared memory, and writes one element: bytes ~= (in + out) * 2, so at
// 3 TB/s a [256,32,32,96] layer (25 M elements each way) takes ~33 us.
#include "kernels/depthwise_conv.h"

#include <algorithm>
#include <type_traits>

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kPixPerThread = 4;
constexpr int kWeightSmemBytes = 32 * 1024;

int pow2_ceil(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}
int pow2_floor(int v) {
  int p = 1;
  while (p * 2 <= v) p <<= 1;
  return p;
}

// ---- forward: one thread = V channels of up to kPixPerThread output pixels.
// Block (tx, ty): tx channel vectors x ty pixels; weights of the block's
// channels sit in shared memory as f32 [tap][tx*V].
template <typename T, int K, int V>
__global__ void __launch_bounds__(kThreads) dw_forward_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                              const T* __restrict__ bias, T* __restrict__ y,
                                                              DepthwiseConvShape s) {
  extern __shared__ float smem[];
  const int KH = K > 0 ? K : s.KH, KW = K > 0 ? K : s.KW, KK = KH * KW;
  const int cw = blockDim.x * V;  // channels per block
  const int cbase = blockIdx.y * cw;
  for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < KK * cw; i += blockDim.x * blockDim.y) {
    const int tap = i / cw, c = cbase + i % cw;
    smem[i] = c < s.C ? to_f32(w[static_cast<int64_t>(c) * KK + tap]) : 0.f;
  }
  __syncthreads();
  const int c0 = cbase + threadIdx.x * V;
  if (c0 >= s.C) return;
  const int OH = s.OH(), OW = s.OW(), xp = s.xp(), yp = s.yp();
  const int64_t P = static_cast<int64_t>(s.N) * OH * OW;
  float b[V];
#pragma unroll
  for (int i = 0; i < V; ++i) b[i] = 0.f;
  if (bias != nullptr) {
#pragma unroll
    for (int i = 0; i < V; ++i) b[i] = (V > 1 || c0 + i < s.C) ? to_f32(bias[c0 + i]) : 0.f;
  }
  const float* wl = smem + threadIdx.x * V;
  for (int j = 0; j < kPixPerThread; ++j) {
    const int64_t p = (static_cast<int64_t>(blockIdx.x) * kPixPerThread + j) * blockDim.y + threadIdx.y;
    if (p >= P) return;
    const int ow = static_cast<int>(p % OW);
    const int64_t t = p / OW;
    const int oh = static_cast<int>(t % OH);
    const int n = static_cast<int>(t / OH);
    float acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = b[i];
    const int ih0 = oh * s.stride_h - s.pad_h, iw0 = ow * s.stride_w - s.pad_w;
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
      const int ih = ih0 + kh * s.dil_h;
      if (ih < 0 || ih >= s.H) continue;
      const T* xrow = x + (static_cast<int64_t>(n) * s.H + ih) * s.W * xp + c0;
#pragma unroll
      for (int kw = 0; kw < KW; ++kw) {
        const int iw = iw0 + kw * s.dil_w;
        if (iw < 0 || iw >= s.W) continue;
        float xv[V];
        load_f32<T, V>(xrow + static_cast<int64_t>(iw) * xp, xv);
        const float* wt = wl + (kh * KW + kw) * cw;
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = fmaf(xv[i], wt[i], acc[i]);
      }
    }
    if (s.act != KAct::None) {
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = act_forward(s.act, acc[i]);
    }
    store_f32<T, V>(y + p * yp + c0, acc);
  }
}

// ---- backward data: one thread = V channels of up to kPixPerThread input
// pixels; gathers the output pixels whose window covers it (no atomics).
template <typename T, int K, int V>
__global__ void __launch_bounds__(kThreads) dw_backward_data_kernel(const T* __restrict__ dy, const T* __restrict__ w,
                                                                    T* __restrict__ dx, DepthwiseConvShape s,
                                                                    bool accumulate) {
  extern __shared__ float smem[];
  const int KH = K > 0 ? K : s.KH, KW = K > 0 ? K : s.KW, KK = KH * KW;
  const int cw = blockDim.x * V;
  const int cbase = blockIdx.y * cw;
  for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < KK * cw; i += blockDim.x * blockDim.y) {
    const int tap = i / cw, c = cbase + i % cw;
    smem[i] = c < s.C ? to_f32(w[static_cast<int64_t>(c) * KK + tap]) : 0.f;
  }
  __syncthreads();
  const int c0 = cbase + threadIdx.x * V;
  if (c0 >= s.C) return;
  const int OH = s.OH(), OW = s.OW(), xp = s.xp(), yp = s.yp();
  const int64_t P = static_cast<int64_t>(s.N) * s.H * s.W;
  const float* wl = smem + threadIdx.x * V;
  for (int j = 0; j < kPixPerThread; ++j) {
    const int64_t p = (static_cast<int64_t>(blockIdx.x) * kPixPerThread + j) * blockDim.y + threadIdx.y;
    if (p >= P) return;
    const int iw = static_cast<int>(p % s.W);
    const int64_t t = p / s.W;
    const int ih = static_cast<int>(t % s.H);
    const int n = static_cast<int>(t / s.H);
    float acc[V];
    if (accumulate) {
      load_f32<T, V>(dx + p * xp + c0, acc);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = 0.f;
    }
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
      const int th = ih + s.pad_h - kh * s.dil_h;
      if (th < 0 || th % s.stride_h != 0) continue;
      const int oh = th / s.stride_h;
      if (oh >= OH) continue;
      const T* dyrow = dy + (static_cast<int64_t>(n) * OH + oh) * OW * yp + c0;
#pragma unroll
      for (int kw = 0; kw < KW; ++kw) {
        const int tw = iw + s.pad_w - kw * s.dil_w;
        if (tw < 0 || tw % s.stride_w != 0) continue;
        const int ow = tw / s.stride_w;
        if (ow >= OW) continue;
        float gv[V];
        load_f32<T, V>(dyrow + static_cast<int64_t>(ow) * yp, gv);
        const float* wt = wl + (kh * KW + kw) * cw;
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = fmaf(gv[i], wt[i], acc[i]);
      }
    }
    store_f32<T, V>(dx + p * xp + c0, acc);
  }
}

// ---- backward weight. Block (tx, ty), grid (splits, channel blocks, KH):
// each thread sums dy * x for its V channels, one kernel row kh and every kw,
// over a strided subset of the split's output pixels; the block reduces over
// ty in shared memory and writes one partial per (split, kh, kw, c).
// Workspace layout: [splits][KH*KW][C] then bias partials [splits][C].
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) dw_backward_weight_partial_kernel(const T* __restrict__ x,
                                                                              const T* __restrict__ dy,
                                                                              float* __restrict__ ws,
                                                                              DepthwiseConvShape s, int splits,
                                                                              bool want_bias) {
  extern __shared__ float red[];  // [ty][tx*V]
  const int kh = blockIdx.z, KW = s.KW, KK = s.KH * s.KW;
  const int c0 = (blockIdx.y * blockDim.x + threadIdx.x) * V;
  const bool active = c0 < s.C;
  const int OH = s.OH(), OW = s.OW(), xp = s.xp(), yp = s.yp();
  const int64_t P = static_cast<int64_t>(s.N) * OH * OW;
  const int64_t per_split = (P + splits - 1) / splits;
  const int64_t pbeg = blockIdx.x * per_split, pend = min(P, pbeg + per_split);
  float acc[kDepthwiseMaxKernel][V];
  float accb[V];
#pragma unroll
  for (int k = 0; k < kDepthwiseMaxKernel; ++k)
#pragma unroll
    for (int i = 0; i < V; ++i) acc[k][i] = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) accb[i] = 0.f;
  const bool do_bias = want_bias && kh == 0;
  if (active) {
    for (int64_t p = pbeg + threadIdx.y; p < pend; p += blockDim.y) {
      const int ow = static_cast<int>(p % OW);
      const int64_t t = p / OW;
      const int oh = static_cast<int>(t % OH);
      const int n = static_cast<int>(t / OH);
      float g[V];
      if (V == 1 && c0 >= s.C) continue;
      load_f32<T, V>(dy + p * yp + c0, g);
      if (do_bias) {
#pragma unroll
        for (int i = 0; i < V; ++i) accb[i] += g[i];
      }
      const int ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
      if (ih < 0 || ih >= s.H) continue;
      const T* xrow = x + (static_cast<int64_t>(n) * s.H + ih) * s.W * xp + c0;
      const int iw0 = ow * s.stride_w - s.pad_w;
#pragma unroll
      for (int kw = 0; kw < kDepthwiseMaxKernel; ++kw) {
        if (kw >= KW) break;
        const int iw = iw0 + kw * s.dil_w;
        if (iw < 0 || iw >= s.W) continue;
        float xv[V];
        load_f32<T, V>(xrow + static_cast<int64_t>(iw) * xp, xv);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[kw][i] = fmaf(g[i], xv[i], acc[kw][i]);
      }
    }
  }
  const int cw = blockDim.x * V;
  const int nslots = KW + (do_bias ? 1 : 0);
  for (int k = 0; k < nslots; ++k) {
    // Select this slot's accumulators with unrolled compares (keeps acc in
    // registers). Slot KW is the bias: acc[KW] exists (zeros) when KW is
    // below the maximum and must not be taken for it.
    float v[V];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = accb[i];
#pragma unroll
    for (int kk = 0; kk < kDepthwiseMaxKernel; ++kk)
      if (kk == k && k < KW) {
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] = acc[kk][i];
      }
    float* row = red + threadIdx.y * cw + threadIdx.x * V;
#pragma unroll
    for (int i = 0; i < V; ++i) row[i] = v[i];
    __syncthreads();
    for (int half = blockDim.y / 2; half > 0; half >>= 1) {
      if (threadIdx.y < half) {
        const float* other = red + (threadIdx.y + half) * cw + threadIdx.x * V;
#pragma unroll
        for (int i = 0; i < V; ++i) row[i] += other[i];
      }
      __syncthreads();
    }
    if (threadIdx.y == 0 && active) {
      float* dst = (k < KW) ? ws + (static_cast<int64_t>(blockIdx.x) * KK + kh * KW + k) * s.C
                            : ws + static_cast<int64_t>(splits) * KK * s.C + static_cast<int64_t>(blockIdx.x) * s.C;
#pragma unroll
      for (int i = 0; i < V; ++i)
        if (c0 + i < s.C) dst[c0 + i] = row[i];
    }
    __syncthreads();
  }
}

// Sums the partials in split order; dw is written in [C][KH][KW].
template <typename T>
__global__ void dw_backward_weight_finalize_kernel(const float* __restrict__ ws, T* __restrict__ dw,
                                                   T* __restrict__ dbias, int C, int KK, int splits) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // over KK*C, c fastest
  const int64_t total = static_cast<int64_t>(KK) * C;
  if (e < total) {
    const int c = static_cast<int>(e % C), tap = static_cast<int>(e / C);
    float sum = 0.f;
    for (int sp = 0; sp < splits; ++sp) sum += ws[static_cast<int64_t>(sp) * total + e];
    dw[static_cast<int64_t>(c) * KK + tap] = from_f32<T>(sum);
  } else if (dbias != nullptr && e < total + C) {
    const int c = static_cast<int>(e - total);
    float sum = 0.f;
    for (int sp = 0; sp < splits; ++sp) sum += ws[static_cast<int64_t>(splits) * total + sp * C + c];
    dbias[c] = from_f32<T>(sum);
  }
}

int weight_splits(const DepthwiseConvShape& s) {
  const int64_t P = static_cast<int64_t>(s.N) * s.OH() * s.OW();
  return static_cast<int>(std::clamp<int64_t>((P + 1023) / 1024, 1, 256));
}

struct LaunchGeom {
  dim3 grid, block;
  size_t smem;
};

LaunchGeom gather_geometry(const DepthwiseConvShape& s, int V, int64_t pixels) {
  const int KK = s.KH * s.KW;
  const int cvecs = (s.C + V - 1) / V;
  const int cap = std::clamp(pow2_floor(kWeightSmemBytes / (KK * V * 4)), 1, 64);
  const int tx = std::min(pow2_ceil(cvecs), cap);
  const int ty = kThreads / tx;
  LaunchGeom g;
  g.block = dim3(tx, ty);
  g.grid = dim3(ceil_div(pixels, static_cast<int64_t>(ty) * kPixPerThread), ceil_div(cvecs, tx));
  g.smem = static_cast<size_t>(KK) * tx * V * sizeof(float);
  return g;
}

template <typename T>
bool can_vectorize(const DepthwiseConvShape& s, const void* a, const void* b, const void* c) {
  constexpr int V = vec_width<T>();
  return s.C % V == 0 && s.xp() % V == 0 && s.yp() % V == 0 && aligned_to(a, 16) && aligned_to(b, 16) &&
         (c == nullptr || aligned_to(c, 16));
}

template <int N>
using Int = std::integral_constant<int, N>;

// The one place that picks a kernel variant: launch(Int<K>, Int<V>) is
// called with V the channel vector width (16 bytes of T when `vectorize`,
// else 1) and K the unrolled kernel side (3, 5, 7 for square kernels when
// `unroll` and vectorized; 0 = the generic kernel). Returns the launch status.
template <typename T, typename Launch>
cudaError_t launch_variant(const DepthwiseConvShape& s, bool vectorize, bool unroll, Launch&& launch) {
  constexpr int V = vec_width<T>();
  if (!vectorize) {
    launch(Int<0>{}, Int<1>{});
  } else {
    switch (unroll && s.KH == s.KW ? s.KH : 0) {
      case 3: launch(Int<3>{}, Int<V>{}); break;
      case 5: launch(Int<5>{}, Int<V>{}); break;
      case 7: launch(Int<7>{}, Int<V>{}); break;
      default: launch(Int<0>{}, Int<V>{}); break;
    }
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_t(const DepthwiseConvShape& s, const T* x, const T* w, const T* bias, T* y, cudaStream_t st) {
  const int64_t P = static_cast<int64_t>(s.N) * s.OH() * s.OW();
  return launch_variant<T>(s, can_vectorize<T>(s, x, y, bias), true, [&](auto k, auto v) {
    constexpr int K = decltype(k)::value, V = decltype(v)::value;
    const LaunchGeom g = gather_geometry(s, V, P);
    dw_forward_kernel<T, K, V><<<g.grid, g.block, g.smem, st>>>(x, w, bias, y, s);
  });
}

template <typename T>
cudaError_t backward_data_t(const DepthwiseConvShape& s, const T* dy, const T* w, T* dx, bool acc, cudaStream_t st) {
  const int64_t P = static_cast<int64_t>(s.N) * s.H * s.W;
  return launch_variant<T>(s, can_vectorize<T>(s, dy, dx, nullptr), true, [&](auto k, auto v) {
    constexpr int K = decltype(k)::value, V = decltype(v)::value;
    const LaunchGeom g = gather_geometry(s, V, P);
    dw_backward_data_kernel<T, K, V><<<g.grid, g.block, g.smem, st>>>(dy, w, dx, s, acc);
  });
}

// The partial-sum kernel loops over any kernel width itself: vector width only.
template <typename T>
cudaError_t backward_weight_t(const DepthwiseConvShape& s, const T* x, const T* dy, T* dw, T* dbias, float* ws,
                              cudaStream_t st) {
  const int splits = weight_splits(s);
  const cudaError_t partial = launch_variant<T>(s, can_vectorize<T>(s, x, dy, nullptr), false, [&](auto, auto v) {
    constexpr int V = decltype(v)::value;
    const int cvecs = (s.C + V - 1) / V;
    const int tx = std::min(pow2_ceil(cvecs), 32);
    const int ty = kThreads / tx;
    const dim3 grid(splits, ceil_div(cvecs, tx), s.KH);
    const size_t smem = static_cast<size_t>(tx) * ty * V * sizeof(float);
    dw_backward_weight_partial_kernel<T, V><<<grid, dim3(tx, ty), smem, st>>>(x, dy, ws, s, splits, dbias != nullptr);
  });
  if (partial != cudaSuccess) return partial;
  const int64_t total = static_cast<int64_t>(s.KH) * s.KW * s.C + s.C;
  dw_backward_weight_finalize_kernel<T><<<ceil_div(total, 256), 256, 0, st>>>(ws, dw, dbias, s.C, s.KH * s.KW, splits);
  return cudaGetLastError();
}

}  // namespace

const char* depthwise_conv_check(const DepthwiseConvShape& s) {
  if (s.N < 1 || s.H < 1 || s.W < 1 || s.C < 1) return "N, H, W and C must be positive";
  if (s.KH < 1 || s.KW < 1 || s.KH > kDepthwiseMaxKernel || s.KW > kDepthwiseMaxKernel)
    return "kernel sides must be in 1..7";
  if (s.stride_h < 1 || s.stride_w < 1 || s.dil_h < 1 || s.dil_w < 1) return "stride and dilation must be >= 1";
  if (s.pad_h < 0 || s.pad_w < 0) return "padding must be >= 0";
  if (s.OH() < 1 || s.OW() < 1) return "output would be empty";
  if (s.xp() < s.C || s.yp() < s.C) return "pixel pitches must be >= C";
  return nullptr;
}

#define KESTREL_DW_DISPATCH(dt, CALL)                                               \
  switch (dt) {                                                                     \
    case KDType::F32: { using T = float; return CALL; }                             \
    case KDType::F16: { using T = __half; return CALL; }                            \
    case KDType::BF16: { using T = __nv_bfloat16; return CALL; }                    \
  }                                                                                 \
  return cudaErrorInvalidValue

cudaError_t depthwise_conv2d_forward(KDType dt, const DepthwiseConvShape& s, const void* x, const void* w,
                                     const void* bias, void* y, cudaStream_t stream) {
  if (depthwise_conv_check(s) != nullptr) return cudaErrorInvalidValue;
  KESTREL_DW_DISPATCH(dt, forward_t<T>(s, static_cast<const T*>(x), static_cast<const T*>(w),
                                       static_cast<const T*>(bias), static_cast<T*>(y), stream));
}

cudaError_t depthwise_conv2d_backward_data(KDType dt, const DepthwiseConvShape& s, const void* dy, const void* w,
                                           void* dx, bool accumulate, cudaStream_t stream) {
  if (depthwise_conv_check(s) != nullptr || s.act != KAct::None) return cudaErrorInvalidValue;
  KESTREL_DW_DISPATCH(dt, backward_data_t<T>(s, static_cast<const T*>(dy), static_cast<const T*>(w),
                                             static_cast<T*>(dx), accumulate, stream));
}

size_t depthwise_conv2d_backward_weight_workspace_bytes(const DepthwiseConvShape& s) {
  return static_cast<size_t>(weight_splits(s)) * (static_cast<size_t>(s.KH) * s.KW + 1) * s.C * sizeof(float);
}

cudaError_t depthwise_conv2d_backward_weight(KDType dt, const DepthwiseConvShape& s, const void* x, const void* dy,
                                             void* dw, void* dbias, void* workspace, cudaStream_t stream) {
  if (depthwise_conv_check(s) != nullptr || workspace == nullptr || s.act != KAct::None) return cudaErrorInvalidValue;
  KESTREL_DW_DISPATCH(dt, backward_weight_t<T>(s, static_cast<const T*>(x), static_cast<const T*>(dy),
                                               static_cast<T*>(dw), static_cast<T*>(dbias),
                                               static_cast<float*>(workspace), stream));
}

}  // namespace kestrel::kernels
