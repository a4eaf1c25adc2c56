#include "engine/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "engine/cpu/activation_math.h"
#include "engine/cpu/parallel.h"
#include "engine/cpu/strided.h"

namespace kestrel::cpu {

namespace {

// The integer x maps to before clamping; f32 as ONNX's QuantizeLinear computes it.
inline float quant_level(float x, const UnaryParams& p) {
  return std::nearbyint(x / static_cast<float>(p.a)) + static_cast<float>(p.b);
}
inline float fake_quant(float x, const UnaryParams& p) {
  const float q = std::min(std::max(quant_level(x, p), static_cast<float>(p.qmin)), static_cast<float>(p.qmax));
  return (q - static_cast<float>(p.b)) * static_cast<float>(p.a);
}

template <typename T>
inline T forward_value(UnaryOp op, T x, const UnaryParams& p) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Pow: return std::pow(x, static_cast<T>(p.a));
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::Clamp: return std::min(std::max(x, static_cast<T>(p.a)), static_cast<T>(p.b));
    case UnaryOp::AddScalar: return x + static_cast<T>(p.a);
    case UnaryOp::MulScalar: return x * static_cast<T>(p.a);
    case UnaryOp::ReLU: return x > T(0) ? x : T(0);
    case UnaryOp::ReLU6: return std::min(std::max(x, T(0)), T(6));
    case UnaryOp::Sigmoid: return act_sigmoid(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::SiLU: return x * act_sigmoid(x);
    case UnaryOp::HardSwish: return x * std::min(std::max(x + T(3), T(0)), T(6)) / T(6);
    case UnaryOp::HardSigmoid: return std::min(std::max(x + T(3), T(0)), T(6)) / T(6);
    case UnaryOp::GELU: return T(0.5) * x * (T(1) + std::erf(x * static_cast<T>(M_SQRT1_2)));
    case UnaryOp::FakeQuant: return static_cast<T>(fake_quant(static_cast<float>(x), p));
  }
  return x;
}

template <typename T>
inline T derivative(UnaryOp op, T x, T y, const UnaryParams& p) {
  switch (op) {
    case UnaryOp::Neg: return T(-1);
    case UnaryOp::Exp: return y;
    case UnaryOp::Log: return T(1) / x;
    case UnaryOp::Sqrt: return T(0.5) / y;
    case UnaryOp::Square: return T(2) * x;
    case UnaryOp::Pow: return static_cast<T>(p.a) * std::pow(x, static_cast<T>(p.a - 1.0));
    case UnaryOp::Abs: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    case UnaryOp::Clamp: return (x >= static_cast<T>(p.a) && x <= static_cast<T>(p.b)) ? T(1) : T(0);
    case UnaryOp::AddScalar: return T(1);
    case UnaryOp::MulScalar: return static_cast<T>(p.a);
    case UnaryOp::ReLU: return x > T(0) ? T(1) : T(0);
    case UnaryOp::ReLU6: return (x > T(0) && x < T(6)) ? T(1) : T(0);
    case UnaryOp::Sigmoid: return y * (T(1) - y);
    case UnaryOp::Tanh: return T(1) - y * y;
    case UnaryOp::SiLU: {
      const T s = act_sigmoid(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::HardSwish: return x < T(-3) ? T(0) : (x <= T(3) ? x / T(3) + T(0.5) : T(1));
    case UnaryOp::HardSigmoid: return (x > T(-3) && x < T(3)) ? T(1) / T(6) : T(0);
    case UnaryOp::GELU: {
      const T cdf = T(0.5) * (T(1) + std::erf(x * static_cast<T>(M_SQRT1_2)));
      const T pdf = std::exp(T(-0.5) * x * x) * static_cast<T>(0.3989422804014327);
      return cdf + x * pdf;
    }
    case UnaryOp::FakeQuant: {  // straight through on the grid's range, zero where it clamps
      const float q = quant_level(static_cast<float>(x), p);
      return (q >= static_cast<float>(p.qmin) && q <= static_cast<float>(p.qmax)) ? T(1) : T(0);
    }
  }
  return T(1);
}

// Calls f with op as a compile-time constant, so that the switches in
// forward_value and derivative fold away and the loops vectorize.
template <typename F>
void with_unary_op(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::Neg: return f(std::integral_constant<UnaryOp, UnaryOp::Neg>{});
    case UnaryOp::Exp: return f(std::integral_constant<UnaryOp, UnaryOp::Exp>{});
    case UnaryOp::Log: return f(std::integral_constant<UnaryOp, UnaryOp::Log>{});
    case UnaryOp::Sqrt: return f(std::integral_constant<UnaryOp, UnaryOp::Sqrt>{});
    case UnaryOp::Square: return f(std::integral_constant<UnaryOp, UnaryOp::Square>{});
    case UnaryOp::Pow: return f(std::integral_constant<UnaryOp, UnaryOp::Pow>{});
    case UnaryOp::Abs: return f(std::integral_constant<UnaryOp, UnaryOp::Abs>{});
    case UnaryOp::Clamp: return f(std::integral_constant<UnaryOp, UnaryOp::Clamp>{});
    case UnaryOp::AddScalar: return f(std::integral_constant<UnaryOp, UnaryOp::AddScalar>{});
    case UnaryOp::MulScalar: return f(std::integral_constant<UnaryOp, UnaryOp::MulScalar>{});
    case UnaryOp::ReLU: return f(std::integral_constant<UnaryOp, UnaryOp::ReLU>{});
    case UnaryOp::ReLU6: return f(std::integral_constant<UnaryOp, UnaryOp::ReLU6>{});
    case UnaryOp::Sigmoid: return f(std::integral_constant<UnaryOp, UnaryOp::Sigmoid>{});
    case UnaryOp::Tanh: return f(std::integral_constant<UnaryOp, UnaryOp::Tanh>{});
    case UnaryOp::SiLU: return f(std::integral_constant<UnaryOp, UnaryOp::SiLU>{});
    case UnaryOp::HardSwish: return f(std::integral_constant<UnaryOp, UnaryOp::HardSwish>{});
    case UnaryOp::HardSigmoid: return f(std::integral_constant<UnaryOp, UnaryOp::HardSigmoid>{});
    case UnaryOp::GELU: return f(std::integral_constant<UnaryOp, UnaryOp::GELU>{});
    case UnaryOp::FakeQuant: return f(std::integral_constant<UnaryOp, UnaryOp::FakeQuant>{});
  }
}

template <typename T, typename F>
void binary_loop(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const T* pa = static_cast<const T*>(a.data_ptr());
  const T* pb = static_cast<const T*>(b.data_ptr());
  T* po = static_cast<T*>(out.data_ptr());
  const int64_t n = out.numel();
  if (a.shape() == out.shape() && b.shape() == out.shape() && a.is_contiguous() && b.is_contiguous()) {
    parallel_range(n, n > 65536, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) po[i] = f(pa[i], pb[i]);
    });
    return;
  }
  auto layout = coalesce<3>(out.shape(), {out.strides(), broadcast_strides(a, out.shape()),
                                          broadcast_strides(b, out.shape())});
  for_each_row<3>(layout, [&](const std::array<int64_t, 3>& off, int64_t len, const std::array<int64_t, 3>& st) {
    T* o = po + off[0];
    const T* x = pa + off[1];
    const T* y = pb + off[2];
    // The output aliases an operand only element for element (in-place ops), so simd is safe.
    if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) o[i] = f(x[i], y[i]);
    } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
      const T yv = y[0];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) o[i] = f(x[i], yv);
    } else if (st[0] == 1 && st[1] == 0 && st[2] == 1) {
      const T xv = x[0];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) o[i] = f(xv, y[i]);
    } else {
      for (int64_t i = 0; i < len; ++i) o[i * st[0]] = f(x[i * st[1]], y[i * st[2]]);
    }
  });
}

}  // namespace

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_float(out.dtype(), "binary op", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    using T = scalar_t;
    switch (op) {
      case BinaryOp::Add: binary_loop<T>(a, b, out, [](T x, T y) { return x + y; }); break;
      case BinaryOp::Sub: binary_loop<T>(a, b, out, [](T x, T y) { return x - y; }); break;
      case BinaryOp::Mul: binary_loop<T>(a, b, out, [](T x, T y) { return x * y; }); break;
      case BinaryOp::Div: binary_loop<T>(a, b, out, [](T x, T y) { return x / y; }); break;
    }
  });
}

namespace {

// The f32 sigmoid and SiLU as ops (attention gates, SE gates): built for
// AVX-512 and AVX2 too, where exp_f32 vectorizes wider than in the SSE baseline.
KESTREL_CLONES_AVX512 void sigmoid_range_f32(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = act_sigmoid(x[i]);
}
KESTREL_CLONES_AVX512 void silu_range_f32(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * act_sigmoid(x[i]);
}

}  // namespace

void unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p) {
  if (x.dtype() == DType::F32 && (op == UnaryOp::Sigmoid || op == UnaryOp::SiLU)) {
    const float* px = static_cast<const float*>(x.data_ptr());
    float* po = static_cast<float*>(out.data_ptr());
    const auto range = op == UnaryOp::Sigmoid ? sigmoid_range_f32 : silu_range_f32;
    parallel_range(x.numel(), x.numel() > 32768, [&](int64_t i0, int64_t i1) { range(px + i0, po + i0, i1 - i0); });
    return;
  }
  dispatch_float(x.dtype(), "unary op", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    using T = scalar_t;
    const T* px = static_cast<const T*>(x.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    const int64_t n = x.numel();
    with_unary_op(op, [&](auto op_) {
      parallel_range(n, n > 32768, [&](int64_t i0, int64_t i1) {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) po[i] = forward_value<T>(decltype(op_)::value, px[i], p);
      });
    });
  });
}

void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& grad_out, const Tensor& grad_in,
                    UnaryParams p) {
  dispatch_float(x.dtype(), "unary backward", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    using T = scalar_t;
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* py = y.defined() ? static_cast<const T*>(y.data_ptr()) : nullptr;
    const T* pg = static_cast<const T*>(grad_out.data_ptr());
    T* pi = static_cast<T*>(grad_in.data_ptr());
    const int64_t n = x.numel();
    with_unary_op(op, [&](auto op_) {
      constexpr UnaryOp kOp = decltype(op_)::value;
      parallel_range(n, n > 32768, [&](int64_t i0, int64_t i1) {
        if (py != nullptr) {
#pragma omp simd
          for (int64_t i = i0; i < i1; ++i) pi[i] = pg[i] * derivative<T>(kOp, px[i], py[i], p);
        } else {
#pragma omp simd
          for (int64_t i = i0; i < i1; ++i) pi[i] = pg[i] * derivative<T>(kOp, px[i], T(0), p);
        }
      });
    });
  });
}

void axpy_inplace(const Tensor& self, const Tensor& other, double alpha) {
  dispatch_float(self.dtype(), "add_", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    using T = scalar_t;
    const T al = static_cast<T>(alpha);
    binary_loop<T>(self, other, self, [al](T x, T y) { return x + al * y; });
  });
}

void scale_inplace(const Tensor& self, double s) {
  dispatch_float(self.dtype(), "mul_", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    using T = scalar_t;
    const T sv = static_cast<T>(s);
    binary_loop<T>(self, self, self, [sv](T x, T) { return x * sv; });
  });
}

}  // namespace kestrel::cpu
