#include "engine/cpu/conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/cpu/activation_math.h"
#include "engine/cpu/conv_gemm.h"
#include "engine/cpu/depthwise.h"
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
        const int64_t iw0 = ow * g.sw - g.pw;
        if (cg == g.c_in && g.dw == 1 && iw0 >= 0 && iw0 + g.kw <= g.w) {
          // One group at dilation 1, the window row inside: its taps are one
          // run of kw * c_in values (a 3x3 RGB stem copied 3 floats at a time).
          const T* s = src_row + iw0 * g.c_in;
          T* d = dst + kh * g.kw * cg;
          const int64_t len = g.kw * cg;
          if (len >= 16)
            std::memcpy(d, s, sizeof(T) * len);
          else
            for (int64_t i = 0; i < len; ++i) d[i] = s[i];
          continue;
        }
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

// At stride 1 (one group), a convolution's input gradient is the forward
// pass of the convolution from gy's c_out channels to c_in with the kernel
// flipped and transposed and padding (k - 1) d - p: the implicit GEMM, with
// neither im2col nor col2im (a 1x1 convolution is the case k = 1).
bool backward_input_is_a_convolution(const ConvGeom& g) {
  return g.groups == 1 && g.sh == 1 && g.sw == 1 && (g.kh - 1) * g.dh >= g.ph && (g.kw - 1) * g.dw >= g.pw;
}

void backward_input_gemm(const ConvGeom& g, const float* gy, const float* w, float* gx) {
  ConvGeom t = g;
  t.h = g.oh, t.w = g.ow, t.c_in = g.c_out;
  t.oh = g.h, t.ow = g.w, t.c_out = g.c_in;
  t.ph = (g.kh - 1) * g.dh - g.ph, t.pw = (g.kw - 1) * g.dw - g.pw;
  implicit_gemm_conv(t, gy, pack_conv_weights_transposed(g, w), nullptr, gx, Activation::None);
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

// Few input channels (a stem), one group, AVX-512: the im2col rows (taps x
// c_in values each, 27 for a 3x3 RGB stem) are the input of a 1x1 weight
// gradient, whose kernel then fills its registers where the taps alone would not.
void im2col_weight_gradient(const ConvGeom& g, const float* x, const float* gy, float* gw) {
  const int64_t K = g.k();
  std::vector<float> chunk_gw;
  for_each_image_chunk<float>(g, [&](float* col, int64_t n0, int64_t nb, int64_t m0, int64_t mc, int64_t) {
    im2col(g, x, n0, nb, 0, col);
    ConvGeom rows;  // mc pixels of K channels, 1x1
    rows.n = 1, rows.h = rows.oh = mc, rows.w = rows.ow = 1, rows.c_in = K, rows.c_out = g.c_out;
    if (n0 == 0) return weight_gradient_gemm(rows, col, gy + m0 * g.c_out, gw);
    chunk_gw.resize(static_cast<size_t>(g.c_out * K));
    weight_gradient_gemm(rows, col, gy + m0 * g.c_out, chunk_gw.data());
    for (int64_t e = 0; e < g.c_out * K; ++e) gw[e] += chunk_gw[e];
  });
}

}  // namespace

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
  if constexpr (std::is_same_v<T, float>)
    if (backward_input_is_a_convolution(g) && implicit_gemm_enabled()) return backward_input_gemm(g, gy, w, gx);
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
  if constexpr (std::is_same_v<T, float>) {
    if (weight_gradient_gemm_applies(g)) return weight_gradient_gemm(g, x, gy, gw);
    if (g.groups == 1 && implicit_gemm_enabled()) return im2col_weight_gradient(g, x, gy, gw);
  }
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
  template void conv2d_forward<T>(const ConvGeom&, const T*, const T*, const T*, T*, Activation); \
  template void conv2d_backward_input<T>(const ConvGeom&, const T*, const T*, T*);               \
  template void conv2d_backward_weight<T>(const ConvGeom&, const T*, const T*, T*);              \
  template void conv2d_backward_bias<T>(const ConvGeom&, const T*, T*);
KESTREL_INSTANTIATE_CONV(float)
KESTREL_INSTANTIATE_CONV(double)
#undef KESTREL_INSTANTIATE_CONV

}  // namespace kestrel::cpu
