#include "engine/ops/elementwise.h"

#include <cmath>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cpu/elementwise.h"
#include "engine/gpu/elementwise.h"
#include "engine/ops/check.h"
#include "engine/ops/reduce.h"
#include "engine/trace.h"

namespace kestrel {

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    KCHECK(da == db || da == 1 || db == 1, ShapeError, op, ": shapes ", shape_str(a), " and ", shape_str(b),
           " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

// The kernels of engine/cpu or engine/gpu, by the device of the first tensor.
void run_binary(cpu::BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  if constexpr (kHaveCuda) {
    if (out.device().is_cuda()) return gpu::binary(op, a, b, out);
  }
  cpu::binary(op, a, b, out);
}

void run_unary(cpu::UnaryOp op, const Tensor& x, const Tensor& out, cpu::UnaryParams p) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::unary(op, x, out, p);
  }
  cpu::unary(op, x, out, p);
}

void run_unary_backward(cpu::UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& g, const Tensor& gi,
                        cpu::UnaryParams p) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::unary_backward(op, x, y, g, gi, p);
  }
  cpu::unary_backward(op, x, y, g, gi, p);
}

Tensor binary_forward(cpu::BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  check_defined(a, name, "first operand");
  check_defined(b, name, "second operand");
  check_same_device_and_dtype(a, b, name);
  Tensor out = Tensor::empty(broadcast_shapes(a.shape(), b.shape(), name), a.dtype(), a.device());
  run_binary(op, a, b, out);
  trace_op(name, {a, b}, out);
  return out;
}

}  // namespace

Tensor add(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = autocast_binary_operands(a_in, b_in);
  Tensor out = binary_forward(cpu::BinaryOp::Add, "add", a, b);
  const Shape sa = a.shape(), sb = b.shape();
  return record(out, "add", {a, b}, [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(g, sb) : Tensor()};
  });
}

Tensor sub(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = autocast_binary_operands(a_in, b_in);
  Tensor out = binary_forward(cpu::BinaryOp::Sub, "sub", a, b);
  const Shape sa = a.shape(), sb = b.shape();
  return record(out, "sub", {a, b}, [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(neg(g), sb) : Tensor()};
  });
}

Tensor mul(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = autocast_binary_operands(a_in, b_in);
  Tensor out = binary_forward(cpu::BinaryOp::Mul, "mul", a, b);
  Tensor ad = a.detach(), bd = b.detach();
  return record(out, "mul", {a, b}, [ad, bd](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                               needs[1] ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = autocast_binary_operands(a_in, b_in);
  Tensor out = binary_forward(cpu::BinaryOp::Div, "div", a, b);
  Tensor ad = a.detach(), bd = b.detach();
  return record(out, "div", {a, b}, [ad, bd](const Tensor& g, const std::vector<bool>& needs) {
    Tensor ga, gb;
    if (needs[0]) ga = sum_to(div(g, bd), ad.shape());
    if (needs[1]) gb = sum_to(neg(div(mul(g, ad), mul(bd, bd))), bd.shape());
    return std::vector<Tensor>{ga, gb};
  });
}

namespace {

// y = f(x) elementwise; backward multiplies by f'(x) computed from x and y.
Tensor unary_op(cpu::UnaryOp op, const char* name, const Tensor& x_in, cpu::UnaryParams p = {}) {
  check_defined(x_in, name, "input");
  Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  run_unary(op, x, out, p);
  if (active_trace() != nullptr) {
    TraceAttrs attrs = {{"a", exact_str(p.a)}, {"b", exact_str(p.b)}};
    if (op == cpu::UnaryOp::FakeQuant) {
      attrs["qmin"] = exact_str(p.qmin);
      attrs["qmax"] = exact_str(p.qmax);
    }
    trace_op(name, {x}, out, 0, std::move(attrs));
  }
  if (!needs_grad({x_in})) return out;
  Tensor xd = x.detach(), yd = out.detach();
  return record(out, name, {x_in}, [op, xd, yd, p](const Tensor& g, const std::vector<bool>&) {
    Tensor gi = Tensor::empty(xd.shape(), xd.dtype(), xd.device());
    run_unary_backward(op, xd, yd, g.contiguous(), gi, p);
    return std::vector<Tensor>{gi};
  });
}

}  // namespace

Tensor add_scalar(const Tensor& a, double s) { return unary_op(cpu::UnaryOp::AddScalar, "add_scalar", a, {s, 0}); }
Tensor mul_scalar(const Tensor& a, double s) { return unary_op(cpu::UnaryOp::MulScalar, "mul_scalar", a, {s, 0}); }
Tensor neg(const Tensor& a) { return unary_op(cpu::UnaryOp::Neg, "neg", a); }
Tensor exp(const Tensor& x) { return unary_op(cpu::UnaryOp::Exp, "exp", x); }
Tensor log(const Tensor& x) { return unary_op(cpu::UnaryOp::Log, "log", x); }
Tensor sqrt(const Tensor& x) { return unary_op(cpu::UnaryOp::Sqrt, "sqrt", x); }
Tensor square(const Tensor& x) { return unary_op(cpu::UnaryOp::Square, "square", x); }
Tensor pow(const Tensor& x, double e) { return unary_op(cpu::UnaryOp::Pow, "pow", x, {e, 0}); }
Tensor abs(const Tensor& x) { return unary_op(cpu::UnaryOp::Abs, "abs", x); }
Tensor clamp(const Tensor& x, double lo, double hi) {
  KCHECK(lo <= hi, ValueError, "clamp: lower bound ", lo, " is above upper bound ", hi);
  return unary_op(cpu::UnaryOp::Clamp, "clamp", x, {lo, hi});
}
Tensor relu(const Tensor& x) { return unary_op(cpu::UnaryOp::ReLU, "relu", x); }
Tensor relu6(const Tensor& x) { return unary_op(cpu::UnaryOp::ReLU6, "relu6", x); }
Tensor sigmoid(const Tensor& x) { return unary_op(cpu::UnaryOp::Sigmoid, "sigmoid", x); }
Tensor tanh(const Tensor& x) { return unary_op(cpu::UnaryOp::Tanh, "tanh", x); }
Tensor silu(const Tensor& x) { return unary_op(cpu::UnaryOp::SiLU, "silu", x); }
Tensor hardswish(const Tensor& x) { return unary_op(cpu::UnaryOp::HardSwish, "hardswish", x); }
Tensor hardsigmoid(const Tensor& x) { return unary_op(cpu::UnaryOp::HardSigmoid, "hardsigmoid", x); }
Tensor gelu(const Tensor& x) { return unary_op(cpu::UnaryOp::GELU, "gelu", x); }
Tensor fake_quantize(const Tensor& x, double scale, int64_t zero_point, int64_t qmin, int64_t qmax) {
  KCHECK(scale > 0 && std::isfinite(scale), ValueError, "fake_quantize: scale must be positive and finite, got ", scale);
  KCHECK(qmin < qmax && zero_point >= qmin && zero_point <= qmax, ValueError, "fake_quantize: zero point ", zero_point,
         " outside the grid [", qmin, ", ", qmax, "]");
  cpu::UnaryParams p{static_cast<double>(static_cast<float>(scale)), static_cast<double>(zero_point),
                     static_cast<double>(qmin), static_cast<double>(qmax)};
  return unary_op(cpu::UnaryOp::FakeQuant, "fake_quantize", x, p);
}

Tensor activation(const Tensor& x, Activation a) {
  switch (a) {
    case Activation::None: return x;
    case Activation::ReLU: return relu(x);
    case Activation::ReLU6: return relu6(x);
    case Activation::Sigmoid: return sigmoid(x);
    case Activation::Tanh: return tanh(x);
    case Activation::SiLU: return silu(x);
    case Activation::HardSwish: return hardswish(x);
    case Activation::HardSigmoid: return hardsigmoid(x);
    case Activation::GELU: return gelu(x);
  }
  return x;
}

Activation activation_from_name(const std::string& n) {
  if (n == "none" || n == "identity" || n.empty()) return Activation::None;
  if (n == "relu") return Activation::ReLU;
  if (n == "relu6") return Activation::ReLU6;
  if (n == "sigmoid") return Activation::Sigmoid;
  if (n == "tanh") return Activation::Tanh;
  if (n == "silu" || n == "swish") return Activation::SiLU;
  if (n == "hardswish" || n == "hswish" || n == "hard_swish") return Activation::HardSwish;
  if (n == "hardsigmoid" || n == "hsigmoid" || n == "hard_sigmoid") return Activation::HardSigmoid;
  if (n == "gelu") return Activation::GELU;
  throw ValueError("unknown activation '" + n +
                   "' (valid: none, relu, relu6, sigmoid, tanh, silu, hardswish, hardsigmoid, gelu)");
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::None: return "none";
    case Activation::ReLU: return "relu";
    case Activation::ReLU6: return "relu6";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::Tanh: return "tanh";
    case Activation::SiLU: return "silu";
    case Activation::HardSwish: return "hardswish";
    case Activation::HardSigmoid: return "hardsigmoid";
    case Activation::GELU: return "gelu";
  }
  return "?";
}

void add_(Tensor& self, const Tensor& other, double alpha) {
  check_same_device_and_dtype(self, other, "add_");
  const Shape s = broadcast_shapes(self.shape(), other.shape(), "add_");
  KCHECK(s == self.shape(), ShapeError, "add_: ", shape_str(other.shape()), " does not broadcast to ",
         shape_str(self.shape()));
  if constexpr (kHaveCuda) {
    if (self.device().is_cuda()) return gpu::axpy_inplace(self, other, alpha);
  }
  cpu::axpy_inplace(self, other, alpha);
}

void mul_(Tensor& self, double s) {
  if constexpr (kHaveCuda) {
    if (self.device().is_cuda()) return gpu::scale_inplace(self, s);
  }
  cpu::scale_inplace(self, s);
}

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double b) { return add_scalar(a, b); }
Tensor operator-(const Tensor& a, double b) { return add_scalar(a, -b); }
Tensor operator*(const Tensor& a, double b) { return mul_scalar(a, b); }
Tensor operator/(const Tensor& a, double b) { return mul_scalar(a, 1.0 / b); }
Tensor operator*(double a, const Tensor& b) { return mul_scalar(b, a); }
Tensor operator-(const Tensor& a) { return neg(a); }

}  // namespace kestrel
