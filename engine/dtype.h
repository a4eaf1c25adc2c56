#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/half.h"

namespace kestrel {

enum class DType : uint8_t { F32, F16, BF16, F64, I32, I64, U8, I8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
bool is_floating(DType t);
DType dtype_from_name(const std::string& name);  // "f32", "float32", ...

template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DTypeOf<Half> { static constexpr DType value = DType::F16; };
template <> struct DTypeOf<BFloat16> { static constexpr DType value = DType::BF16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::U8; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::I8; };

}  // namespace kestrel

namespace kestrel {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the C++ type of `t`, for every dtype. A function,
// not a macro, so the body may hold OpenMP pragmas.
template <typename F>
decltype(auto) dispatch_all(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: return f(TypeTag<float>{});
    case DType::F64: return f(TypeTag<double>{});
    case DType::F16: return f(TypeTag<Half>{});
    case DType::BF16: return f(TypeTag<BFloat16>{});
    case DType::I32: return f(TypeTag<int32_t>{});
    case DType::I64: return f(TypeTag<int64_t>{});
    case DType::U8: return f(TypeTag<uint8_t>{});
    case DType::I8: return f(TypeTag<int8_t>{});
  }
  return f(TypeTag<float>{});
}

[[noreturn]] void throw_unsupported_cpu_dtype(const char* op, DType t);

// CPU compute kernels are written for f32 (speed) and f64 (gradcheck).
template <typename F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  if (t == DType::F64) return f(TypeTag<double>{});
  if (t != DType::F32) throw_unsupported_cpu_dtype(op, t);
  return f(TypeTag<float>{});
}

}  // namespace kestrel

// Inside a dispatch lambda `[&](auto tag)`: the element type.
#define KESTREL_SCALAR(tag) typename decltype(tag)::type
