// Elementwise arithmetic (broadcasting like NumPy) and activations.
#pragma once
#include <string>

#include "engine/tensor.h"

namespace kestrel {

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& a, double s);
Tensor mul_scalar(const Tensor& a, double s);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor abs(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);

// In place, never recorded (optimizers, gradient accumulation).
void add_(Tensor& self, const Tensor& other, double alpha = 1.0);
void mul_(Tensor& self, double s);

enum class Activation { None, ReLU, ReLU6, Sigmoid, Tanh, SiLU, HardSwish, HardSigmoid, GELU };
Activation activation_from_name(const std::string& name);  // "relu", "hswish", ...
const char* activation_name(Activation a);

Tensor activation(const Tensor& x, Activation a);
Tensor relu(const Tensor& x);
Tensor relu6(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor hardswish(const Tensor& x);
Tensor hardsigmoid(const Tensor& x);
Tensor gelu(const Tensor& x);  // exact (erf) form, as torch's default

// Rounds x to the integer grid q in [qmin, qmax] with x ~ scale * (q - zero_point)
// and back (f32, round half to even, as ONNX's QuantizeLinear then
// DequantizeLinear). scale is used as the f32 it rounds to. The gradient passes
// straight through where q is inside the grid and is zero where it clamps.
Tensor fake_quantize(const Tensor& x, double scale, int64_t zero_point, int64_t qmin, int64_t qmax);

}  // namespace kestrel
