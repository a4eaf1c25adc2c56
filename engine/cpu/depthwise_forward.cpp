// The depthwise convolution's forward pass (see depthwise.h).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/cpu/activation_math.h"
#include "engine/cpu/depthwise.h"
#include "engine/cpu/isa.h"
#include "engine/cpu/parallel.h"
#include "engine/cpu/vector_lanes.h"

namespace kestrel::cpu {

namespace {


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
  const int64_t C = g.c_in, XS = g.xs(), YS = g.ys(), step = g.sw * XS;
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
    const int64_t xr = win + kh * g.dh * g.w * XS + c;  // an offset: win + c alone may precede x
    const T* wr = wt + kh * g.kw * C + c;
    for (int64_t kw = tw.k0; kw < tw.k1; ++kw) {
      V wv, xv;
      load_lanes(wv, wr + kw * C);
#pragma GCC unroll 4
      for (int64_t p = 0; p < P; ++p) {
        load_lanes(xv, x + (xr + kw * g.dw * XS + p * step));
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
    store_sums<T, A, N>(out + p * YS + c, acc[p][0]);
  }
}

// P output pixels side by side of a convolution with stride S (1 or 2) and
// dilation 1 along the width, all KW taps inside: they read S (P - 1) + KW
// input columns per kernel row, each loaded once and used for every tap
// that reaches it (dw_forward_pixels loads P x KW: the loads, not the
// multiply-adds, bounded it). Taps are summed in the same order as there.
// kPadded: the window may reach into the padding (col0, the first input
// column read, may be negative; columns past g.w too): such columns load as
// zeros, which leave each sum as it was, and only the first `valid` pixels
// are stored. On a row of 7 or 14 (a late 5x5 layer) most pixels are edges,
// which one at a time (dw_forward_pixels) cost several times as much.
template <typename T, Activation A, int64_t P, int64_t KW, int64_t S, int64_t N, bool kPadded = false>
KESTREL_INLINE void dw_forward_pixels_sliding(const ConvGeom& g, const T* x, int64_t win, const T* wt, const T* bias,
                                              TapRange th, int64_t c, T* out, int64_t col0 = 0,
                                              int64_t valid = P) {
  using V = typename Lanes<T, N>::type;
  const int64_t C = g.c_in, XS = g.xs(), YS = g.ys();
  V init{};
  if (bias != nullptr) load_lanes(init, bias + c);
  V acc[P];
#pragma GCC unroll 16
  for (int64_t p = 0; p < P; ++p) acc[p] = init;
  for (int64_t kh = th.k0; kh < th.k1; ++kh) {
    const int64_t xr = win + kh * g.dh * g.w * XS + c;  // an offset: it may precede x
    const T* wr = wt + kh * KW * C + c;
    V wv[KW], xv[S * (P - 1) + KW];
#pragma GCC unroll 8
    for (int64_t k = 0; k < KW; ++k) load_lanes(wv[k], wr + k * C);
    if constexpr (kPadded) {
#pragma GCC unroll 16
      for (int64_t i = 0; i < S * (P - 1) + KW; ++i) {
        if (static_cast<uint64_t>(col0 + i) < static_cast<uint64_t>(g.w))
          load_lanes(xv[i], x + (xr + i * XS));
        else
          xv[i] = V{};
      }
    } else {
      const T* xp = x + xr;
#pragma GCC unroll 16
      for (int64_t i = 0; i < S * (P - 1) + KW; ++i, xp += XS) load_lanes(xv[i], xp);  // one pointer, not 12 offsets
    }
#pragma GCC unroll 8
    for (int64_t p = 0; p < P; ++p)
#pragma GCC unroll 8
      for (int64_t k = 0; k < KW; ++k) acc[p] += xv[S * p + k] * wv[k];
  }
#pragma GCC unroll 16
  for (int64_t p = 0; p < P; ++p)
    if (!kPadded || p < valid) store_sums<T, A, N>(out + p * YS + c, acc[p]);
}

// One output pixel of a layer thinner than half a vector: plain loops.
template <typename T, Activation A>
KESTREL_INLINE void dw_forward_thin(const ConvGeom& g, const T* x, int64_t win, const T* wt, const T* bias,
                                    TapRange th, TapRange tw, T* out) {
  const int64_t C = g.c_in;
  for (int64_t c = 0; c < C; ++c) out[c] = bias != nullptr ? bias[c] : T(0);
  for (int64_t kh = th.k0; kh < th.k1; ++kh)
    for (int64_t kw = tw.k0; kw < tw.k1; ++kw) {
      const T* xp = x + (win + (kh * g.dh * g.w + kw * g.dw) * g.xs());
      const T* wp = wt + (kh * g.kw + kw) * C;
      for (int64_t c = 0; c < C; ++c) out[c] += xp[c] * wp[c];
    }
  for (int64_t c = 0; c < C; ++c) out[c] = act_value<A, T>(out[c]);
}

// P output pixels from column ow, all with the taps tw, channel block by
// channel block. KW > 0: the sliding kernel, for pixels of a row with stride
// S and dilation 1 along the width and KW taps across (tw must be all of
// them): interior ones, or with kPadded any, of which `valid` are stored.
template <typename T, Activation A, int64_t P, int64_t Bytes, int64_t KW = 0, int64_t S = 1, bool kPadded = false>
KESTREL_INLINE void dw_forward_run(const ConvGeom& g, const T* x, const T* wt, const T* bias, TapRange th,
                                   TapRange tw, int64_t row, int64_t ow, T* out, int64_t valid = P) {
  const int64_t C = g.c_in, XS = g.xs(), col0 = ow * g.sw - g.pw, win = (row + col0) * XS;
  if (C < int64_t(Bytes / sizeof(T) / 2)) {
    for (int64_t p = 0; p < P; ++p)
      dw_forward_thin<T, A>(g, x, win + p * g.sw * XS, wt, bias, th, tw, out + p * g.ys());
    return;
  }
  for_overlapping_channel_blocks<T, Bytes>(C, [&](auto lanes, int64_t c) KESTREL_LAMBDA_INLINE {
    constexpr int64_t N = decltype(lanes)::value;
    if constexpr (KW > 0)
      dw_forward_pixels_sliding<T, A, P, KW, S, N, kPadded>(g, x, win, wt, bias, th, c, out, col0, valid);
    else
      dw_forward_pixels<T, A, P, N>(g, x, win, wt, bias, th, tw, c, out);
  });
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

// A whole row through the sliding kernel, Wide pixels at a time: interior
// runs as they are, runs that reach into the padding with its columns read
// as zeros. Channel counts under half a block keep dw_forward_row.
template <typename T, int64_t Wide, int64_t Bytes, int64_t KW, int64_t S>
KESTREL_INLINE void dw_forward_sliding_row(const ConvGeom& g, const T* x, const T* wt, const T* bias,
                                           const DwRowSpan& s, T* yrow) {
  const TapRange all{0, KW};
  for (int64_t ow = 0; ow < g.ow; ow += Wide) {
    T* out = yrow + ow * g.ys();
    if (ow >= s.first && ow + Wide <= s.last + 1)
      dw_forward_run<T, Activation::None, Wide, Bytes, KW, S>(g, x, wt, bias, s.th, all, s.row, ow, out);
    else
      dw_forward_run<T, Activation::None, Wide, Bytes, KW, S, true>(g, x, wt, bias, s.th, all, s.row, ow, out,
                                                                   std::min(Wide, g.ow - ow));
  }
}

// The sliding kernel over a whole row, for dilation 1, strides 1 and 2 and
// the zoo's kernel widths (3, 5), with no activation: one build serves
// every activation (each build is hundreds of unrolled multiply-adds; built
// per activation they took minutes to compile). False where it does not
// apply: dw_forward_row then does the row.
template <int64_t Bytes>
KESTREL_INLINE bool dw_forward_sliding(const ConvGeom& g, const float* x, const float* wt, const float* bias,
                                       const DwRowSpan& s, float* yrow) {
  // Stride 1: 8 sums, 5 weights and 12 input columns fit AVX-512's 32
  // registers; stride 2 reads 2 columns per pixel, so 4 pixels.
  constexpr int64_t kWide = Bytes >= 64 ? 8 : 4;
  if (g.dw != 1 || g.c_in < int64_t(Bytes / sizeof(float) / 2)) return false;
  if (g.sw == 1 && g.kw == 3)
    dw_forward_sliding_row<float, kWide, Bytes, 3, 1>(g, x, wt, bias, s, yrow);
  else if (g.sw == 1 && g.kw == 5)
    dw_forward_sliding_row<float, kWide, Bytes, 5, 1>(g, x, wt, bias, s, yrow);
  else if (g.sw == 2 && g.kw == 3)
    dw_forward_sliding_row<float, 4, Bytes, 3, 2>(g, x, wt, bias, s, yrow);
  else if (g.sw == 2 && g.kw == 5)
    dw_forward_sliding_row<float, 4, Bytes, 5, 2>(g, x, wt, bias, s, yrow);
  else
    return false;
  return true;
}

// One output row, pixel runs with only their valid taps: for what the
// sliding kernel does not take (dilation, 7x7, thin layers, f64). A
// window's top-left input pixel may lie in the padding (its offset may be
// negative): only valid taps are read. Interior pixels, whose taps are all
// inside, go four at a time.
template <typename T, Activation A, int64_t Bytes>
KESTREL_INLINE void dw_forward_row(const ConvGeom& g, const T* x, const T* wt, const T* bias, T* yrow,
                                   const DwRowSpan& s) {
  constexpr int64_t kPixels = 4;
  const int64_t YS = g.ys();
  // Inlined, so it is compiled for the caller's ISA (a lambda is otherwise a
  // function of its own, built for the baseline).
  auto edge = [&](int64_t o) KESTREL_LAMBDA_INLINE {
    const TapRange tw = valid_taps(o, g.sw, g.pw, g.dw, g.kw, g.w);
    dw_forward_run<T, A, 1, Bytes>(g, x, wt, bias, s.th, tw, s.row, o, yrow + o * YS);
  };
  for (int64_t ow = 0; ow < s.first; ++ow) edge(ow);
  int64_t ow = s.first;
  for (; ow + kPixels <= s.last + 1; ow += kPixels)
    dw_forward_run<T, A, kPixels, Bytes>(g, x, wt, bias, s.th, TapRange{0, g.kw}, s.row, ow, yrow + ow * YS);
  for (; ow + 2 <= s.last + 1; ow += 2)
    dw_forward_run<T, A, 2, Bytes>(g, x, wt, bias, s.th, TapRange{0, g.kw}, s.row, ow, yrow + ow * YS);
  for (; ow < g.ow; ++ow) edge(ow);
}

// The sliding kernel where it applies, then the activation over the row
// while it is in cache; elsewhere dw_forward_row, with the activations that
// models put after a depthwise conv inlined (so compiled for each ISA too)
// and any other as a second pass over the row.
template <int64_t Bytes>
KESTREL_INLINE void dw_forward_row_act(const ConvGeom& g, const float* x, const float* wt, const float* bias,
                                       float* yrow, int64_t n, int64_t oh, Activation act) {
  const DwRowSpan s = dw_row_span(g, n, oh);
  const bool slid = dw_forward_sliding<Bytes>(g, x, wt, bias, s, yrow);
  if (!slid) {
    switch (act) {
      case Activation::ReLU: return dw_forward_row<float, Activation::ReLU, Bytes>(g, x, wt, bias, yrow, s);
      case Activation::ReLU6: return dw_forward_row<float, Activation::ReLU6, Bytes>(g, x, wt, bias, yrow, s);
      case Activation::HardSwish: return dw_forward_row<float, Activation::HardSwish, Bytes>(g, x, wt, bias, yrow, s);
      default: dw_forward_row<float, Activation::None, Bytes>(g, x, wt, bias, yrow, s);
    }
  }
  if (act == Activation::None) return;
  act_dispatch(act, [&](auto a) KESTREL_LAMBDA_INLINE {
    if (g.ys() == g.c_in) return bias_act_row<float, decltype(a)::value>(yrow, g.ow * g.c_in, nullptr);
    for (int64_t o = 0; o < g.ow; ++o) bias_act_row<float, decltype(a)::value>(yrow + o * g.ys(), g.c_in, nullptr);
  });
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

// f64 is for gradchecks: the plain template.
template <typename T>
void dw_forward_row_any(const ConvGeom& g, const T* x, const T* wt, const T* bias, T* yrow, int64_t n, int64_t oh,
                        Activation act) {
  if constexpr (std::is_same_v<T, float>) {
    dw_forward_row_f32(g, x, wt, bias, yrow, n, oh, act);
  } else {
    const DwRowSpan s = dw_row_span(g, n, oh);
    act_dispatch(act, [&](auto a) { dw_forward_row<T, decltype(a)::value, 64>(g, x, wt, bias, yrow, s); });
  }
}

}  // namespace

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
  parallel_for(rows, rows * g.ow * C * g.kh * g.kw > 32768, [&](int64_t r) {
    dw_forward_row_any<T>(g, x, wt, bias, y + r * g.ow * g.ys(), r / g.oh, r % g.oh, act);
  });
}

template <typename T>
void depthwise_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y, Activation act) {
  depthwise_forward_taps_major(g, x, depthwise_weight_taps_major(g, w).data(), bias, y, act);
}

#define KESTREL_INSTANTIATE_DW_FORWARD(T)                                                                       \
  template std::vector<T> depthwise_weight_taps_major<T>(const ConvGeom&, const T*);                            \
  template void depthwise_forward_taps_major<T>(const ConvGeom&, const T*, const T*, const T*, T*, Activation); \
  template void depthwise_forward<T>(const ConvGeom&, const T*, const T*, const T*, T*, Activation);
KESTREL_INSTANTIATE_DW_FORWARD(float)
KESTREL_INSTANTIATE_DW_FORWARD(double)
#undef KESTREL_INSTANTIATE_DW_FORWARD

}  // namespace kestrel::cpu
