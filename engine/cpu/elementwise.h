// CPU kernels for elementwise ops. Outputs are contiguous.
#pragma once
#include "engine/tensor.h"

namespace kestrel::cpu {

enum class BinaryOp { Add, Sub, Mul, Div };
// out has the broadcast shape of a and b.
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);

enum class UnaryOp {
  Neg, Exp, Log, Sqrt, Square, Pow, Abs, Clamp, AddScalar, MulScalar,
  ReLU, ReLU6, Sigmoid, Tanh, SiLU, HardSwish, HardSigmoid, GELU, FakeQuant
};
struct UnaryParams {
  double a = 0.0, b = 0.0;  // Pow: a = exponent; Clamp: [a, b]; scalars: a
  // FakeQuant: scale a, zero point b, integer grid [qmin, qmax]:
  // y = (clamp(round_half_even(x / a) + b, qmin, qmax) - b) * a in f32.
  double qmin = 0.0, qmax = 0.0;
};
// x contiguous -> out contiguous.
void unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p = {});
// grad_in = grad_out * f'(x), given x and y = f(x).
void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& grad_out, const Tensor& grad_in,
                    UnaryParams p = {});

// self += alpha * other (other broadcast to self), in place.
void axpy_inplace(const Tensor& self, const Tensor& other, double alpha);
void scale_inplace(const Tensor& self, double s);

}  // namespace kestrel::cpu
