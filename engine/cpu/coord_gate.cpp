#include "engine/cpu/coord_gate.h"

#include <algorithm>
#include <vector>

#include "engine/cpu/isa.h"
#include "engine/cpu/parallel.h"

namespace kestrel::cpu {

namespace {

struct GateShape {
  int64_t n, h, w, c;
};

template <typename T>
KESTREL_INLINE void forward_row(const T* x, const T* gh, const T* gw, T* y, int64_t w, int64_t c) {
  for (int64_t j = 0; j < w; ++j)
    for (int64_t k = 0; k < c; ++k) y[j * c + k] = x[j * c + k] * gh[k] * gw[j * c + k];
}

KESTREL_CLONES_AVX512 void forward_row_f32(const float* x, const float* gh, const float* gw, float* y, int64_t w,
                                           int64_t c) {
  forward_row(x, gh, gw, y, w, c);
}
void forward_row_any(const float* x, const float* gh, const float* gw, float* y, int64_t w, int64_t c) {
  forward_row_f32(x, gh, gw, y, w, c);
}
void forward_row_any(const double* x, const double* gh, const double* gw, double* y, int64_t w, int64_t c) {
  forward_row(x, gh, gw, y, w, c);
}

// One row (n, h) of the backward over channels [k0, k1): grad_x, and the
// row's products added to the gate sums: acc_h[k - k0] over w, acc_w[j, k - k0] over h.
template <bool kGradX, bool kGradH, bool kGradW, typename T>
KESTREL_INLINE void backward_row(const T* g, const T* x, const T* gh, const T* gw, T* gx, double* acc_h,
                                 double* acc_w, int64_t w, int64_t c, int64_t k0, int64_t k1) {
  const int64_t width = k1 - k0;
  for (int64_t j = 0; j < w; ++j) {
    const int64_t row = j * c;
    double* aw = acc_w + j * width;
    for (int64_t k = k0; k < k1; ++k) {
      const T gg = g[row + k] * gw[row + k];  // the gradient of x * gate_h
      if constexpr (kGradX) gx[row + k] = gg * gh[k];
      if constexpr (kGradH) acc_h[k - k0] += static_cast<double>(gg * x[row + k]);
      if constexpr (kGradW) aw[k - k0] += static_cast<double>(g[row + k] * (x[row + k] * gh[k]));
    }
  }
}

template <bool kGradX, bool kGradH, bool kGradW>
KESTREL_CLONES_AVX512 void backward_row_f32(const float* g, const float* x, const float* gh, const float* gw,
                                            float* gx, double* acc_h, double* acc_w, int64_t w, int64_t c,
                                            int64_t k0, int64_t k1) {
  backward_row<kGradX, kGradH, kGradW>(g, x, gh, gw, gx, acc_h, acc_w, w, c, k0, k1);
}

template <bool kGradX, bool kGradH, bool kGradW>
void backward_row_any(const float* g, const float* x, const float* gh, const float* gw, float* gx, double* acc_h,
                      double* acc_w, int64_t w, int64_t c, int64_t k0, int64_t k1) {
  backward_row_f32<kGradX, kGradH, kGradW>(g, x, gh, gw, gx, acc_h, acc_w, w, c, k0, k1);
}
template <bool kGradX, bool kGradH, bool kGradW>
void backward_row_any(const double* g, const double* x, const double* gh, const double* gw, double* gx,
                      double* acc_h, double* acc_w, int64_t w, int64_t c, int64_t k0, int64_t k1) {
  backward_row<kGradX, kGradH, kGradW>(g, x, gh, gw, gx, acc_h, acc_w, w, c, k0, k1);
}

GateShape shape_of(const Tensor& x) { return {x.size(0), x.size(1), x.size(2), x.size(3)}; }

// Channel blocks per image: the tasks of the backward, each owning its gates' sums.
constexpr int64_t kChannelBlock = 64;

template <bool kGradX, bool kGradH, bool kGradW, typename T>
void backward(const GateShape& s, const T* g, const T* x, const T* gh, const T* gw, T* gx, T* ggh, T* ggw) {
  const int64_t blocks = (s.c + kChannelBlock - 1) / kChannelBlock;
  parallel_for(s.n * blocks, s.n * s.h * s.w * s.c > 32768, [&](int64_t task) {
    const int64_t n = task / blocks, k0 = task % blocks * kChannelBlock, k1 = std::min(s.c, k0 + kChannelBlock);
    const int64_t width = k1 - k0;
    std::vector<double> acc_w(kGradW ? static_cast<size_t>(s.w * width) : 0, 0.0);
    double acc_h[kChannelBlock];
    for (int64_t i = 0; i < s.h; ++i) {
      const int64_t row = (n * s.h + i) * s.w * s.c;
      const T* gate_h = gh + (n * s.h + i) * s.c;
      std::fill(acc_h, acc_h + width, 0.0);
      backward_row_any<kGradX, kGradH, kGradW>(g + row, x + row, gate_h, gw + n * s.w * s.c, kGradX ? gx + row : gx,
                                               acc_h, acc_w.data(), s.w, s.c, k0, k1);
      if constexpr (kGradH)
        for (int64_t k = k0; k < k1; ++k) ggh[(n * s.h + i) * s.c + k] = static_cast<T>(acc_h[k - k0]);
    }
    if constexpr (kGradW)
      for (int64_t j = 0; j < s.w; ++j)
        for (int64_t k = k0; k < k1; ++k) ggw[(n * s.w + j) * s.c + k] = static_cast<T>(acc_w[j * width + k - k0]);
  });
}

template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

template <typename T>
void backward_typed(const Tensor& grad_y, const Tensor& x, const Tensor& gate_h, const Tensor& gate_w,
                    const Tensor& grad_x, const Tensor& grad_gate_h, const Tensor& grad_gate_w) {
  const GateShape s = shape_of(x);
  const T* g = static_cast<const T*>(grad_y.data_ptr());
  const T* px = static_cast<const T*>(x.data_ptr());
  const T* gh = static_cast<const T*>(gate_h.data_ptr());
  const T* gw = static_cast<const T*>(gate_w.data_ptr());
  T* gx = data_or_null<T>(grad_x);
  T* ggh = data_or_null<T>(grad_gate_h);
  T* ggw = data_or_null<T>(grad_gate_w);
  const int wanted = (gx ? 4 : 0) | (ggh ? 2 : 0) | (ggw ? 1 : 0);
  switch (wanted) {
    case 7: return backward<true, true, true>(s, g, px, gh, gw, gx, ggh, ggw);
    case 6: return backward<true, true, false>(s, g, px, gh, gw, gx, ggh, ggw);
    case 5: return backward<true, false, true>(s, g, px, gh, gw, gx, ggh, ggw);
    case 4: return backward<true, false, false>(s, g, px, gh, gw, gx, ggh, ggw);
    case 3: return backward<false, true, true>(s, g, px, gh, gw, gx, ggh, ggw);
    case 2: return backward<false, true, false>(s, g, px, gh, gw, gx, ggh, ggw);
    case 1: return backward<false, false, true>(s, g, px, gh, gw, gx, ggh, ggw);
    default: return;
  }
}

template <typename T>
void forward_typed(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w, const Tensor& y) {
  const GateShape s = shape_of(x);
  const T* px = static_cast<const T*>(x.data_ptr());
  const T* gh = static_cast<const T*>(gate_h.data_ptr());
  const T* gw = static_cast<const T*>(gate_w.data_ptr());
  T* py = static_cast<T*>(y.data_ptr());
  parallel_for(s.n * s.h, s.n * s.h * s.w * s.c > 32768, [&](int64_t r) {
    const int64_t n = r / s.h;
    forward_row_any(px + r * s.w * s.c, gh + r * s.c, gw + n * s.w * s.c, py + r * s.w * s.c, s.w, s.c);
  });
}

}  // namespace

void coord_gate_forward(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w, const Tensor& y) {
  if (x.dtype() == DType::F64) return forward_typed<double>(x, gate_h, gate_w, y);
  forward_typed<float>(x, gate_h, gate_w, y);
}

void coord_gate_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gate_h, const Tensor& gate_w,
                         const Tensor& grad_x, const Tensor& grad_gate_h, const Tensor& grad_gate_w) {
  if (x.dtype() == DType::F64)
    return backward_typed<double>(grad_y, x, gate_h, gate_w, grad_x, grad_gate_h, grad_gate_w);
  backward_typed<float>(grad_y, x, gate_h, gate_w, grad_x, grad_gate_h, grad_gate_w);
}

}  // namespace kestrel::cpu
