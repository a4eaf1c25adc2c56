#include "engine/ops/dropout.h"

#include <string>

#include "engine/autograd.h"
#include "engine/cpu/elementwise.h"
#include "engine/ops/check.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

// out = x * mask, with mask already scaled (0 or 1/(1-p)) and broadcast over x;
// the backward multiplies by the same mask.
Tensor apply_mask(const char* op, const Tensor& x, const Tensor& mask, double p) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  cpu::binary(cpu::BinaryOp::Mul, x.detach(), mask, out);
  trace_op(op, {x}, out, 0, {{"p", std::to_string(p)}});
  if (!needs_grad({x})) return out;
  return record(out, op, {x}, [mask](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
    cpu::binary(cpu::BinaryOp::Mul, g, mask, gx);
    return std::vector<Tensor>{gx};
  });
}

// Keep-mask of `shape`: 1/(1-p) with probability 1-p, else 0. p == 1 drops everything.
Tensor keep_mask(const Shape& shape, double p, Generator& gen, DType dtype) {
  Tensor mask = Tensor::bernoulli(shape, 1.0 - p, gen, dtype);
  if (p < 1.0) cpu::scale_inplace(mask, 1.0 / (1.0 - p));
  return mask;
}

void check_dropout_args(const Tensor& x, double p, const char* op) {
  check_defined(x, op, "input");
  check_cpu(x, op);
  KCHECK(p >= 0.0 && p <= 1.0, ValueError, op, ": drop probability must be in [0, 1], got ", p);
  KCHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64, DTypeError, op, ": input must be f32 or f64, got ",
         dtype_name(x.dtype()));
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  check_dropout_args(x, p, "dropout");
  if (!training || p == 0.0) return x;
  return apply_mask("dropout", x, keep_mask(x.shape(), p, gen, x.dtype()), p);
}

Tensor drop_path(const Tensor& x, double p, bool training, Generator& gen) {
  check_dropout_args(x, p, "drop_path");
  if (!training || p == 0.0) return x;
  KCHECK(x.dim() >= 1, ShapeError, "drop_path: input must have a batch dim, got a scalar");
  // One draw per sample, broadcast over the rest: [N, 1, 1, ...].
  Shape mask_shape(x.dim(), 1);
  mask_shape[0] = x.size(0);
  return apply_mask("drop_path", x, keep_mask(mask_shape, p, gen, x.dtype()), p);
}

}  // namespace kestrel
