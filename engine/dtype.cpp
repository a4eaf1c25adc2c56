#include "engine/dtype.h"

#include "engine/error.h"

namespace kestrel {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F64: case DType::I64: return 8;
    case DType::F16: case DType::BF16: return 2;
    case DType::U8: case DType::I8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::I8: return "i8";
  }
  return "?";
}

bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64;
}

DType dtype_from_name(const std::string& n) {
  if (n == "f32" || n == "float32" || n == "float") return DType::F32;
  if (n == "f16" || n == "float16" || n == "half") return DType::F16;
  if (n == "bf16" || n == "bfloat16") return DType::BF16;
  if (n == "f64" || n == "float64" || n == "double") return DType::F64;
  if (n == "i32" || n == "int32") return DType::I32;
  if (n == "i64" || n == "int64") return DType::I64;
  if (n == "u8" || n == "uint8") return DType::U8;
  if (n == "i8" || n == "int8") return DType::I8;
  throw ValueError("unknown dtype '" + n + "' (valid: f32, f16, bf16, f64, i32, i64, u8, i8)");
}

void throw_unsupported_cpu_dtype(const char* op, DType t) {
  throw DTypeError(std::string(op) + ": dtype " + dtype_name(t) + " is not supported on the CPU (use f32 or f64)");
}

}  // namespace kestrel
