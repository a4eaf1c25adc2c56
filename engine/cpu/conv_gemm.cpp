#include "engine/cpu/conv_gemm.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#include "engine/cpu/activation_math.h"
#include "engine/cpu/isa.h"
#include "engine/cpu/parallel.h"
#include "engine/error.h"

#if KESTREL_HAVE_AVX512_TARGET
#include <immintrin.h>
#endif

namespace kestrel::cpu {

namespace {

PackedConvWeights allocate_packed(int64_t groups, int64_t k, int64_t out_channels) {
  PackedConvWeights p;
  p.groups = groups;
  p.k = k;
  p.panels = (out_channels + kConvPanel - 1) / kConvPanel;
  const size_t bytes = (sizeof(float) * p.groups * p.panels * k * kConvPanel + 63) / 64 * 64;
  p.data = {static_cast<float*>(std::aligned_alloc(64, std::max<size_t>(bytes, 64))), std::free};
  if (!p.data) throw std::bad_alloc();
  return p;
}

}  // namespace

PackedConvWeights pack_conv_weights(const ConvGeom& g, const float* w) {
  const int64_t og = g.cout_g(), K = g.k();
  PackedConvWeights p = allocate_packed(g.groups, K, og);
  // Reduction indices in blocks of 64: a block of the panel (8 KB) stays in
  // L1 while its 32 rows are written across it.
  constexpr int64_t kBlock = 64;
  for (int64_t grp = 0; grp < g.groups; ++grp)
    for (int64_t pn = 0; pn < p.panels; ++pn) {
      float* panel = p.data.get() + (grp * p.panels + pn) * K * kConvPanel;
      for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
        const int64_t k1 = std::min(K, k0 + kBlock);
        for (int64_t j = 0; j < kConvPanel; ++j) {
          const int64_t o = pn * kConvPanel + j;
          const float* src = w + (grp * og + o) * K;
          for (int64_t k = k0; k < k1; ++k) panel[k * kConvPanel + j] = o < og ? src[k] : 0.0f;
        }
      }
    }
  return p;
}

PackedConvWeights pack_conv_weights_transposed(const ConvGeom& g, const float* w) {
  KCHECK(g.groups == 1, ShapeError, "pack_conv_weights_transposed: one group only");
  const int64_t taps = g.kh * g.kw, C = g.c_in, O = g.c_out;
  PackedConvWeights p = allocate_packed(1, taps * O, C);
  // The transposed kernel's reduction index is (tap, o) and its output
  // channel i: a panel's row for (tap, o) is 32 consecutive i of w[o, flipped tap].
  for (int64_t pn = 0; pn < p.panels; ++pn) {
    const int64_t i0 = pn * kConvPanel, n = std::min(kConvPanel, C - i0);
    float* dst = p.data.get() + pn * p.k * kConvPanel;
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t o = 0; o < O; ++o, dst += kConvPanel) {
        const float* src = w + (o * taps + (taps - 1 - t)) * C + i0;
        std::copy(src, src + n, dst);
        std::fill(dst + n, dst + kConvPanel, 0.0f);
      }
  }
  return p;
}

#if KESTREL_HAVE_AVX512_TARGET

bool implicit_gemm_enabled() {
  static const bool on = use_avx512() && !env_switch("KESTREL_NO_CONV_GEMM");
  return on;
}

namespace {

#define KESTREL_AVX512_INLINE inline __attribute__((always_inline, target("arch=x86-64-v4")))

// A tile is up to 12 output pixels by one panel: 24 sums, two weight vectors
// and a broadcast fill 27 of the 32 vector registers.
constexpr int kTileRows = 12;
// Reduction indices per block: a panel's slice is then 16 KB, half of L1,
// and stays there while the tiles of a chunk stream their pixels past it.
constexpr int64_t kDepth = 128;
// Output pixels per task at most: a chunk's inputs stay in L2 across the panels.
constexpr int64_t kChunkRows = 8 * kTileRows;

struct Job {
  const ConvGeom& g;
  const float* x;
  const PackedConvWeights& w;
  const float* bias;
  float* y;
  Activation act;
  const float* zeros;     // kw * cin_g() zeros: what a tap (or window row) in the padding reads
  const float* residual;  // null, or added (shaped as y) before the activation
};

bool activates_in_register(Activation act) {
  return act == Activation::None || act == Activation::ReLU || act == Activation::ReLU6;
}

// Any other activation: over the stored tile, while it is in L1.
KESTREL_TARGET_AVX512 void activate_tile(float* y, int64_t rows, int64_t cols, int64_t ld, Activation act) {
  act_dispatch(act, [&](auto a) KESTREL_LAMBDA_INLINE {
    for (int64_t r = 0; r < rows; ++r) bias_act_row<float, decltype(a)::value>(y + r * ld, cols, nullptr);
  });
}

// A register of sums for 16 channels or for 8. A panel's last 1-8 channels
// take an 8-lane register: where the CPU splits 512-bit operations in two
// (AMD Zen 4), its multiply-adds cost half. (The masked max and min: GCC 12
// flags the plain _mm512_max_ps's undefined pass-through.)
template <int Lanes>
struct Vec;
template <>
struct Vec<16> {
  using V = __m512;
  static KESTREL_AVX512_INLINE __mmask16 mask(int64_t n) {
    return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
  }
  static KESTREL_AVX512_INLINE V zero() { return _mm512_setzero_ps(); }
  static KESTREL_AVX512_INLINE V load(const float* p) { return _mm512_load_ps(p); }
  static KESTREL_AVX512_INLINE V load(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static KESTREL_AVX512_INLINE void store(float* p, __mmask16 m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static KESTREL_AVX512_INLINE V fma(float a, V w, V acc) { return _mm512_fmadd_ps(_mm512_set1_ps(a), w, acc); }
  static KESTREL_AVX512_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static KESTREL_AVX512_INLINE V relu(V v) { return _mm512_mask_max_ps(v, 0xFFFF, v, zero()); }
  static KESTREL_AVX512_INLINE V cap6(V v) { return _mm512_mask_min_ps(v, 0xFFFF, v, _mm512_set1_ps(6.0f)); }
};
template <>
struct Vec<8> {
  using V = __m256;
  static KESTREL_AVX512_INLINE __mmask8 mask(int64_t n) {
    return n >= 8 ? __mmask8(0xFF) : n <= 0 ? __mmask8(0) : __mmask8((1u << n) - 1);
  }
  static KESTREL_AVX512_INLINE V zero() { return _mm256_setzero_ps(); }
  static KESTREL_AVX512_INLINE V load(const float* p) { return _mm256_load_ps(p); }
  static KESTREL_AVX512_INLINE V load(__mmask8 m, const float* p) { return _mm256_maskz_loadu_ps(m, p); }
  static KESTREL_AVX512_INLINE void store(float* p, __mmask8 m, V v) { _mm256_mask_storeu_ps(p, m, v); }
  static KESTREL_AVX512_INLINE V fma(float a, V w, V acc) { return _mm256_fmadd_ps(_mm256_set1_ps(a), w, acc); }
  static KESTREL_AVX512_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static KESTREL_AVX512_INLINE V relu(V v) { return _mm256_max_ps(v, zero()); }
  static KESTREL_AVX512_INLINE V cap6(V v) { return _mm256_min_ps(v, _mm256_set1_ps(6.0f)); }
};

// act: one that activates_in_register.
template <typename S>
KESTREL_AVX512_INLINE typename S::V clamp_in_register(typename S::V v, Activation act) {
  if (act == Activation::None) return v;
  v = S::relu(v);
  return act == Activation::ReLU6 ? S::cap6(v) : v;
}

// Output pixels [m0, m0 + MR) by panel p of group grp, reduction indices
// [k0, k1): the sums start from the bias (the first block) or from y (later
// blocks) and are stored once; the last block also applies the activation.
// W: the panel's channels in use, in eighths of the 32 (ceil(cols / 8)):
// channels [0, 16) or [0, 8) in register 0, [16, 32) or [16, 24) in register
// 1 when W > 2.
template <int MR, int W>
KESTREL_TARGET_AVX512 void tile(const Job& j, int64_t grp, int64_t p, int64_t m0, int64_t k0, int64_t k1) {
  using S0 = Vec<(W >= 2 ? 16 : 8)>;
  using S1 = Vec<(W == 4 ? 16 : 8)>;
  constexpr bool two = W > 2;
  const ConvGeom& g = j.g;
  const int64_t cg = g.cin_g(), og = g.cout_g(), col0 = p * kConvPanel;
  const int64_t cols = std::min(kConvPanel, og - col0);
  const auto mask0 = S0::mask(cols);
  const auto mask1 = S1::mask(cols - 16);
  const int64_t ys = g.ys();
  float* yt = j.y + m0 * ys + grp * og + col0;
  typename S0::V acc0[MR];
  [[maybe_unused]] typename S1::V acc1[MR];
  if (k0 == 0) {
    const float* b = j.bias != nullptr ? j.bias + grp * og + col0 : nullptr;
    const auto b0 = b != nullptr ? S0::load(mask0, b) : S0::zero();
    const auto b1 = b != nullptr && two ? S1::load(mask1, b + 16) : S1::zero();
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      acc0[r] = b0;
      if constexpr (two) acc1[r] = b1;
    }
  } else {
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      acc0[r] = S0::load(mask0, yt + r * ys);
      if constexpr (two) acc1[r] = S1::load(mask1, yt + r * ys + 16);
    }
  }
  // Each pixel's image and the input position of its window's top-left tap.
  const bool pointwise = g.pointwise();
  int64_t image[MR] = {}, top[MR] = {}, left[MR] = {};
  if (!pointwise)
    for (int r = 0; r < MR; ++r) {
      const int64_t m = m0 + r, ow = m % g.ow, oh = m / g.ow % g.oh;
      image[r] = m / (g.ow * g.oh);
      top[r] = oh * g.sh - g.ph;
      left[r] = ow * g.sw - g.pw;
    }
  // When every pixel's window lies inside the input across its width, and
  // one group reads all channels at dilation 1, a window row's taps are
  // contiguous: a run can span the whole row (kw * c_in values) rather than
  // one tap's channels. That matters where c_in is small: a 3-channel stem's
  // pointers and bounds checks cost as much as its multiply-adds per tap.
  bool whole_rows = !pointwise && g.groups == 1 && g.dw == 1;
  for (int r = 0; r < MR && whole_rows; ++r) whole_rows = left[r] >= 0 && left[r] + g.kw <= g.w;
  const float* panel = j.w.panel(grp, p);
  for (int64_t k = k0; k < k1;) {  // one tap's run of channels (or a window row's) at a time
    const int64_t t = k / cg, c = k - t * cg;
    const int64_t len = std::min(k1 - k, whole_rows ? (g.kw - t % g.kw) * cg - c : cg - c);
    const float* a[MR];
    if (pointwise) {
      for (int r = 0; r < MR; ++r) a[r] = j.x + (m0 + r) * g.c_in + grp * cg + c;
    } else {
      const int64_t kh = t / g.kw, kw = t % g.kw;
      for (int r = 0; r < MR; ++r) {
        const int64_t ih = top[r] + kh * g.dh, iw = left[r] + kw * g.dw;
        const bool inside = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
        a[r] = inside ? j.x + ((image[r] * g.h + ih) * g.w + iw) * g.c_in + grp * cg + c : j.zeros;
      }
    }
    const float* wk = panel + k * kConvPanel;
    for (int64_t i = 0; i < len; ++i, wk += kConvPanel) {
      const auto w0 = S0::load(wk);
      [[maybe_unused]] typename S1::V w1;
      if constexpr (two) w1 = S1::load(wk + 16);
#pragma GCC unroll 12
      for (int r = 0; r < MR; ++r) {
        acc0[r] = S0::fma(a[r][i], w0, acc0[r]);
        if constexpr (two) acc1[r] = S1::fma(a[r][i], w1, acc1[r]);
      }
    }
    k += len;
  }
  const bool last = k1 == j.w.k;
  if (last && j.residual != nullptr) {
    const float* rt = j.residual + m0 * g.c_out + grp * og + col0;
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      acc0[r] = S0::add(acc0[r], S0::load(mask0, rt + r * g.c_out));
      if constexpr (two) acc1[r] = S1::add(acc1[r], S1::load(mask1, rt + r * g.c_out + 16));
    }
  }
  const Activation in_register = last && activates_in_register(j.act) ? j.act : Activation::None;
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    S0::store(yt + r * ys, mask0, clamp_in_register<S0>(acc0[r], in_register));
    if constexpr (two) S1::store(yt + r * ys + 16, mask1, clamp_in_register<S1>(acc1[r], in_register));
  }
  if (last && !activates_in_register(j.act)) activate_tile(yt, MR, cols, ys, j.act);
}

using TileFn = void (*)(const Job&, int64_t, int64_t, int64_t, int64_t, int64_t);

template <int W, int... R>
constexpr std::array<TileFn, kTileRows> tiles_of_width(std::integer_sequence<int, R...>) {
  return {&tile<R + 1, W>...};
}
// kTiles[W - 1][MR - 1]
const std::array<std::array<TileFn, kTileRows>, 4> kTiles = {
    tiles_of_width<1>(std::make_integer_sequence<int, kTileRows>{}),
    tiles_of_width<2>(std::make_integer_sequence<int, kTileRows>{}),
    tiles_of_width<3>(std::make_integer_sequence<int, kTileRows>{}),
    tiles_of_width<4>(std::make_integer_sequence<int, kTileRows>{})};

// Output pixels [r0, r1) by panel p of group grp, every reduction block.
void run_task(const Job& j, int64_t grp, int64_t p, int64_t r0, int64_t r1) {
  const int64_t K = j.w.k, blocks = (K + kDepth - 1) / kDepth;
  const int64_t cols = std::min(kConvPanel, j.g.cout_g() - p * kConvPanel);
  const auto& tiles = kTiles[(cols + 7) / 8 - 1];
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = K * b / blocks, k1 = K * (b + 1) / blocks;
    for (int64_t m = r0; m < r1; m += kTileRows)
      tiles[std::min<int64_t>(kTileRows, r1 - m) - 1](j, grp, p, m, k0, k1);
  }
}

// ------------------------------------------------------------------ weight gradient

// Reduction chunks of a weight gradient (output pixels): fixed by the shape,
// never by the thread count, so that the sums' order is too; each chunk's
// partial gradient is a c_out x k buffer, 16 MB in all at most.
int64_t weight_chunks(int64_t M, int64_t c_out, int64_t k) {
  const int64_t by_size = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, c_out * k));
  return std::clamp<int64_t>(M / 1024, 1, std::min<int64_t>(32, by_size));
}

// acc[r] += gy[a + r] * x row b, for count pixels whose gy rows are a_step
// apart and whose input rows are b_step apart.
template <int MR, typename S0, typename S1, bool kTwo>
KESTREL_AVX512_INLINE void accumulate_pixels(typename S0::V (&acc0)[MR], typename S1::V (&acc1)[MR], const float* a,
                                             const float* b, int64_t count, int64_t a_step, int64_t b_step,
                                             decltype(S0::mask(0)) mask0, decltype(S1::mask(0)) mask1) {
  for (int64_t i = 0; i < count; ++i, a += a_step, b += b_step) {
    const auto w0 = S0::load(mask0, b);
    [[maybe_unused]] typename S1::V w1;
    if constexpr (kTwo) w1 = S1::load(mask1, b + 16);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      acc0[r] = S0::fma(a[r], w0, acc0[r]);
      if constexpr (kTwo) acc1[r] = S1::fma(a[r], w1, acc1[r]);
    }
  }
}

// gw rows [o0, o0 + MR) by input channels [c0, c0 + 32) of tap t: the sum over
// output pixels [m0, m1) of gy[m, o] times the input pixel that tap t of m
// reads (none in the padding). The input rows are the panel (no packing),
// gy's values are broadcast; the sums stay in registers and are stored once
// to out (row stride g.k()). W: the channels in use, in eighths of 32.
template <int MR, int W>
KESTREL_TARGET_AVX512 void weight_tile(const ConvGeom& g, const float* x, const float* gy, int64_t o0, int64_t t,
                                       int64_t c0, int64_t m0, int64_t m1, float* out) {
  using S0 = Vec<(W >= 2 ? 16 : 8)>;
  using S1 = Vec<(W == 4 ? 16 : 8)>;
  constexpr bool two = W > 2;
  const int64_t C = g.c_in, O = g.c_out;
  const int64_t cols = std::min(kConvPanel, C - c0);
  const auto mask0 = S0::mask(cols);
  const auto mask1 = S1::mask(cols - 16);
  typename S0::V acc0[MR];
  typename S1::V acc1[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    acc0[r] = S0::zero();
    acc1[r] = S1::zero();
  }
  if (g.pointwise()) {
    accumulate_pixels<MR, S0, S1, two>(acc0, acc1, gy + m0 * O + o0, x + m0 * C + c0, m1 - m0, O, C, mask0, mask1);
  } else {
    // Output row by output row: the pixels of a row whose tap lands inside.
    const int64_t kh = t / g.kw, kw = t % g.kw;
    for (int64_t m = m0; m < m1;) {
      const int64_t row = m / g.ow, ow0 = m % g.ow, ow1 = std::min(g.ow, ow0 + (m1 - m));
      const int64_t n = row / g.oh, ih = row % g.oh * g.sh - g.ph + kh * g.dh;
      if (ih >= 0 && ih < g.h) {
        const int64_t shift = kw * g.dw - g.pw;  // iw = ow * sw + shift
        const int64_t lo = std::max(ow0, shift >= 0 ? 0 : (-shift + g.sw - 1) / g.sw);
        const int64_t hi = std::min(ow1, g.w - 1 - shift < 0 ? 0 : (g.w - 1 - shift) / g.sw + 1);
        if (hi > lo)
          accumulate_pixels<MR, S0, S1, two>(acc0, acc1, gy + (row * g.ow + lo) * O + o0,
                                             x + ((n * g.h + ih) * g.w + lo * g.sw + shift) * C + c0, hi - lo, O,
                                             g.sw * C, mask0, mask1);
      }
      m += ow1 - ow0;
    }
  }
  const int64_t K = g.k();
  float* dst = out + t * C + c0;
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    S0::store(dst + r * K, mask0, acc0[r]);
    if constexpr (two) S1::store(dst + r * K + 16, mask1, acc1[r]);
  }
}

using WeightTileFn = void (*)(const ConvGeom&, const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                              float*);

// kWeightTiles[W - 1][j]: rows 12, 8, 4, 2 and 1 (a remainder takes several).
template <int W>
constexpr std::array<WeightTileFn, 5> weight_tiles_of_width() {
  return {&weight_tile<12, W>, &weight_tile<8, W>, &weight_tile<4, W>, &weight_tile<2, W>, &weight_tile<1, W>};
}
constexpr int kWeightTileRows[5] = {12, 8, 4, 2, 1};
const std::array<std::array<WeightTileFn, 5>, 4> kWeightTiles = {
    weight_tiles_of_width<1>(), weight_tiles_of_width<2>(), weight_tiles_of_width<3>(), weight_tiles_of_width<4>()};

}  // namespace

bool weight_gradient_gemm_applies(const ConvGeom& g) {
  // Fewer input channels (a stem's 3) would leave most of each register idle.
  return implicit_gemm_enabled() && g.groups == 1 && !g.depthwise() && (g.pointwise() || g.c_in >= 16);
}

void weight_gradient_gemm(const ConvGeom& g, const float* x, const float* gy, float* gw) {
  KCHECK(g.groups == 1, ShapeError, "weight_gradient_gemm: one group only");
  const int64_t M = g.n * g.oh * g.ow, O = g.c_out, C = g.c_in, K = g.k(), taps = g.kh * g.kw;
  if (O == 0 || K == 0) return;
  const int64_t chunks = weight_chunks(M, O, K);
  const int64_t row_tiles = (O + kTileRows - 1) / kTileRows, panels = (C + kConvPanel - 1) / kConvPanel;
  const int64_t columns = taps * panels;
  std::vector<float> part(static_cast<size_t>(chunks * O * K));
  const double macs = static_cast<double>(M) * static_cast<double>(O) * static_cast<double>(K);
  parallel_for(chunks * row_tiles * columns, macs >= double(1 << 17), [&](int64_t task) {
    const int64_t chunk = task / (row_tiles * columns), rt = task / columns % row_tiles, col = task % columns;
    const int64_t t = col / panels, c0 = col % panels * kConvPanel;
    const int64_t m0 = M * chunk / chunks, m1 = M * (chunk + 1) / chunks;
    const auto& tiles = kWeightTiles[(std::min(kConvPanel, C - c0) + 7) / 8 - 1];
    float* out = part.data() + chunk * O * K;
    for (int64_t o = rt * kTileRows, end = std::min(O, o + kTileRows); o < end;) {
      int j = 0;
      while (kWeightTileRows[j] > end - o) ++j;
      tiles[j](g, x, gy, o, t, c0, m0, m1, out + o * K);
      o += kWeightTileRows[j];
    }
  });
  const int64_t n = O * K;
  parallel_for(n, n * chunks >= (1 << 16), [&](int64_t e) {
    float s = part[e];
    for (int64_t c = 1; c < chunks; ++c) s += part[c * n + e];
    gw[e] = s;
  });
}

void implicit_gemm_conv(const ConvGeom& g, const float* x, const PackedConvWeights& w, const float* bias, float* y,
                        Activation act, const float* residual) {
  KCHECK(!g.depthwise() && w.k == g.k() && w.groups == g.groups, ShapeError,
         "implicit_gemm_conv: weights packed for another convolution");
  KCHECK(g.xs() == g.c_in && (residual == nullptr || g.ys() == g.c_out), ShapeError,
         "implicit_gemm_conv: x must be dense, and y too when a residual is added");
  const int64_t M = g.n * g.oh * g.ow;
  if (M == 0 || g.c_out == 0) return;
  // What a tap in the padding reads: up to a window row's run (tile()).
  const std::vector<float> zeros(g.pointwise() ? 0 : static_cast<size_t>(g.kw * g.cin_g()), 0.0f);
  const Job job{g, x, w, bias, y, act, zeros.data(), residual};
  const double macs = static_cast<double>(M) * static_cast<double>(g.c_out) * static_cast<double>(g.k());
  const bool parallel = macs >= double(1 << 17);
  // Small layers (batch 1) in chunks of as little as one tile, so that the
  // threads get about four tasks each; chunk bounds do not change any sum.
  const int64_t spread = 4 * int64_t{partial_count(parallel)} * g.groups * w.panels;
  const int64_t rows = std::clamp((M / spread + kTileRows - 1) / kTileRows * kTileRows, int64_t{kTileRows}, kChunkRows);
  const int64_t chunks = (M + rows - 1) / rows, per_group = chunks * w.panels;
  // Consecutive tasks (one thread's, under the static schedule) share what is
  // bigger: a chunk of pixels across the panels, or, where the weights
  // outweigh the pixels (late layers at batch 1: 49 pixels, 4608 x 512
  // weights), a panel across the chunks, so that it is read from memory once
  // and then from L2, not once per chunk. The sums are the same either way.
  const bool panel_major = g.c_out > M;
  parallel_for(g.groups * per_group, parallel, [&](int64_t task) {
    const int64_t grp = task / per_group, i = task % per_group;
    const int64_t chunk = panel_major ? i % chunks : i / w.panels, p = panel_major ? i / chunks : i % w.panels;
    run_task(job, grp, p, chunk * rows, std::min(M, (chunk + 1) * rows));
  });
}

#else  // no AVX-512 build target: conv2d_forward keeps its im2col + BLAS path

bool implicit_gemm_enabled() { return false; }

void implicit_gemm_conv(const ConvGeom&, const float*, const PackedConvWeights&, const float*, float*, Activation,
                        const float*) {
  throw DeviceError("implicit_gemm_conv: this build has no AVX-512 target");
}

bool weight_gradient_gemm_applies(const ConvGeom&) { return false; }

void weight_gradient_gemm(const ConvGeom&, const float*, const float*, float*) {
  throw DeviceError("weight_gradient_gemm: this build has no AVX-512 target");
}

#endif

}  // namespace kestrel::cpu
