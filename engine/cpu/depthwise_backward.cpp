// The depthwise convolution's backward passes (see depthwise.h).
//
// Input gradient: a gather, each input pixel summing the taps that read it,
// so each element is written by one thread. Along a row with stride S (1 or
// 2), dilation 1 and K taps (3 or 5), S * P neighbouring input pixels take
// their taps from P + (K - 1) / S neighbouring gy columns: the sliding kernel
// loads each of them once per kernel row, and the sums stay in registers.
//
// Weight gradient: for one gy row and one kernel row, the K sums of a
// channel block stay in registers across the row's interior columns and are
// added to the thread's partial sums once. x may be a channel slice of a
// wider tensor (g.x_pixel_stride: a training ghost module's first half).
//
// Edges, dilated rows, layers thinner than half a vector and f64 take the
// per-pixel loops.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/cpu/depthwise.h"
#include "engine/cpu/isa.h"
#include "engine/cpu/parallel.h"
#include "engine/cpu/taps.h"
#include "engine/cpu/vector_lanes.h"

namespace kestrel::cpu {

namespace {

// ------------------------------------------------------------------ input gradient

// Input pixel iw of row (n, ih): all channels, every tap that reads it.
template <typename T>
KESTREL_INLINE void dw_input_pixel(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, const Taps& tw,
                                   int64_t n, int64_t ih, int64_t iw, T* __restrict dst) {
  const int64_t C = g.c_in;
  std::memset(dst, 0, sizeof(T) * C);
  for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
    const T* gyrow = gy + (n * g.oh + th.o[a]) * g.ow * C;
    const T* wrow = wt + th.k[a] * g.kw * C;
    for (int64_t b = tw.start[iw]; b < tw.start[iw + 1]; ++b) {
      const T* __restrict gp = gyrow + tw.o[b] * C;
      const T* __restrict wp = wrow + tw.k[b] * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dst[c] += gp[c] * wp[c];
    }
  }
}

// The same for channels [c, c + N), summed in registers: two sums taking
// alternate taps across, so that each multiply-add waits less on the one
// before.
template <typename T, int64_t N>
KESTREL_INLINE void dw_input_pixel_block(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, const Taps& tw,
                                         int64_t n, int64_t ih, int64_t iw, int64_t c, T* dst) {
  using V = typename Lanes<T, N>::type;
  const int64_t C = g.c_in, b0 = tw.start[iw], b1 = tw.start[iw + 1];
  V s0{}, s1{};
  for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
    const T* gyrow = gy + ((n * g.oh + th.o[a]) * g.ow * C + c);
    const T* wrow = wt + (th.k[a] * g.kw * C + c);
    int64_t b = b0;
    for (; b + 2 <= b1; b += 2) {
      V g0, w0, g1, w1;
      load_lanes(g0, gyrow + tw.o[b] * C);
      load_lanes(w0, wrow + tw.k[b] * C);
      load_lanes(g1, gyrow + tw.o[b + 1] * C);
      load_lanes(w1, wrow + tw.k[b + 1] * C);
      s0 += g0 * w0;
      s1 += g1 * w1;
    }
    if (b < b1) {
      V g0, w0;
      load_lanes(g0, gyrow + tw.o[b] * C);
      load_lanes(w0, wrow + tw.k[b] * C);
      s0 += g0 * w0;
    }
  }
  store_lanes(dst + c, V(s0 + s1));
}

// Input pixels [0, S * P) of a row, channels [c, c + N), from gy columns
// [0, J) of each gy row that a kernel row maps to (gy_at: the offset of
// column 0 in image n's row 0). Pixel q takes tap kw from column
// (q + K - 1 - kw) / S when S divides q + K - 1 - kw (otherwise the tap falls
// between two strided outputs).
template <typename T, int64_t P, int64_t K, int64_t S, int64_t N>
KESTREL_INLINE void dw_input_pixels_sliding(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, int64_t ih,
                                            int64_t gy_at, int64_t c, T* out) {
  using V = typename Lanes<T, N>::type;
  constexpr int64_t Q = S * P, J = (Q + K - 2) / S + 1;
  const int64_t C = g.c_in;
  V acc[Q];
#pragma GCC unroll 16
  for (int64_t q = 0; q < Q; ++q) acc[q] = V{};
  for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
    const T* gp = gy + (gy_at + th.o[a] * g.ow * C + c);
    const T* wr = wt + th.k[a] * K * C + c;
    V wv[K], gv[J];
#pragma GCC unroll 8
    for (int64_t k = 0; k < K; ++k) load_lanes(wv[k], wr + k * C);
#pragma GCC unroll 16
    for (int64_t j = 0; j < J; ++j, gp += C) load_lanes(gv[j], gp);
#pragma GCC unroll 16
    for (int64_t q = 0; q < Q; ++q)
#pragma GCC unroll 8
      for (int64_t k = 0; k < K; ++k)
        if ((q + K - 1 - k) % S == 0) acc[q] += gv[(q + K - 1 - k) / S] * wv[k];
  }
#pragma GCC unroll 16
  for (int64_t q = 0; q < Q; ++q) store_lanes(out + q * C + c, acc[q]);
}

// Input pixels from iw on, S * P at a time while every tap they take is
// inside gy. iw must be where a run may start: iw + pw - (K - 1) is a
// non-negative multiple of S. Returns where it stopped.
template <typename T, int64_t Bytes, int64_t P, int64_t K, int64_t S>
KESTREL_INLINE int64_t dw_input_sliding_runs(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, int64_t n,
                                             int64_t ih, int64_t iw, T* gxrow) {
  constexpr int64_t Q = S * P, J = (Q + K - 2) / S + 1;
  const int64_t C = g.c_in;
  for (; iw + Q <= g.w; iw += Q) {
    const int64_t col0 = (iw + g.pw - (K - 1)) / S;
    if (col0 + J > g.ow) break;
    T* out = gxrow + iw * C;
    for_overlapping_channel_blocks<T, Bytes>(C, [&](auto lanes, int64_t c) KESTREL_LAMBDA_INLINE {
      dw_input_pixels_sliding<T, P, K, S, decltype(lanes)::value>(g, gy, wt, th, ih, (n * g.oh * g.ow + col0) * C, c,
                                                                  out);
    });
  }
  return iw;
}

// The interior of a row through the sliding kernel: Wide groups, then (at
// stride 1) groups of 4. Returns [first, end), the pixels it did.
template <typename T, int64_t Bytes, int64_t Wide, int64_t K, int64_t S>
KESTREL_INLINE std::pair<int64_t, int64_t> dw_input_sliding_row(const ConvGeom& g, const T* gy, const T* wt,
                                                               const Taps& th, int64_t n, int64_t ih, T* gxrow) {
  int64_t first = std::max<int64_t>(0, K - 1 - g.pw);
  if ((first + g.pw - (K - 1)) % S != 0) ++first;
  int64_t end = dw_input_sliding_runs<T, Bytes, Wide, K, S>(g, gy, wt, th, n, ih, first, gxrow);
  if constexpr (S == 1 && Wide > 4) end = dw_input_sliding_runs<T, Bytes, 4, K, S>(g, gy, wt, th, n, ih, end, gxrow);
  return {first, end};
}

// One input row: the sliding kernel where it applies, the per-pixel sums for
// the rest (f64: the per-pixel loop only).
template <typename T, int64_t Bytes>
KESTREL_INLINE void dw_input_row(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, const Taps& tw,
                                 T* gxrow, int64_t n, int64_t ih) {
  // Stride 1: 8 sums, 5 weights and 12 gy columns fit AVX-512's 32
  // registers; stride 2: 4 groups of 2 pixels.
  constexpr int64_t kWide = Bytes >= 64 ? 8 : 4, kWide2 = Bytes >= 64 ? 4 : 2;
  std::pair<int64_t, int64_t> done{0, 0};
  if constexpr (std::is_same_v<T, float>) {
    if (g.dw == 1 && g.c_in >= int64_t(Bytes / sizeof(T) / 2)) {
      if (g.sw == 1 && g.kw == 3) done = dw_input_sliding_row<T, Bytes, kWide, 3, 1>(g, gy, wt, th, n, ih, gxrow);
      if (g.sw == 1 && g.kw == 5) done = dw_input_sliding_row<T, Bytes, kWide, 5, 1>(g, gy, wt, th, n, ih, gxrow);
      if (g.sw == 2 && g.kw == 3) done = dw_input_sliding_row<T, Bytes, kWide2, 3, 2>(g, gy, wt, th, n, ih, gxrow);
      if (g.sw == 2 && g.kw == 5) done = dw_input_sliding_row<T, Bytes, kWide2, 5, 2>(g, gy, wt, th, n, ih, gxrow);
    }
  }
  const bool blocks = std::is_same_v<T, float> && g.c_in >= int64_t(Bytes / sizeof(T) / 2);
  for (int64_t iw = 0; iw < g.w; ++iw) {
    if (iw == done.first) iw = std::max(iw, done.second);
    if (iw >= g.w) break;
    T* dst = gxrow + iw * g.c_in;
    if (!blocks) {
      dw_input_pixel<T>(g, gy, wt, th, tw, n, ih, iw, dst);
      continue;
    }
    for_overlapping_channel_blocks<T, Bytes>(g.c_in, [&](auto lanes, int64_t c) KESTREL_LAMBDA_INLINE {
      dw_input_pixel_block<T, decltype(lanes)::value>(g, gy, wt, th, tw, n, ih, iw, c, dst);
    });
  }
}

// ------------------------------------------------------------------ weight gradient

// Output columns [o0, o1) of a gy row against input row xrow for one kernel
// row, channels [c0, c1): acc[kw * C + c] += sum of gy * x (every tap checked).
template <typename T>
KESTREL_INLINE void dw_weight_columns(const ConvGeom& g, const T* xrow, const T* gyrow, int64_t o0, int64_t o1,
                                      int64_t c0, int64_t c1, T* acc) {
  const int64_t C = g.c_in, XS = g.xs();
  if (c0 >= c1) return;
  for (int64_t kw = 0; kw < g.kw; ++kw) {
    T* __restrict a = acc + kw * C;
    for (int64_t ow = o0; ow < o1; ++ow) {
      const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
      if (iw < 0 || iw >= g.w) continue;
      const T* __restrict xp = xrow + iw * XS;
      const T* __restrict gp = gyrow + ow * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) a[c] += gp[c] * xp[c];
    }
  }
}

// The same over interior columns [o0, o1), whose K taps are all inside, for
// channels [c, c + N): K sums in registers, two sets taking alternate columns
// so that each multiply-add waits less on the one before.
template <typename T, int64_t K, int64_t N>
KESTREL_INLINE void dw_weight_sums(const ConvGeom& g, const T* xrow, const T* gyrow, int64_t o0, int64_t o1,
                                   int64_t c, T* acc) {
  using V = typename Lanes<T, N>::type;
  const int64_t C = g.c_in, XS = g.xs(), step = g.sw * XS, tap = g.dw * XS;
  const T* xp = xrow + ((o0 * g.sw - g.pw) * XS + c);
  const T* gp = gyrow + (o0 * C + c);
  V s0[K], s1[K];
#pragma GCC unroll 8
  for (int64_t k = 0; k < K; ++k) s0[k] = s1[k] = V{};
  int64_t ow = o0;
  for (; ow + 2 <= o1; ow += 2, xp += 2 * step, gp += 2 * C) {
    V g0, g1;
    load_lanes(g0, gp);
    load_lanes(g1, gp + C);
#pragma GCC unroll 8
    for (int64_t k = 0; k < K; ++k) {
      V x0, x1;
      load_lanes(x0, xp + k * tap);
      load_lanes(x1, xp + step + k * tap);
      s0[k] += g0 * x0;
      s1[k] += g1 * x1;
    }
  }
  if (ow < o1) {
    V g0;
    load_lanes(g0, gp);
#pragma GCC unroll 8
    for (int64_t k = 0; k < K; ++k) {
      V x0;
      load_lanes(x0, xp + k * tap);
      s0[k] += g0 * x0;
    }
  }
#pragma GCC unroll 8
  for (int64_t k = 0; k < K; ++k) {
    V a;
    load_lanes(a, acc + k * C + c);
    a += s0[k] + s1[k];
    store_lanes(acc + k * C + c, a);
  }
}

// Interior channels in whole blocks, then a half and a quarter block (a
// layer of 20 channels is 16 + 4); returns the first channel left to the
// per-element loop. Blocks must not overlap: they add.
template <typename T, int64_t Bytes, int64_t K>
KESTREL_INLINE int64_t dw_weight_blocks(const ConvGeom& g, const T* xrow, const T* gyrow, int64_t o0, int64_t o1,
                                        T* acc) {
  constexpr int64_t kBlock = Bytes / sizeof(T), kHalf = kBlock / 2, kQuarter = kBlock / 4;
  const int64_t C = g.c_in;
  int64_t c = 0;
  for (; c + kBlock <= C; c += kBlock) dw_weight_sums<T, K, kBlock>(g, xrow, gyrow, o0, o1, c, acc);
  if (c + kHalf <= C) {
    dw_weight_sums<T, K, kHalf>(g, xrow, gyrow, o0, o1, c, acc);
    c += kHalf;
  }
  if (c + kQuarter <= C) {
    dw_weight_sums<T, K, kQuarter>(g, xrow, gyrow, o0, o1, c, acc);
    c += kQuarter;
  }
  return c;
}

// acc[kh, kw, c] += the weight gradient's share of gy row (n, oh).
template <typename T, int64_t Bytes>
KESTREL_INLINE void dw_weight_row(const ConvGeom& g, const T* x, const T* gyrow, T* acc, int64_t n, int64_t oh) {
  const int64_t C = g.c_in;
  // Interior columns: every tap across inside the input.
  const int64_t o0 = std::min(g.ow, (g.pw + g.sw - 1) / g.sw);
  const int64_t last = g.w - 1 + g.pw - (g.kw - 1) * g.dw;  // the last interior column's first tap, times S
  const int64_t o1 = last < 0 ? o0 : std::clamp(last / g.sw + 1, o0, g.ow);
  for (int64_t kh = 0; kh < g.kh; ++kh) {
    const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
    if (ih < 0 || ih >= g.h) continue;
    const T* xrow = x + (n * g.h + ih) * g.w * g.xs();
    T* a = acc + kh * g.kw * C;
    int64_t c = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (g.kw == 3 && o1 > o0) c = dw_weight_blocks<T, Bytes, 3>(g, xrow, gyrow, o0, o1, a);
      if (g.kw == 5 && o1 > o0) c = dw_weight_blocks<T, Bytes, 5>(g, xrow, gyrow, o0, o1, a);
      if (g.kw == 7 && o1 > o0) c = dw_weight_blocks<T, Bytes, 7>(g, xrow, gyrow, o0, o1, a);
    }
    dw_weight_columns<T>(g, xrow, gyrow, o0, o1, c, C, a);  // channels the blocks left
    dw_weight_columns<T>(g, xrow, gyrow, 0, o0, 0, C, a);
    dw_weight_columns<T>(g, xrow, gyrow, o1, g.ow, 0, C, a);
  }
}

// ------------------------------------------------------------------ f32 builds per ISA

// 32-byte channel blocks for AVX2 and the baseline, 64 for AVX-512 (as in the forward pass).
KESTREL_CLONES_AVX2 void dw_input_row_avx2(const ConvGeom& g, const float* gy, const float* wt, const Taps& th,
                                           const Taps& tw, float* gxrow, int64_t n, int64_t ih) {
  dw_input_row<float, 32>(g, gy, wt, th, tw, gxrow, n, ih);
}
KESTREL_CLONES_AVX2 void dw_weight_row_avx2(const ConvGeom& g, const float* x, const float* gyrow, float* acc,
                                            int64_t n, int64_t oh) {
  dw_weight_row<float, 32>(g, x, gyrow, acc, n, oh);
}
#if KESTREL_HAVE_AVX512_TARGET
KESTREL_TARGET_AVX512 void dw_input_row_avx512(const ConvGeom& g, const float* gy, const float* wt, const Taps& th,
                                               const Taps& tw, float* gxrow, int64_t n, int64_t ih) {
  dw_input_row<float, 64>(g, gy, wt, th, tw, gxrow, n, ih);
}
KESTREL_TARGET_AVX512 void dw_weight_row_avx512(const ConvGeom& g, const float* x, const float* gyrow, float* acc,
                                                int64_t n, int64_t oh) {
  dw_weight_row<float, 64>(g, x, gyrow, acc, n, oh);
}
#endif

// f64 is for gradchecks and the reference the f32 kernels are tested
// against: the per-pixel loops only.
template <typename T>
void dw_input_row_any(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, const Taps& tw, T* gxrow, int64_t n,
                      int64_t ih) {
  if constexpr (std::is_same_v<T, float>) {
#if KESTREL_HAVE_AVX512_TARGET
    if (use_avx512()) return dw_input_row_avx512(g, gy, wt, th, tw, gxrow, n, ih);
#endif
    dw_input_row_avx2(g, gy, wt, th, tw, gxrow, n, ih);
  } else {
    dw_input_row<T, 64>(g, gy, wt, th, tw, gxrow, n, ih);
  }
}

template <typename T>
void dw_weight_row_any(const ConvGeom& g, const T* x, const T* gyrow, T* acc, int64_t n, int64_t oh) {
  if constexpr (std::is_same_v<T, float>) {
#if KESTREL_HAVE_AVX512_TARGET
    if (use_avx512()) return dw_weight_row_avx512(g, x, gyrow, acc, n, oh);
#endif
    dw_weight_row_avx2(g, x, gyrow, acc, n, oh);
  } else {
    dw_weight_row<T, 64>(g, x, gyrow, acc, n, oh);
  }
}

}  // namespace

template <typename T>
void depthwise_backward_input(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  const int64_t C = g.c_in;
  const std::vector<T> wt_v = depthwise_weight_taps_major(g, w);
  const Taps th = kernel_taps(g.h, g.oh, g.kh, g.sh, g.ph, g.dh);
  const Taps tw = kernel_taps(g.w, g.ow, g.kw, g.sw, g.pw, g.dw);
  const int64_t rows = g.n * g.h;
  parallel_for(rows, rows * g.w * C * g.kh * g.kw > 32768, [&](int64_t r) {
    dw_input_row_any<T>(g, gy, wt_v.data(), th, tw, gx + r * g.w * C, r / g.h, r % g.h);
  });
}

template <typename T>
void depthwise_backward_weight(const ConvGeom& g, const T* x, const T* gy, T* gw) {
  const int64_t C = g.c_in, taps = g.kh * g.kw;
  const int64_t rows = g.n * g.oh;
  const int nthreads = partial_count(rows * g.ow * C * taps > 32768);
  std::vector<T> partial(static_cast<size_t>(nthreads) * taps * C, T(0));
  parallel_for_each_thread(rows, nthreads, [&](int t, int64_t r) {
    T* acc = partial.data() + static_cast<int64_t>(t) * taps * C;
    dw_weight_row_any<T>(g, x, gy + r * g.ow * C, acc, r / g.oh, r % g.oh);
  });
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < taps; ++t) {
      T s = T(0);
      for (int th = 0; th < nthreads; ++th) s += partial[(static_cast<int64_t>(th) * taps + t) * C + c];
      gw[c * taps + t] = s;
    }
}

#define KESTREL_INSTANTIATE_DW_BACKWARD(T)                                                  \
  template void depthwise_backward_input<T>(const ConvGeom&, const T*, const T*, T*); \
  template void depthwise_backward_weight<T>(const ConvGeom&, const T*, const T*, T*);
KESTREL_INSTANTIATE_DW_BACKWARD(float)
KESTREL_INSTANTIATE_DW_BACKWARD(double)
#undef KESTREL_INSTANTIATE_DW_BACKWARD

}  // namespace kestrel::cpu
