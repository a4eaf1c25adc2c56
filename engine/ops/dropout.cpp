#include "engine/ops/dropout.h"

#include <string>

#include "engine/autograd.h"
#include "engine/cpu/elementwise.h"
#include "engine/gpu/elementwise.h"
#include "engine/ops/check.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

// out = a * b on out's device.
void multiply(const Tensor& a, const Tensor& b, const Tensor& out) {
  if constexpr (kHaveCuda) {
    if (out.device().is_cuda()) return gpu::binary(cpu::BinaryOp::Mul, a, b, out);
  }
  cpu::binary(cpu::BinaryOp::Mul, a, b, out);
}

// out = x * mask, with mask already scaled (0 or 1/(1-p)) and broadcast over x;
// the backward multiplies by the same mask.
Tensor apply_mask(const char* op, const Tensor& x, const Tensor& mask, double p) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  multiply(x.detach(), mask, out);
  trace_op(op, {x}, out, 0, {{"p", std::to_string(p)}});
  if (!needs_grad({x})) return out;
  return record(out, op, {x}, [mask](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
    multiply(g, mask, gx);
    return std::vector<Tensor>{gx};
  });
}

// Keep-mask of `shape` for x: 1/(1-p) with probability 1-p, else 0. p == 1
// drops everything. Drawn and scaled on the CPU whatever x's device (f32 for
// f16/bf16 inputs), then moved, so a CUDA run drops exactly what a CPU run
// with the same generator state drops.
Tensor keep_mask(const Shape& shape, double p, Generator& gen, const Tensor& x) {
  const DType draw_dtype = x.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor mask = Tensor::bernoulli(shape, 1.0 - p, gen, draw_dtype);
  if (p < 1.0) cpu::scale_inplace(mask, 1.0 / (1.0 - p));
  return mask.to(x.dtype()).to(x.device());
}

void check_dropout_args(const Tensor& x, double p, const char* op) {
  check_defined(x, op, "input");
  KCHECK(p >= 0.0 && p <= 1.0, ValueError, op, ": drop probability must be in [0, 1], got ", p);
  const bool half = x.dtype() == DType::F16 || x.dtype() == DType::BF16;
  KCHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64 || (half && x.device().is_cuda()), DTypeError, op,
         ": input must be f32 or f64 (or f16/bf16 on CUDA), got ", dtype_name(x.dtype()), " on ", x.device().str());
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  check_dropout_args(x, p, "dropout");
  if (!training || p == 0.0) return x;
  return apply_mask("dropout", x, keep_mask(x.shape(), p, gen, x), p);
}

Tensor drop_path(const Tensor& x, double p, bool training, Generator& gen) {
  check_dropout_args(x, p, "drop_path");
  if (!training || p == 0.0) return x;
  KCHECK(x.dim() >= 1, ShapeError, "drop_path: input must have a batch dim, got a scalar");
  // One draw per sample, broadcast over the rest: [N, 1, 1, ...].
  Shape mask_shape(x.dim(), 1);
  mask_shape[0] = x.size(0);
  return apply_mask("drop_path", x, keep_mask(mask_shape, p, gen, x), p);
}

}  // namespace kestrel
