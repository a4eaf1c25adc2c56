#include "engine/cpu/pool.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/cpu/parallel.h"
#include "engine/cpu/taps.h"

namespace kestrel::cpu {

namespace {

constexpr int64_t kParallelWork = 32768;

// Calls body(dst, n, ih, iw) for every input pixel, rows split across threads;
// dst (the pixel's c gradients) is zeroed first.
template <typename T, typename Body>
void for_each_input_pixel(const PoolGeom& g, T* gx, int64_t work_per_pixel, Body&& body) {
  const int64_t rows = g.n * g.h;
  parallel_for(rows, rows * g.w * work_per_pixel > kParallelWork, [&](int64_t r) {
    const int64_t n = r / g.h, ih = r % g.h;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      T* dst = gx + (r * g.w + iw) * g.c;
      std::memset(dst, 0, sizeof(T) * g.c);
      body(dst, n, ih, iw);
    }
  });
}

// Same for every output pixel.
template <typename T, typename Body>
void for_each_output_pixel(const PoolGeom& g, T* y, int64_t work_per_pixel, Body&& body) {
  const int64_t rows = g.n * g.oh;
  parallel_for(rows, rows * g.ow * work_per_pixel > kParallelWork, [&](int64_t r) {
    const int64_t n = r / g.oh, oh = r % g.oh;
    for (int64_t ow = 0; ow < g.ow; ++ow) body(y + (r * g.ow + ow) * g.c, n, oh, ow);
  });
}

// ---------------------------------------------------------------- avg pool helpers

struct Window {
  int64_t start, end;  // clipped to the input
  int64_t count;       // divisor contribution along this dim
};

std::vector<Window> pool_windows(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, bool include_pad) {
  std::vector<Window> w(out);
  for (int64_t o = 0; o < out; ++o) {
    int64_t a = o * s - p;
    int64_t b = std::min(a + k, in + p);
    const int64_t padded = b - a;
    a = std::max<int64_t>(a, 0);
    b = std::min(b, in);
    w[o] = {a, b, include_pad ? padded : b - a};
  }
  return w;
}

std::vector<Window> adaptive_windows(int64_t in, int64_t out) {
  std::vector<Window> w(out);
  for (int64_t o = 0; o < out; ++o) {
    const int64_t a = (o * in) / out;
    const int64_t b = ((o + 1) * in + out - 1) / out;
    w[o] = {a, b, b - a};
  }
  return w;
}

Taps window_taps(int64_t in, const std::vector<Window>& ws) {
  return Taps::build(in, false, [&](auto&& add) {
    for (int64_t o = 0; o < static_cast<int64_t>(ws.size()); ++o)
      for (int64_t i = ws[o].start; i < ws[o].end; ++i) add(o, i, i - ws[o].start, 1.0);
  });
}

template <typename T>
void window_avg_forward(const PoolGeom& g, const std::vector<Window>& wh, const std::vector<Window>& ww, const T* x,
                        T* y) {
  for_each_output_pixel(g, y, g.c * g.kernel * g.kernel, [&](T* out, int64_t n, int64_t oh, int64_t ow) {
    std::memset(out, 0, sizeof(T) * g.c);
    for (int64_t ih = wh[oh].start; ih < wh[oh].end; ++ih) {
      const T* xrow = x + (n * g.h + ih) * g.w * g.c;
      for (int64_t iw = ww[ow].start; iw < ww[ow].end; ++iw) {
        const T* xp = xrow + iw * g.c;
#pragma omp simd
        for (int64_t c = 0; c < g.c; ++c) out[c] += xp[c];
      }
    }
    const int64_t count = wh[oh].count * ww[ow].count;
    const T inv = count > 0 ? T(1) / static_cast<T>(count) : T(0);
#pragma omp simd
    for (int64_t c = 0; c < g.c; ++c) out[c] *= inv;
  });
}

template <typename T>
void window_avg_backward(const PoolGeom& g, const std::vector<Window>& wh, const std::vector<Window>& ww,
                         const T* gy, T* gx) {
  const Taps th = window_taps(g.h, wh), tw = window_taps(g.w, ww);
  std::vector<T> inv_h(g.oh), inv_w(g.ow);
  for (int64_t o = 0; o < g.oh; ++o) inv_h[o] = wh[o].count > 0 ? T(1) / static_cast<T>(wh[o].count) : T(0);
  for (int64_t o = 0; o < g.ow; ++o) inv_w[o] = ww[o].count > 0 ? T(1) / static_cast<T>(ww[o].count) : T(0);
  for_each_input_pixel(g, gx, g.c * g.kernel * g.kernel, [&](T* dst, int64_t n, int64_t ih, int64_t iw) {
    for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
      const int64_t oh = th.o[a];
      const T* gyrow = gy + (n * g.oh + oh) * g.ow * g.c;
      for (int64_t b = tw.start[iw]; b < tw.start[iw + 1]; ++b) {
        const int64_t ow = tw.o[b];
        const T scale = inv_h[oh] * inv_w[ow];
        const T* gp = gyrow + ow * g.c;
#pragma omp simd
        for (int64_t c = 0; c < g.c; ++c) dst[c] += gp[c] * scale;
      }
    }
  });
}

// ---------------------------------------------------------------- bilinear helpers

struct Interp {
  int64_t i0, i1;
  double l0, l1;
};

// PyTorch's source index rule (aten/src/ATen/native/UpSample.h), computed in double.
std::vector<Interp> bilinear_interp(int64_t in, int64_t out, bool align_corners) {
  std::vector<Interp> v(out);
  double scale;
  if (align_corners)
    scale = out > 1 ? static_cast<double>(in - 1) / static_cast<double>(out - 1) : 0.0;
  else
    scale = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t o = 0; o < out; ++o) {
    double src = align_corners ? scale * static_cast<double>(o) : scale * (static_cast<double>(o) + 0.5) - 0.5;
    if (!align_corners && src < 0) src = 0;
    const int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    const double l1 = std::min(std::max(src - static_cast<double>(i0), 0.0), 1.0);
    const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
    v[o] = {i0, i1, 1.0 - l1, l1};
  }
  return v;
}

Taps interp_taps(int64_t in, const std::vector<Interp>& v) {
  return Taps::build(in, true, [&](auto&& add) {
    for (int64_t o = 0; o < static_cast<int64_t>(v.size()); ++o) {
      add(o, v[o].i0, 0, v[o].l0);
      add(o, v[o].i1, 1, v[o].l1);
    }
  });
}

}  // namespace

// ---------------------------------------------------------------- max pool

template <typename T>
void max_pool2d_forward(const PoolGeom& g, const T* x, T* y, int32_t* argmax) {
  const T lowest = -std::numeric_limits<T>::infinity();
  for_each_output_pixel(g, y, g.c * g.kernel * g.kernel, [&](T* out, int64_t n, int64_t oh, int64_t ow) {
    int32_t* idx = argmax + (out - y);
    const int64_t h0 = std::max<int64_t>(oh * g.stride - g.pad, 0), h1 = std::min(oh * g.stride - g.pad + g.kernel, g.h);
    const int64_t w0 = std::max<int64_t>(ow * g.stride - g.pad, 0), w1 = std::min(ow * g.stride - g.pad + g.kernel, g.w);
    if (h0 >= h1 || w0 >= w1) {  // a window wholly in the padding
      std::fill(out, out + g.c, lowest);
      std::fill(idx, idx + g.c, -1);
      return;
    }
    bool first = true;
    for (int64_t ih = h0; ih < h1; ++ih) {
      const T* xrow = x + (n * g.h + ih) * g.w * g.c;
      for (int64_t iw = w0; iw < w1; ++iw) {
        const T* xp = xrow + iw * g.c;
        const int32_t flat = static_cast<int32_t>(ih * g.w + iw);
        if (first) {  // the window's first tap seeds the maximum
          std::copy(xp, xp + g.c, out);
          std::fill(idx, idx + g.c, flat);
          first = false;
          continue;
        }
        // Selects, not branches, so the channel loop vectorises. NaN wins, as
        // in PyTorch; the first maximum is kept on ties.
#pragma omp simd
        for (int64_t c = 0; c < g.c; ++c) {
          const T v = xp[c], o = out[c];
          const bool take = v > o || (v != v && o == o);
          out[c] = take ? v : o;
          idx[c] = take ? flat : idx[c];
        }
      }
    }
  });
}

template <typename T>
void max_pool2d_backward(const PoolGeom& g, const T* gy, const int32_t* argmax, T* gx) {
  const Taps th = kernel_taps(g.h, g.oh, g.kernel, g.stride, g.pad, 1);
  const Taps tw = kernel_taps(g.w, g.ow, g.kernel, g.stride, g.pad, 1);
  for_each_input_pixel(g, gx, g.c * g.kernel * g.kernel, [&](T* dst, int64_t n, int64_t ih, int64_t iw) {
    const int32_t flat = static_cast<int32_t>(ih * g.w + iw);
    for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
      const int64_t base = (n * g.oh + th.o[a]) * g.ow;
      for (int64_t b = tw.start[iw]; b < tw.start[iw + 1]; ++b) {
        const int64_t off = (base + tw.o[b]) * g.c;
        const T* gp = gy + off;
        const int32_t* ip = argmax + off;
#pragma omp simd
        for (int64_t c = 0; c < g.c; ++c) dst[c] += ip[c] == flat ? gp[c] : T(0);
      }
    }
  });
}

// ---------------------------------------------------------------- avg pools

template <typename T>
void avg_pool2d_forward(const PoolGeom& g, bool count_include_pad, const T* x, T* y) {
  window_avg_forward(g, pool_windows(g.h, g.oh, g.kernel, g.stride, g.pad, count_include_pad),
                     pool_windows(g.w, g.ow, g.kernel, g.stride, g.pad, count_include_pad), x, y);
}

template <typename T>
void avg_pool2d_backward(const PoolGeom& g, bool count_include_pad, const T* gy, T* gx) {
  window_avg_backward(g, pool_windows(g.h, g.oh, g.kernel, g.stride, g.pad, count_include_pad),
                      pool_windows(g.w, g.ow, g.kernel, g.stride, g.pad, count_include_pad), gy, gx);
}

namespace {

// out = the sum of `count` consecutive rows of c values, first to last.
template <typename T>
void sum_rows(const T* first, int64_t count, int64_t c, T* out) {
  std::memset(out, 0, sizeof(T) * c);
  for (int64_t i = 0; i < count; ++i) {
    const T* row = first + i * c;
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) out[k] += row[k];
  }
}

}  // namespace

template <typename T>
void row_sums(const T* x, int64_t rows, int64_t width, int64_t c, T* sums) {
  parallel_for(rows, rows * width * c > kParallelWork,
               [&](int64_t r) { sum_rows(x + r * width * c, width, c, sums + r * c); });
}

template <typename T>
void mean_of_row_sums(const T* sums, int64_t n, int64_t h, int64_t width, int64_t c, T* y) {
  const T inv = T(1) / static_cast<T>(h * width);
  for (int64_t i = 0; i < n; ++i) {
    T* out = y + i * c;
    sum_rows(sums + i * h * c, h, c, out);
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) out[k] *= inv;
  }
}

template <typename T>
void adaptive_avg_pool2d_forward(const PoolGeom& g, const T* x, T* y) {
  if (g.oh == 1 && g.ow == 1) {
    std::vector<T> sums(static_cast<size_t>(g.n * g.h * g.c));
    row_sums(x, g.n * g.h, g.w, g.c, sums.data());
    mean_of_row_sums(sums.data(), g.n, g.h, g.w, g.c, y);
    return;
  }
  window_avg_forward(g, adaptive_windows(g.h, g.oh), adaptive_windows(g.w, g.ow), x, y);
}

template <typename T>
void adaptive_avg_pool2d_backward(const PoolGeom& g, const T* gy, T* gx) {
  window_avg_backward(g, adaptive_windows(g.h, g.oh), adaptive_windows(g.w, g.ow), gy, gx);
}

template <typename T>
void coord_pool_forward(const T* x, int64_t n, int64_t h, int64_t w, int64_t c, T* y) {
  parallel_for(n, n * h * w * c > kParallelWork, [&](int64_t i) {
    T* rows = y + i * (h + w) * c;  // [h, c]
    T* cols = rows + h * c;         // [w, c]: one image's, in L1 or L2 while the rows stream past
    std::memset(cols, 0, sizeof(T) * w * c);
    for (int64_t ih = 0; ih < h; ++ih) {
      T* row = rows + ih * c;
      std::memset(row, 0, sizeof(T) * c);
      const T* xr = x + (i * h + ih) * w * c;
      for (int64_t iw = 0; iw < w; ++iw) {
        const T* xp = xr + iw * c;
        T* col = cols + iw * c;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          row[k] += xp[k];
          col[k] += xp[k];
        }
      }
      const T inv_w = T(1) / static_cast<T>(w);
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) row[k] *= inv_w;
    }
    const T inv_h = T(1) / static_cast<T>(h);
#pragma omp simd
    for (int64_t k = 0; k < w * c; ++k) cols[k] *= inv_h;
  });
}

template <typename T>
void coord_pool_backward(const T* gy, int64_t n, int64_t h, int64_t w, int64_t c, T* gx) {
  const T inv_w = T(1) / static_cast<T>(w), inv_h = T(1) / static_cast<T>(h);
  parallel_for(n * h, n * h * w * c > kParallelWork, [&](int64_t r) {
    const int64_t i = r / h, ih = r % h;
    const T* g_row = gy + (i * (h + w) + ih) * c;
    const T* g_cols = gy + (i * (h + w) + h) * c;
    T* out = gx + r * w * c;
    for (int64_t iw = 0; iw < w; ++iw) {
      const T* g_col = g_cols + iw * c;
      T* o = out + iw * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) o[k] = g_row[k] * inv_w + g_col[k] * inv_h;
    }
  });
}

// ---------------------------------------------------------------- bilinear

template <typename T>
void resize_bilinear_forward(const PoolGeom& g, bool align_corners, const T* x, T* y) {
  const std::vector<Interp> vh = bilinear_interp(g.h, g.oh, align_corners);
  const std::vector<Interp> vw = bilinear_interp(g.w, g.ow, align_corners);
  for_each_output_pixel(g, y, g.c * 4, [&](T* out, int64_t n, int64_t oh, int64_t ow) {
    const Interp& a = vh[oh];
    const Interp& b = vw[ow];
    const T* r0 = x + (n * g.h + a.i0) * g.w * g.c;
    const T* r1 = x + (n * g.h + a.i1) * g.w * g.c;
    const T* p00 = r0 + b.i0 * g.c;
    const T* p01 = r0 + b.i1 * g.c;
    const T* p10 = r1 + b.i0 * g.c;
    const T* p11 = r1 + b.i1 * g.c;
    const T h0 = static_cast<T>(a.l0), h1 = static_cast<T>(a.l1);
    const T w0 = static_cast<T>(b.l0), w1 = static_cast<T>(b.l1);
#pragma omp simd
    for (int64_t c = 0; c < g.c; ++c) out[c] = h0 * (w0 * p00[c] + w1 * p01[c]) + h1 * (w0 * p10[c] + w1 * p11[c]);
  });
}

template <typename T>
void resize_bilinear_backward(const PoolGeom& g, bool align_corners, const T* gy, T* gx) {
  const Taps th = interp_taps(g.h, bilinear_interp(g.h, g.oh, align_corners));
  const Taps tw = interp_taps(g.w, bilinear_interp(g.w, g.ow, align_corners));
  const int64_t fan = std::max<int64_t>(1, (th.o.size() * tw.o.size()) / std::max<int64_t>(1, g.h * g.w));
  for_each_input_pixel(g, gx, g.c * fan, [&](T* dst, int64_t n, int64_t ih, int64_t iw) {
    for (int64_t a = th.start[ih]; a < th.start[ih + 1]; ++a) {
      const T* gyrow = gy + (n * g.oh + th.o[a]) * g.ow * g.c;
      const double wa = th.wt[a];
      for (int64_t b = tw.start[iw]; b < tw.start[iw + 1]; ++b) {
        const T scale = static_cast<T>(wa * tw.wt[b]);
        const T* gp = gyrow + tw.o[b] * g.c;
#pragma omp simd
        for (int64_t c = 0; c < g.c; ++c) dst[c] += gp[c] * scale;
      }
    }
  });
}

#define KESTREL_INSTANTIATE_POOL(T)                                                               \
  template void max_pool2d_forward<T>(const PoolGeom&, const T*, T*, int32_t*);                   \
  template void max_pool2d_backward<T>(const PoolGeom&, const T*, const int32_t*, T*);            \
  template void avg_pool2d_forward<T>(const PoolGeom&, bool, const T*, T*);                       \
  template void avg_pool2d_backward<T>(const PoolGeom&, bool, const T*, T*);                      \
  template void adaptive_avg_pool2d_forward<T>(const PoolGeom&, const T*, T*);                    \
  template void adaptive_avg_pool2d_backward<T>(const PoolGeom&, const T*, T*);                   \
  template void coord_pool_forward<T>(const T*, int64_t, int64_t, int64_t, int64_t, T*);          \
  template void coord_pool_backward<T>(const T*, int64_t, int64_t, int64_t, int64_t, T*);         \
  template void row_sums<T>(const T*, int64_t, int64_t, int64_t, T*);                              \
  template void mean_of_row_sums<T>(const T*, int64_t, int64_t, int64_t, int64_t, T*);             \
  template void resize_bilinear_forward<T>(const PoolGeom&, bool, const T*, T*);                  \
  template void resize_bilinear_backward<T>(const PoolGeom&, bool, const T*, T*);
KESTREL_INSTANTIATE_POOL(float)
KESTREL_INSTANTIATE_POOL(double)
#undef KESTREL_INSTANTIATE_POOL

}  // namespace kestrel::cpu
