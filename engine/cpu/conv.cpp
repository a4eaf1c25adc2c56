#include "engine/cpu/conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/cpu/activation_math.h"
#include "engine/cpu/conv_gemm.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/isa.h"
#include "engine/cpu/parallel.h"
#include "engine/cpu/taps.h"

namespace kestrel::cpu {

namespace {

// Largest im2col buffer (elements) we allocate at once; chunks hold whole images.
constexpr int64_t kColBudget = int64_t(1) << 22;

int64_t images_per_chunk(const ConvGeom& g) {
  const int64_t per_image = std::max<int64_t>(1, g.oh * g.ow * g.k());
  return std::max<int64_t>(1, std::min<int64_t>(g.n, kColBudget / per_image));
}

// col[m, (kh, kw, c)] for images [n0, n0 + nb), channels of group `grp`.
template <typename T>
void im2col(const ConvGeom& g, const T* x, int64_t n0, int64_t nb, int64_t grp, T* col) {
  const int64_t cg = g.cin_g(), K = g.k();
  const int64_t rows = nb * g.oh;
  parallel_for(rows, rows * g.ow * K > 32768, [&](int64_t r) {
    const int64_t n = n0 + r / g.oh, oh = r % g.oh;
    T* dst_row = col + r * g.ow * K;
    for (int64_t ow = 0; ow < g.ow; ++ow) {
      T* dst = dst_row + ow * K;
      for (int64_t kh = 0; kh < g.kh; ++kh) {
        const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
        if (ih < 0 || ih >= g.h) {
          std::memset(dst + kh * g.kw * cg, 0, sizeof(T) * g.kw * cg);
          continue;
        }
        const T* src_row = x + ((n * g.h + ih) * g.w) * g.c_in + grp * cg;
        for (int64_t kw = 0; kw < g.kw; ++kw) {
          const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
          T* d = dst + (kh * g.kw + kw) * cg;
          const bool inside = iw >= 0 && iw < g.w;
          if (cg >= 16) {  // long runs: library copy; short ones (stems, cg=3): plain loop, no call
            if (inside)
              std::memcpy(d, src_row + iw * g.c_in, sizeof(T) * cg);
            else
              std::memset(d, 0, sizeof(T) * cg);
          } else {
            if (inside) {
              const T* s = src_row + iw * g.c_in;
              for (int64_t c = 0; c < cg; ++c) d[c] = s[c];
            } else {
              for (int64_t c = 0; c < cg; ++c) d[c] = T(0);
            }
          }
        }
      }
    }
  });
}

// gx[n, ih, iw, group channels] = sum of the gcol entries that read it (overwrites).
template <typename T>
void col2im_gather(const ConvGeom& g, const T* gcol, int64_t n0, int64_t nb, int64_t grp, const Taps& th,
                   const Taps& tw, T* gx) {
  const int64_t cg = g.cin_g(), K = g.k();
  const int64_t rows = nb * g.h;
  parallel_for(rows, rows * g.w * cg * g.kh * g.kw > 32768, [&](int64_t r) {
    const int64_t nl = r / g.h, ih = r % g.h;
    const int64_t n = n0 + nl;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      T* dst = gx + ((n * g.h + ih) * g.w + iw) * g.c_in + grp * cg;
      for (int64_t c = 0; c < cg; ++c) dst[c] = T(0);
      for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
        const int64_t kh = th.k[a], oh = th.o[a];
        const T* src_row = gcol + ((nl * g.oh + oh) * g.ow) * K + kh * g.kw * cg;
        for (int64_t b = tw.start[iw]; b < tw.start[iw + 1]; ++b) {
          const T* src = src_row + tw.o[b] * K + tw.k[b] * cg;
#pragma omp simd
          for (int64_t c = 0; c < cg; ++c) dst[c] += src[c];
        }
      }
    }
  });
}

// f32 rows for each ISA: sigmoid and SiLU (their arithmetic exp) are most of
// EfficientNet's epilogue time, and the baseline build is 4-wide SSE.
KESTREL_CLONES_AVX512 void bias_act_row_f32(float* row, int64_t C, const float* bias, Activation act) {
  act_dispatch(act, [&](auto a) KESTREL_LAMBDA_INLINE { bias_act_row<float, decltype(a)::value>(row, C, bias); });
}

// y[r, c] = act(y[r, c] + bias[c]) in place, for rows [0, rows); bias may be null.
template <typename T>
void bias_act_rows(T* y, int64_t rows, int64_t C, const T* bias, Activation act) {
  if constexpr (std::is_same_v<T, float>) {
    parallel_for(rows, rows * C > 65536, [&](int64_t r) { bias_act_row_f32(y + r * C, C, bias, act); });
  } else {
    act_dispatch(act, [&](auto a) {
      parallel_for(rows, rows * C > 65536,
                   [&](int64_t r) { bias_act_row<T, decltype(a)::value>(y + r * C, C, bias); });
    });
  }
}

// ------------------------------------------------------------------ depthwise

// Per-row bodies of the depthwise kernels: channels innermost, so each tap is
// one contiguous multiply-add over C values. Always inlined into the f32
// wrappers below, which are compiled for AVX-512, AVX2 and the baseline ISA and
// picked at load time (the project baseline is x86-64-v2, i.e. 4-wide SSE).

// Taps [k0, k1) of a kernel axis that land inside the input for output position o.
struct TapRange {
  int64_t k0, k1;
};
inline TapRange valid_taps(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t k, int64_t size) {
  const int64_t i0 = o * stride - pad;
  int64_t k0 = 0, k1 = k;
  while (k0 < k1 && i0 + k0 * dil < 0) ++k0;
  while (k1 > k0 && i0 + (k1 - 1) * dil >= size) --k1;
  return {k0, k1};
}

// GCC vector types: N lanes held in registers whatever the ISA (16 floats are
// one AVX-512 register, two AVX2 or four SSE).
template <typename T, int64_t N>
struct Lanes {
  typedef T type __attribute__((vector_size(sizeof(T) * N)));
};
template <typename V, typename T>
KESTREL_INLINE void load_lanes(V& v, const T* p) {
  std::memcpy(&v, p, sizeof v);
}

// One pixel's N sums stored at o, then activated while in L1.
template <typename T, Activation A, int64_t N, typename V>
KESTREL_INLINE void store_sums(T* o, const V& sums) {
  std::memcpy(o, &sums, sizeof(V));
  if constexpr (A != Activation::None)
    for (int64_t j = 0; j < N; ++j) o[j] = act_value<A, T>(o[j]);
}

// Output pixels [0, P) (input columns g.sw apart), channels [c, c + N): the
// sums stay in registers across all taps and are stored once, then the
// activation is applied while they are in L1. P pixels side by side give P
// independent FMA chains that share each weight load. Fewer than 4 pixels
// (edges, a row's last interior ones) each keep Q partial sums that take
// turns over the taps: one chain waits out each multiply-add's latency
// (measured: a lone edge pixel cost as much as four interior ones).
template <typename T, Activation A, int64_t P, int64_t N>
KESTREL_INLINE void dw_forward_pixels(const ConvGeom& g, const T* x, int64_t win, const T* wt, const T* bias,
                                      TapRange th, TapRange tw, int64_t c, T* out) {
  using V = typename Lanes<T, N>::type;
  constexpr int64_t Q = P >= 4 ? 1 : 2;
  const int64_t C = g.c_in, step = g.sw * C;
  V init{};
  if (bias != nullptr) load_lanes(init, bias + c);
  V acc[P][Q];
#pragma GCC unroll 4
  for (int64_t p = 0; p < P; ++p) {
    acc[p][0] = init;
#pragma GCC unroll 4
    for (int64_t q = 1; q < Q; ++q) acc[p][q] = V{};
  }
  for (int64_t kh = th.k0; kh < th.k1; ++kh) {
    const int64_t xr = win + kh * g.dh * g.w * C + c;  // an offset: win + c alone may precede x
    const T* wr = wt + kh * g.kw * C + c;
    for (int64_t kw = tw.k0; kw < tw.k1; ++kw) {
      V wv, xv;
      load_lanes(wv, wr + kw * C);
#pragma GCC unroll 4
      for (int64_t p = 0; p < P; ++p) {
        load_lanes(xv, x + (xr + kw * g.dw * C + p * step));
        const V sum = acc[p][0] + xv * wv;
#pragma GCC unroll 4
        for (int64_t q = 0; q + 1 < Q; ++q) acc[p][q] = acc[p][q + 1];  // rotate: the next tap adds to the next sum
        acc[p][Q - 1] = sum;
      }
    }
  }
#pragma GCC unroll 4
  for (int64_t p = 0; p < P; ++p) {
#pragma GCC unroll 4
    for (int64_t q = 1; q < Q; ++q) acc[p][0] += acc[p][q];
    store_sums<T, A, N>(out + p * C + c, acc[p][0]);
  }
}

// P output pixels side by side of a convolution with stride S (1 or 2) and
// dilation 1 along the width, all KW taps inside: they read S (P - 1) + KW
// input columns per kernel row, each loaded once and used for every tap
// that reaches it (dw_forward_pixels loads P x KW: the loads, not the
// multiply-adds, bounded it). Taps are summed in the same order as there.
template <typename T, Activation A, int64_t P, int64_t KW, int64_t S, int64_t N>
KESTREL_INLINE void dw_forward_pixels_sliding(const ConvGeom& g, const T* x, int64_t win, const T* wt, const T* bias,
                                              TapRange th, int64_t c, T* out) {
  using V = typename Lanes<T, N>::type;
  const int64_t C = g.c_in;
  V init{};
  if (bias != nullptr) load_lanes(init, bias + c);
  V acc[P];
#pragma GCC unroll 16
  for (int64_t p = 0; p < P; ++p) acc[p] = init;
  for (int64_t kh = th.k0; kh < th.k1; ++kh) {
    const T* xp = x + (win + kh * g.dh * g.w * C + c);  // one sum: win + c alone may precede x
    const T* wr = wt + kh * KW * C + c;
    V wv[KW], xv[S * (P - 1) + KW];
#pragma GCC unroll 8
    for (int64_t k = 0; k < KW; ++k) load_lanes(wv[k], wr + k * C);
#pragma GCC unroll 16
    for (int64_t i = 0; i < S * (P - 1) + KW; ++i, xp += C) load_lanes(xv[i], xp);  // one pointer, not 12 offsets
#pragma GCC unroll 8
    for (int64_t p = 0; p < P; ++p)
#pragma GCC unroll 8
      for (int64_t k = 0; k < KW; ++k) acc[p] += xv[S * p + k] * wv[k];
  }
#pragma GCC unroll 16
  for (int64_t p = 0; p < P; ++p) store_sums<T, A, N>(out + p * C + c, acc[p]);
}

// One output pixel of a layer thinner than half a vector: plain loops.
template <typename T, Activation A>
KESTREL_INLINE void dw_forward_thin(const ConvGeom& g, const T* x, int64_t win, const T* wt, const T* bias,
                                    TapRange th, TapRange tw, T* out) {
  const int64_t C = g.c_in;
  for (int64_t c = 0; c < C; ++c) out[c] = bias != nullptr ? bias[c] : T(0);
  for (int64_t kh = th.k0; kh < th.k1; ++kh)
    for (int64_t kw = tw.k0; kw < tw.k1; ++kw) {
      const T* xp = x + (win + (kh * g.dh * g.w + kw * g.dw) * C);
      const T* wp = wt + (kh * g.kw + kw) * C;
      for (int64_t c = 0; c < C; ++c) out[c] += xp[c] * wp[c];
    }
  for (int64_t c = 0; c < C; ++c) out[c] = act_value<A, T>(out[c]);
}

// P output pixels from column ow, all with the taps tw. Channels go in blocks
// of Bytes (one vector register's width); a ragged tail is one more block (or
// half block) that ends at C, overlapping the one before: recomputing a few
// channels costs less than a partial block spilled to memory.
// KW > 0: the sliding kernel, for interior pixels of a row with stride S and
// dilation 1 along the width and KW taps across (tw must be all of them).
template <typename T, Activation A, int64_t P, int64_t Bytes, int64_t KW = 0, int64_t S = 1>
KESTREL_INLINE void dw_forward_run(const ConvGeom& g, const T* x, const T* wt, const T* bias, TapRange th,
                                   TapRange tw, int64_t row, int64_t ow, T* out) {
  constexpr int64_t kBlock = Bytes / sizeof(T), kHalf = kBlock / 2;
  const int64_t C = g.c_in, win = (row + ow * g.sw - g.pw) * C;
  if (C < kHalf) {
    for (int64_t p = 0; p < P; ++p) dw_forward_thin<T, A>(g, x, win + p * g.sw * C, wt, bias, th, tw, out + p * C);
    return;
  }
  auto block = [&](auto lanes, int64_t c) KESTREL_LAMBDA_INLINE {
    constexpr int64_t N = decltype(lanes)::value;
    if constexpr (KW > 0)
      dw_forward_pixels_sliding<T, A, P, KW, S, N>(g, x, win, wt, bias, th, c, out);
    else
      dw_forward_pixels<T, A, P, N>(g, x, win, wt, bias, th, tw, c, out);
  };
  using Full = std::integral_constant<int64_t, kBlock>;
  using Half = std::integral_constant<int64_t, kHalf>;
  int64_t c = 0;
  for (; c + kBlock <= C; c += kBlock) block(Full{}, c);
  if (c == C) return;
  if (C - c <= kHalf)
    block(Half{}, C - kHalf);
  else if (C >= kBlock)
    block(Full{}, C - kBlock);
  else {  // kHalf < C < kBlock
    block(Half{}, 0);
    block(Half{}, C - kHalf);
  }
}

// Interior pixels [ow, end) of a row whose taps are all inside, through the
// sliding kernel: Wide at a time, then 4. Returns where it stopped.
template <typename T, int64_t Wide, int64_t Bytes, int64_t KW, int64_t S>
KESTREL_INLINE int64_t dw_forward_sliding_runs(const ConvGeom& g, const T* x, const T* wt, const T* bias, TapRange th,
                                               int64_t row, int64_t ow, int64_t end, T* yrow) {
  const TapRange all{0, KW};
  for (; ow + Wide <= end; ow += Wide)
    dw_forward_run<T, Activation::None, Wide, Bytes, KW, S>(g, x, wt, bias, th, all, row, ow, yrow + ow * g.c_in);
  if constexpr (Wide > 4)
    for (; ow + 4 <= end; ow += 4)
      dw_forward_run<T, Activation::None, 4, Bytes, KW, S>(g, x, wt, bias, th, all, row, ow, yrow + ow * g.c_in);
  return ow;
}

// Where one output row's windows lie: the kernel rows inside the input, the
// input pixel index of the windows' row at column 0, and the interior output
// columns [first, last], whose taps are all inside.
struct DwRowSpan {
  TapRange th;
  int64_t row, first, last;
};
inline DwRowSpan dw_row_span(const ConvGeom& g, int64_t n, int64_t oh) {
  DwRowSpan s{valid_taps(oh, g.sh, g.ph, g.dh, g.kh, g.h), (n * g.h + oh * g.sh - g.ph) * g.w, 0, g.ow - 1};
  while (s.first < g.ow && s.first * g.sw - g.pw < 0) ++s.first;
  while (s.last >= s.first && s.last * g.sw - g.pw + (g.kw - 1) * g.dw >= g.w) --s.last;
  return s;
}

// The sliding kernel over a row's interior, for dilation 1, strides 1 and 2
// and the zoo's kernel widths (3, 5), with no activation: one build serves
// every activation (each build is hundreds of unrolled multiply-adds; built
// per activation they took minutes to compile). Returns where it stopped:
// the first interior column it left to dw_forward_row.
template <int64_t Bytes>
KESTREL_INLINE int64_t dw_forward_sliding(const ConvGeom& g, const float* x, const float* wt, const float* bias,
                                          const DwRowSpan& s, float* yrow) {
  // Stride 1: 8 sums, 5 weights and 12 input columns fit AVX-512's 32
  // registers; stride 2 reads 2 columns per pixel, so 4 pixels.
  constexpr int64_t kWide = Bytes >= 64 ? 8 : 4;
  const int64_t end = s.last + 1;
  if (g.dw != 1) return s.first;
  if (g.sw == 1 && g.kw == 3)
    return dw_forward_sliding_runs<float, kWide, Bytes, 3, 1>(g, x, wt, bias, s.th, s.row, s.first, end, yrow);
  if (g.sw == 1 && g.kw == 5)
    return dw_forward_sliding_runs<float, kWide, Bytes, 5, 1>(g, x, wt, bias, s.th, s.row, s.first, end, yrow);
  if (g.sw == 2 && g.kw == 3)
    return dw_forward_sliding_runs<float, 4, Bytes, 3, 2>(g, x, wt, bias, s.th, s.row, s.first, end, yrow);
  if (g.sw == 2 && g.kw == 5)
    return dw_forward_sliding_runs<float, 4, Bytes, 5, 2>(g, x, wt, bias, s.th, s.row, s.first, end, yrow);
  return s.first;
}

// One output row, but for the interior columns [s.first, from), which are
// done. A window's top-left input pixel may lie in the padding (its offset
// may be negative): only valid taps are read. Interior pixels, whose taps
// are all inside, go four at a time.
template <typename T, Activation A, int64_t Bytes>
KESTREL_INLINE void dw_forward_row(const ConvGeom& g, const T* x, const T* wt, const T* bias, T* yrow,
                                   const DwRowSpan& s, int64_t from) {
  constexpr int64_t kPixels = 4;
  const int64_t C = g.c_in;
  // Inlined, so it is compiled for the caller's ISA (a lambda is otherwise a
  // function of its own, built for the baseline).
  auto edge = [&](int64_t o) KESTREL_LAMBDA_INLINE {
    const TapRange tw = valid_taps(o, g.sw, g.pw, g.dw, g.kw, g.w);
    dw_forward_run<T, A, 1, Bytes>(g, x, wt, bias, s.th, tw, s.row, o, yrow + o * C);
  };
  for (int64_t ow = 0; ow < s.first; ++ow) edge(ow);
  int64_t ow = std::max(from, s.first);
  for (; ow + kPixels <= s.last + 1; ow += kPixels)
    dw_forward_run<T, A, kPixels, Bytes>(g, x, wt, bias, s.th, TapRange{0, g.kw}, s.row, ow, yrow + ow * C);
  for (; ow + 2 <= s.last + 1; ow += 2)
    dw_forward_run<T, A, 2, Bytes>(g, x, wt, bias, s.th, TapRange{0, g.kw}, s.row, ow, yrow + ow * C);
  for (; ow < g.ow; ++ow) edge(ow);
}

template <typename T>
KESTREL_INLINE void dw_backward_input_row(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, const Taps& tw,
                                          T* gxrow, int64_t n, int64_t ih) {
  const int64_t C = g.c_in;
  for (int64_t iw = 0; iw < g.w; ++iw) {
    T* __restrict dst = gxrow + iw * C;
    std::memset(dst, 0, sizeof(T) * C);
    for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
      const int64_t kh = th.k[a], oh = th.o[a];
      const T* gyrow = gy + (n * g.oh + oh) * g.ow * C;
      for (int64_t b = tw.start[iw]; b < tw.start[iw + 1]; ++b) {
        const T* __restrict gp = gyrow + tw.o[b] * C;
        const T* __restrict wp = wt + (kh * g.kw + tw.k[b]) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dst[c] += gp[c] * wp[c];
      }
    }
  }
}

template <typename T>
KESTREL_INLINE void dw_backward_weight_row(const ConvGeom& g, const T* x, const T* gyrow, T* acc, int64_t n,
                                           int64_t oh) {
  const int64_t C = g.c_in;
  for (int64_t kh = 0; kh < g.kh; ++kh) {
    const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
    if (ih < 0 || ih >= g.h) continue;
    const T* xrow = x + (n * g.h + ih) * g.w * C;
    for (int64_t kw = 0; kw < g.kw; ++kw) {
      T* __restrict a = acc + (kh * g.kw + kw) * C;
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
        if (iw < 0 || iw >= g.w) continue;
        const T* __restrict xp = xrow + iw * C;
        const T* __restrict gp = gyrow + ow * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) a[c] += gp[c] * xp[c];
      }
    }
  }
}

// The interior goes through the sliding kernel first, then gets its
// activation while in L1. The activations that models put after a depthwise
// conv are inlined, so they are compiled for each ISA too; any other runs as
// a second pass over the row.
template <int64_t Bytes>
KESTREL_INLINE void dw_forward_row_act(const ConvGeom& g, const float* x, const float* wt, const float* bias,
                                       float* yrow, int64_t n, int64_t oh, Activation act) {
  const DwRowSpan s = dw_row_span(g, n, oh);
  const int64_t from = dw_forward_sliding<Bytes>(g, x, wt, bias, s, yrow);
  float* done = yrow + s.first * g.c_in;
  const int64_t done_count = (from - s.first) * g.c_in;
  switch (act) {
    case Activation::ReLU:
      bias_act_row<float, Activation::ReLU>(done, done_count, nullptr);
      return dw_forward_row<float, Activation::ReLU, Bytes>(g, x, wt, bias, yrow, s, from);
    case Activation::ReLU6:
      bias_act_row<float, Activation::ReLU6>(done, done_count, nullptr);
      return dw_forward_row<float, Activation::ReLU6, Bytes>(g, x, wt, bias, yrow, s, from);
    case Activation::HardSwish:
      bias_act_row<float, Activation::HardSwish>(done, done_count, nullptr);
      return dw_forward_row<float, Activation::HardSwish, Bytes>(g, x, wt, bias, yrow, s, from);
    default: dw_forward_row<float, Activation::None, Bytes>(g, x, wt, bias, yrow, s, from);
  }
  if (act != Activation::None) bias_act_rows(yrow, 1, g.ow * g.c_in, static_cast<const float*>(nullptr), act);
}

// 32-byte channel blocks for AVX2 and the baseline: 64 with P = 4 pixels
// would need 16 AVX2 registers for the sums alone and spill (measured 1.8x
// slower than the AVX-512 build on the same machine, and slower than before).
KESTREL_CLONES_AVX2 void dw_forward_row_avx2(const ConvGeom& g, const float* x, const float* wt, const float* bias,
                                            float* yrow, int64_t n, int64_t oh, Activation act) {
  dw_forward_row_act<32>(g, x, wt, bias, yrow, n, oh, act);
}

#if KESTREL_HAVE_AVX512_TARGET
KESTREL_TARGET_AVX512 void dw_forward_row_avx512(const ConvGeom& g, const float* x, const float* wt, const float* bias,
                                          float* yrow, int64_t n, int64_t oh, Activation act) {
  dw_forward_row_act<64>(g, x, wt, bias, yrow, n, oh, act);
}
#endif

void dw_forward_row_f32(const ConvGeom& g, const float* x, const float* wt, const float* bias, float* yrow, int64_t n,
                        int64_t oh, Activation act) {
#if KESTREL_HAVE_AVX512_TARGET
  // KESTREL_NO_AVX512=1 takes the AVX2 path on any machine (its tests use it).
  if (use_avx512()) return dw_forward_row_avx512(g, x, wt, bias, yrow, n, oh, act);
#endif
  dw_forward_row_avx2(g, x, wt, bias, yrow, n, oh, act);
}

KESTREL_CLONES_AVX2 void dw_backward_input_row_f32(const ConvGeom& g, const float* gy, const float* wt, const Taps& th,
                                                  const Taps& tw, float* gxrow, int64_t n, int64_t ih) {
  dw_backward_input_row<float>(g, gy, wt, th, tw, gxrow, n, ih);
}
KESTREL_CLONES_AVX2 void dw_backward_weight_row_f32(const ConvGeom& g, const float* x, const float* gyrow, float* acc,
                                                   int64_t n, int64_t oh) {
  dw_backward_weight_row<float>(g, x, gyrow, acc, n, oh);
}

// f64 is for gradchecks: the plain template.
template <typename T>
struct DwRows {
  static void forward(const ConvGeom& g, const T* x, const T* wt, const T* bias, T* yrow, int64_t n, int64_t oh,
                      Activation act) {
    const DwRowSpan s = dw_row_span(g, n, oh);
    act_dispatch(act, [&](auto a) { dw_forward_row<T, decltype(a)::value, 64>(g, x, wt, bias, yrow, s, s.first); });
  }
  static void backward_input(const ConvGeom& g, const T* gy, const T* wt, const Taps& th, const Taps& tw, T* gxrow,
                             int64_t n, int64_t ih) {
    dw_backward_input_row<T>(g, gy, wt, th, tw, gxrow, n, ih);
  }
  static void backward_weight(const ConvGeom& g, const T* x, const T* gyrow, T* acc, int64_t n, int64_t oh) {
    dw_backward_weight_row<T>(g, x, gyrow, acc, n, oh);
  }
};

template <>
struct DwRows<float> {
  static void forward(const ConvGeom& g, const float* x, const float* wt, const float* bias, float* yrow, int64_t n,
                      int64_t oh, Activation act) {
    dw_forward_row_f32(g, x, wt, bias, yrow, n, oh, act);
  }
  static void backward_input(const ConvGeom& g, const float* gy, const float* wt, const Taps& th, const Taps& tw,
                             float* gxrow, int64_t n, int64_t ih) {
    dw_backward_input_row_f32(g, gy, wt, th, tw, gxrow, n, ih);
  }
  static void backward_weight(const ConvGeom& g, const float* x, const float* gyrow, float* acc, int64_t n,
                              int64_t oh) {
    dw_backward_weight_row_f32(g, x, gyrow, acc, n, oh);
  }
};

template <typename T>
void depthwise_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y, Activation act) {
  depthwise_forward_taps_major(g, x, depthwise_weight_taps_major(g, w).data(), bias, y, act);
}

template <typename T>
void depthwise_backward_input(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  const int64_t C = g.c_in;
  const std::vector<T> wt_v = depthwise_weight_taps_major(g, w);
  const T* wt = wt_v.data();
  const Taps th = kernel_taps(g.h, g.oh, g.kh, g.sh, g.ph, g.dh);
  const Taps tw = kernel_taps(g.w, g.ow, g.kw, g.sw, g.pw, g.dw);
  const int64_t rows = g.n * g.h;
  parallel_for(rows, rows * g.w * C * g.kh * g.kw > 32768, [&](int64_t r) {
    DwRows<T>::backward_input(g, gy, wt, th, tw, gx + r * g.w * C, r / g.h, r % g.h);
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
    DwRows<T>::backward_weight(g, x, gy + r * g.ow * C, acc, r / g.oh, r % g.oh);
  });
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < taps; ++t) {
      T s = T(0);
      for (int th = 0; th < nthreads; ++th) s += partial[(static_cast<int64_t>(th) * taps + t) * C + c];
      gw[c * taps + t] = s;
    }
}

// Calls fn(col, n0, nb, m0, mc, grp) for each chunk of whole images and each
// group: images [n0, n0+nb), output rows [m0, m0+mc), and col a scratch buffer
// of mc x k() elements that the im2col-based paths share.
template <typename T, typename F>
void for_each_image_chunk(const ConvGeom& g, F&& fn) {
  const int64_t chunk = images_per_chunk(g), rows_per_image = g.oh * g.ow;
  std::vector<T> col(static_cast<size_t>(chunk * rows_per_image * g.k()));
  for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
    const int64_t nb = std::min(chunk, g.n - n0);
    for (int64_t grp = 0; grp < g.groups; ++grp) fn(col.data(), n0, nb, n0 * rows_per_image, nb * rows_per_image, grp);
  }
}

}  // namespace

// ------------------------------------------------------------------ entry points

template <typename T>
std::vector<T> depthwise_weight_taps_major(const ConvGeom& g, const T* w) {
  const int64_t C = g.c_in, taps = g.kh * g.kw;
  std::vector<T> wt(taps * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < taps; ++t) wt[t * C + c] = w[c * taps + t];
  return wt;
}

template <typename T>
void depthwise_forward_taps_major(const ConvGeom& g, const T* x, const T* wt, const T* bias, T* y, Activation act) {
  if (g.n == 0 || g.oh == 0 || g.ow == 0 || g.c_out == 0) return;
  const int64_t C = g.c_in, rows = g.n * g.oh;
  parallel_for(rows, rows * g.ow * C * g.kh * g.kw > 32768,
               [&](int64_t r) { DwRows<T>::forward(g, x, wt, bias, y + r * g.ow * C, r / g.oh, r % g.oh, act); });
}

template <typename T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y, Activation act) {
  if (g.n == 0 || g.oh == 0 || g.ow == 0 || g.c_out == 0) return;
  if (g.depthwise()) return depthwise_forward(g, x, w, bias, y, act);
  if constexpr (std::is_same_v<T, float>)
    if (implicit_gemm_enabled()) return implicit_gemm_conv(g, x, pack_conv_weights(g, w), bias, y, act);
  const int64_t M = g.n * g.oh * g.ow, cg = g.cin_g(), og = g.cout_g(), K = g.k();
  // The GEMMs write output rows [m0, m0 + mc); then the bias and the activation
  // go on in one pass. (Pointwise GEMMs in row blocks, to keep each block in
  // cache for that pass, measured no faster than one GEMM: the packing repeats.)
  const bool epilogue = bias != nullptr || act != Activation::None;
  auto finish_rows = [&](int64_t m0, int64_t mc) {
    if (epilogue) bias_act_rows(y + m0 * g.c_out, mc, g.c_out, bias, act);
  };
  if (g.pointwise()) {
    for (int64_t grp = 0; grp < g.groups; ++grp)
      gemm<T>(false, true, M, og, cg, T(1), x + grp * cg, g.c_in, w + grp * og * cg, cg, T(0), y + grp * og, g.c_out);
    finish_rows(0, M);
    return;
  }
  for_each_image_chunk<T>(g, [&](T* col, int64_t n0, int64_t nb, int64_t m0, int64_t mc, int64_t grp) {
    im2col(g, x, n0, nb, grp, col);
    gemm<T>(false, true, mc, og, K, T(1), col, K, w + grp * og * K, K, T(0), y + m0 * g.c_out + grp * og, g.c_out);
    if (grp == g.groups - 1) finish_rows(m0, mc);
  });
}

template <typename T>
void conv2d_backward_input(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  if (g.n == 0 || g.h == 0 || g.w == 0 || g.c_in == 0) return;
  if (g.oh == 0 || g.ow == 0 || g.c_out == 0) {
    std::memset(gx, 0, sizeof(T) * g.n * g.h * g.w * g.c_in);
    return;
  }
  if (g.depthwise()) return depthwise_backward_input(g, gy, w, gx);
  const int64_t M = g.n * g.oh * g.ow, cg = g.cin_g(), og = g.cout_g(), K = g.k();
  if (g.pointwise()) {
    for (int64_t grp = 0; grp < g.groups; ++grp)
      gemm<T>(false, false, M, cg, og, T(1), gy + grp * og, g.c_out, w + grp * og * cg, cg, T(0), gx + grp * cg,
              g.c_in);
    return;
  }
  const Taps th = kernel_taps(g.h, g.oh, g.kh, g.sh, g.ph, g.dh);
  const Taps tw = kernel_taps(g.w, g.ow, g.kw, g.sw, g.pw, g.dw);
  for_each_image_chunk<T>(g, [&](T* gcol, int64_t n0, int64_t nb, int64_t m0, int64_t mc, int64_t grp) {
    gemm<T>(false, false, mc, K, og, T(1), gy + m0 * g.c_out + grp * og, g.c_out, w + grp * og * K, K, T(0), gcol, K);
    col2im_gather(g, gcol, n0, nb, grp, th, tw, gx);
  });
}

template <typename T>
void conv2d_backward_weight(const ConvGeom& g, const T* x, const T* gy, T* gw) {
  const int64_t M = g.n * g.oh * g.ow, cg = g.cin_g(), og = g.cout_g(), K = g.k();
  if (M == 0 || g.c_out == 0 || K == 0) {
    std::memset(gw, 0, sizeof(T) * g.c_out * K);
    return;
  }
  if (g.depthwise()) return depthwise_backward_weight(g, x, gy, gw);
  if (g.pointwise()) {
    for (int64_t grp = 0; grp < g.groups; ++grp)
      gemm<T>(true, false, og, cg, M, T(1), gy + grp * og, g.c_out, x + grp * cg, g.c_in, T(0), gw + grp * og * cg,
              cg);
    return;
  }
  for_each_image_chunk<T>(g, [&](T* col, int64_t n0, int64_t nb, int64_t m0, int64_t mc, int64_t grp) {
    im2col(g, x, n0, nb, grp, col);
    const T beta = n0 == 0 ? T(0) : T(1);  // the first chunk writes, later chunks accumulate
    gemm<T>(true, false, og, K, mc, T(1), gy + m0 * g.c_out + grp * og, g.c_out, col, K, beta, gw + grp * og * K, K);
  });
}

template <typename T>
void conv2d_backward_bias(const ConvGeom& g, const T* gy, T* gb) {
  column_sums<T>(g.n * g.oh * g.ow, g.c_out, gy, gb);
}

#define KESTREL_INSTANTIATE_CONV(T)                                                              \
  template std::vector<T> depthwise_weight_taps_major<T>(const ConvGeom&, const T*);             \
  template void depthwise_forward_taps_major<T>(const ConvGeom&, const T*, const T*, const T*, T*, Activation); \
  template void conv2d_forward<T>(const ConvGeom&, const T*, const T*, const T*, T*, Activation); \
  template void conv2d_backward_input<T>(const ConvGeom&, const T*, const T*, T*);               \
  template void conv2d_backward_weight<T>(const ConvGeom&, const T*, const T*, T*);              \
  template void conv2d_backward_bias<T>(const ConvGeom&, const T*, T*);
KESTREL_INSTANTIATE_CONV(float)
KESTREL_INSTANTIATE_CONV(double)
#undef KESTREL_INSTANTIATE_CONV

}  // namespace kestrel::cpu
