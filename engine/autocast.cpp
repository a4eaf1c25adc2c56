#include "engine/autocast.h"

namespace kestrel {

namespace {
thread_local DType g_autocast_dtype = DType::F32;

bool castable(const Tensor& t) { return t.defined() && t.dtype() == DType::F32 && t.device().is_cuda(); }
}  // namespace

AutocastGuard::AutocastGuard(DType dtype) : previous_(g_autocast_dtype) {
  KCHECK(dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32, ValueError,
         "autocast: dtype must be f16 or bf16 (or f32 to turn autocast off), got ", dtype_name(dtype));
  g_autocast_dtype = dtype;
}

AutocastGuard::~AutocastGuard() { g_autocast_dtype = previous_; }

DType autocast_dtype() { return g_autocast_dtype; }

bool autocast_enabled() { return g_autocast_dtype != DType::F32; }

Tensor autocast_operand(const Tensor& t) {
  if (!autocast_enabled() || !castable(t)) return t;
  return t.to(g_autocast_dtype);
}

std::pair<Tensor, Tensor> autocast_binary_operands(const Tensor& a, const Tensor& b) {
  if (!autocast_enabled() || !a.defined() || !b.defined()) return {a, b};
  const DType half = g_autocast_dtype;
  const bool a_half = a.dtype() == half && a.device().is_cuda();
  const bool b_half = b.dtype() == half && b.device().is_cuda();
  if (a_half && castable(b)) return {a, b.to(half)};
  if (b_half && castable(a)) return {a.to(half), b};
  return {a, b};
}

}  // namespace kestrel
