// Scalar activation values and derivatives for fused CPU kernels (batch norm +
// activation today). The activation is a template parameter so the switch folds
// away and the channel loop vectorizes; act_dispatch() picks the instance.
// Derivatives at kinks follow PyTorch: relu'(0) = 0, relu6' is 1 on (0, 6) only,
// hardswish' is x/3 + 1/2 on [-3, 3], hardsigmoid' is 1/6 on (-3, 3).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "engine/cpu/isa.h"
#include "engine/ops/elementwise.h"

namespace kestrel::cpu {

template <Activation A>
using ActTag = std::integral_constant<Activation, A>;

// Always inlined, with an always-inline f, inside ISA clones (cpu/isa.h).
template <typename F>
KESTREL_INLINE decltype(auto) act_dispatch(Activation a, F&& f) {
  switch (a) {
    case Activation::None: return f(ActTag<Activation::None>{});
    case Activation::ReLU: return f(ActTag<Activation::ReLU>{});
    case Activation::ReLU6: return f(ActTag<Activation::ReLU6>{});
    case Activation::Sigmoid: return f(ActTag<Activation::Sigmoid>{});
    case Activation::Tanh: return f(ActTag<Activation::Tanh>{});
    case Activation::SiLU: return f(ActTag<Activation::SiLU>{});
    case Activation::HardSwish: return f(ActTag<Activation::HardSwish>{});
    case Activation::HardSigmoid: return f(ActTag<Activation::HardSigmoid>{});
    case Activation::GELU: return f(ActTag<Activation::GELU>{});
  }
  return f(ActTag<Activation::None>{});
}

// e^x for f32 in plain arithmetic, so loops that call it vectorize (a libm
// expf call per element was 40% of EfficientNet-B0's CPU inference). x is
// clamped to [-86, 80], where e^x and the sigmoid built on it stay normal
// floats (a subnormal operand can cost a microcode assist). Callers are
// sigmoid and SiLU, whose float values do not change past that range by
// more than 2e-35. Range reduction x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two
// parts, Cody and Waite), then a degree-7 polynomial for e^r and 2^n from
// the exponent bits. Within 1 ulp of e^x for every float in [-86, 80]
// (checked exhaustively once; the test samples).
KESTREL_INLINE float exp_f32(float x) {
  x = x < -86.0f ? -86.0f : (x > 80.0f ? 80.0f : x);  // on values: std::min/max's references block vectorizing
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  // e^r = 1 + r + r^2 q(r), q the minimax fit of Cephes' expf.
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float p = q * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
KESTREL_INLINE T act_sigmoid(T z) {
  if constexpr (std::is_same_v<T, float>) return 1.0f / (1.0f + exp_f32(-z));
  return T(1) / (T(1) + std::exp(-z));
}

template <Activation A, typename T>
KESTREL_INLINE T act_value(T z) {
  if constexpr (A == Activation::None) return z;
  if constexpr (A == Activation::ReLU) return z > T(0) ? z : T(0);
  if constexpr (A == Activation::ReLU6) return std::min(std::max(z, T(0)), T(6));
  if constexpr (A == Activation::Sigmoid) return act_sigmoid(z);
  if constexpr (A == Activation::Tanh) return std::tanh(z);
  if constexpr (A == Activation::SiLU) return z * act_sigmoid(z);
  if constexpr (A == Activation::HardSwish) return z * std::min(std::max(z + T(3), T(0)), T(6)) / T(6);
  if constexpr (A == Activation::HardSigmoid) return std::min(std::max(z + T(3), T(0)), T(6)) / T(6);
  if constexpr (A == Activation::GELU) return T(0.5) * z * (T(1) + std::erf(z * static_cast<T>(M_SQRT1_2)));
  return z;
}

// row[c] = act(row[c] + bias[c]) in place, for c in [0, C); bias may be null.
template <typename T, Activation A>
KESTREL_INLINE void bias_act_row(T* row, int64_t C, const T* bias) {
  if (bias != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] = act_value<A, T>(row[c] + bias[c]);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] = act_value<A, T>(row[c]);
  }
}

// d act(z) / dz
template <Activation A, typename T>
KESTREL_INLINE T act_derivative(T z) {
  if constexpr (A == Activation::None) return T(1);
  if constexpr (A == Activation::ReLU) return z > T(0) ? T(1) : T(0);
  if constexpr (A == Activation::ReLU6) return (z > T(0) && z < T(6)) ? T(1) : T(0);
  if constexpr (A == Activation::Sigmoid) {
    const T s = act_sigmoid(z);
    return s * (T(1) - s);
  }
  if constexpr (A == Activation::Tanh) {
    const T t = std::tanh(z);
    return T(1) - t * t;
  }
  if constexpr (A == Activation::SiLU) {
    const T s = act_sigmoid(z);
    return s * (T(1) + z * (T(1) - s));
  }
  if constexpr (A == Activation::HardSwish) return z < T(-3) ? T(0) : (z <= T(3) ? z / T(3) + T(0.5) : T(1));
  if constexpr (A == Activation::HardSigmoid) return (z > T(-3) && z < T(3)) ? T(1) / T(6) : T(0);
  if constexpr (A == Activation::GELU) {
    const T cdf = T(0.5) * (T(1) + std::erf(z * static_cast<T>(M_SQRT1_2)));
    const T pdf = std::exp(T(-0.5) * z * z) * static_cast<T>(0.3989422804014327);
    return cdf + z * pdf;
  }
  return T(1);
}

}  // namespace kestrel::cpu
