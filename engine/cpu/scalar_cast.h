// Value conversion between any two storage types, via float or double.
#pragma once
#include <cmath>
#include <type_traits>

#include "engine/half.h"

namespace kestrel::cpu {

template <typename T>
inline double to_double(T v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>)
    return static_cast<double>(static_cast<float>(v));
  else
    return static_cast<double>(v);
}

template <typename T>
inline T from_double(double v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>)
    return T(static_cast<float>(v));
  else
    return static_cast<T>(v);
}

template <typename D, typename S>
inline D cast_value(S v) {
  if constexpr (std::is_same_v<D, S>)
    return v;
  else if constexpr (std::is_same_v<S, float> && (std::is_same_v<D, Half> || std::is_same_v<D, BFloat16>))
    return D(v);
  else if constexpr (std::is_same_v<D, float> && (std::is_same_v<S, Half> || std::is_same_v<S, BFloat16>))
    return static_cast<float>(v);
  else
    return from_double<D>(to_double(v));
}

}  // namespace kestrel::cpu
