// CUDA elementwise kernels: the same operations and contracts as
// engine/cpu/elementwise.h, for f32, f64, f16 and bf16 (f16/bf16 computed in
// f32). Formulas follow the CPU kernels term for term, with products that
// feed an add kept unfused, so f32 results differ from the CPU only where
// the CUDA libm functions (exp, log, tanh, erf, pow) differ by an ulp or two.
#pragma once
#include "engine/cpu/elementwise.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

using cpu::BinaryOp;
using cpu::UnaryOp;
using cpu::UnaryParams;

// out (contiguous, the broadcast shape of a and b) = a op b; a and b any strides.
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
// x contiguous -> out contiguous.
void unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p = {});
// grad_in = grad_out * f'(x), given x and y = f(x) (all contiguous; y may be undefined).
void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& grad_out, const Tensor& grad_in,
                    UnaryParams p = {});
// self += alpha * other (other broadcast to self), in place; self any strides.
void axpy_inplace(const Tensor& self, const Tensor& other, double alpha);
void scale_inplace(const Tensor& self, double s);

}  // namespace kestrel::gpu
