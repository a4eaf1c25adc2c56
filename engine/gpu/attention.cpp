#include "engine/gpu/attention.h"

#include <climits>

#include "engine/cuda/runtime.h"
#include "kernels/coord_attention.h"
#include "kernels/squeeze_excite.h"

namespace kestrel::gpu {

namespace {

using kernels::KAct;
using kernels::KDType;

KDType kernel_dtype(DType t, const char* op, const Tensor& x) {
  switch (t) {
    case DType::F32: return KDType::F32;
    case DType::F16: return KDType::F16;
    case DType::BF16: return KDType::BF16;
    default: break;
  }
  throw DTypeError(detail::concat(op, ": the fused CUDA kernel supports f32, f16 and bf16, got ", dtype_name(t),
                                  " (input ", shape_str(x.shape()), ")"));
}

KAct kernel_act(Activation a) { return static_cast<KAct>(static_cast<int>(a)); }

int as_int(int64_t v, const char* op, const Tensor& x) {
  KCHECK(v <= INT_MAX, ShapeError, op, ": input ", shape_str(x.shape()), " is too large for the fused kernel");
  return static_cast<int>(v);
}

const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// f32 device scratch of at least `bytes` bytes.
Tensor scratch(size_t bytes, Device d) {
  const int64_t floats = static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float));
  return Tensor::empty({floats > 0 ? floats : 1}, DType::F32, d);
}

Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }

// A parameter gradient in the parameter's dtype, or undefined when not needed.
Tensor grad_for(const Tensor& param, bool needed, Shape shape) {
  if (!needed) return Tensor();
  return Tensor::empty(shape, param.dtype(), param.device());
}

void* ptr_or_null_mut(Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

kernels::SqueezeExciteShape se_shape(const Tensor& x, const Tensor& w1, const char* op) {
  kernels::SqueezeExciteShape s;
  s.N = as_int(x.size(0), op, x);
  s.HW = as_int(x.size(1) * x.size(2), op, x);
  s.C = as_int(x.size(3), op, x);
  s.Cr = as_int(w1.size(0), op, x);
  return s;
}

// x's sizes; mip keeps its default (the gate alone has no transform).
kernels::CoordAttentionShape gate_shape(const Tensor& x, const char* op) {
  kernels::CoordAttentionShape s;
  s.N = as_int(x.size(0), op, x);
  s.H = as_int(x.size(1), op, x);
  s.W = as_int(x.size(2), op, x);
  s.C = as_int(x.size(3), op, x);
  return s;
}

kernels::CoordAttentionShape ca_shape(const Tensor& x, const Tensor& w1, const char* op) {
  kernels::CoordAttentionShape s = gate_shape(x, op);
  s.mip = as_int(w1.size(0), op, x);
  return s;
}

}  // namespace

FusedAttentionForward squeeze_excite_forward(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                             const Tensor& b2, Activation act, Activation gate) {
  const char* op = "squeeze_excite";
  const KDType dt = kernel_dtype(x.dtype(), op, x);
  const KDType pdt = kernel_dtype(w1.dtype(), op, x);
  const kernels::SqueezeExciteShape s = se_shape(x, w1, op);
  cuda::DeviceGuard guard(x.device().index);
  FusedAttentionForward out{empty_like(x), scratch(kernels::squeeze_excite_workspace_bytes(s), x.device())};
  KESTREL_CUDA_CHECK_CTX(kernels::squeeze_excite_forward(dt, pdt, s, kernel_act(act), kernel_act(gate), x.data_ptr(),
                                                         w1.data_ptr(), ptr_or_null(b1), w2.data_ptr(),
                                                         ptr_or_null(b2), out.y.data_ptr(), out.saved.data_ptr(),
                                                         cuda::current_stream(x.device().index)),
                         op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()), ", w1 ",
                         shape_str(w1.shape()), " ", dtype_name(w1.dtype()));
  return out;
}

SqueezeExciteGrads squeeze_excite_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w1,
                                           const Tensor& w2, const Tensor& b2, const Tensor& saved, Activation act,
                                           Activation gate, const std::vector<bool>& need) {
  const char* op = "squeeze_excite backward";
  const KDType dt = kernel_dtype(x.dtype(), op, x);
  const KDType pdt = kernel_dtype(w1.dtype(), op, x);
  const kernels::SqueezeExciteShape s = se_shape(x, w1, op);
  cuda::DeviceGuard guard(x.device().index);
  SqueezeExciteGrads g;
  g.x = empty_like(x);  // the kernel always writes dx
  g.w1 = grad_for(w1, need[1], w1.shape());
  g.b1 = grad_for(w1, need[2], {w1.size(0)});
  g.w2 = grad_for(w2, need[3], w2.shape());
  g.b2 = grad_for(w2, need[4], {w2.size(0)});
  const Tensor ws = scratch(kernels::squeeze_excite_backward_workspace_bytes(s), x.device());
  KESTREL_CUDA_CHECK_CTX(
      kernels::squeeze_excite_backward(dt, pdt, s, kernel_act(act), kernel_act(gate), grad_y.data_ptr(),
                                       x.data_ptr(), w1.data_ptr(), w2.data_ptr(), ptr_or_null(b2),
                                       saved.data_ptr(), g.x.data_ptr(), ptr_or_null_mut(g.w1),
                                       ptr_or_null_mut(g.b1), ptr_or_null_mut(g.w2), ptr_or_null_mut(g.b2),
                                       ws.data_ptr(), cuda::current_stream(x.device().index)),
      op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()), ", w1 ", shape_str(w1.shape()), " ",
      dtype_name(w1.dtype()));
  if (!need[0]) g.x = Tensor();
  return g;
}

FusedAttentionForward coord_attention_forward(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& wh,
                                              const Tensor& bh, const Tensor& ww, const Tensor& bw, Activation act) {
  const char* op = "coord_attention";
  const KDType dt = kernel_dtype(x.dtype(), op, x);
  const KDType pdt = kernel_dtype(w1.dtype(), op, x);
  const kernels::CoordAttentionShape s = ca_shape(x, w1, op);
  cuda::DeviceGuard guard(x.device().index);
  FusedAttentionForward out{empty_like(x), scratch(kernels::coord_attention_workspace_bytes(s), x.device())};
  KESTREL_CUDA_CHECK_CTX(
      kernels::coord_attention_forward(dt, pdt, s, kernel_act(act), x.data_ptr(), w1.data_ptr(), ptr_or_null(b1),
                                       wh.data_ptr(), ptr_or_null(bh), ww.data_ptr(), ptr_or_null(bw),
                                       out.y.data_ptr(), out.saved.data_ptr(),
                                       cuda::current_stream(x.device().index)),
      op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()), ", w1 ", shape_str(w1.shape()), " ",
      dtype_name(w1.dtype()));
  return out;
}

CoordAttentionGrads coord_attention_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w1,
                                             const Tensor& wh, const Tensor& ww, const Tensor& saved, Activation act,
                                             const std::vector<bool>& need) {
  const char* op = "coord_attention backward";
  const KDType dt = kernel_dtype(x.dtype(), op, x);
  const KDType pdt = kernel_dtype(w1.dtype(), op, x);
  const kernels::CoordAttentionShape s = ca_shape(x, w1, op);
  cuda::DeviceGuard guard(x.device().index);
  CoordAttentionGrads g;
  g.x = empty_like(x);  // the kernel always writes dx
  g.w1 = grad_for(w1, need[1], w1.shape());
  g.b1 = grad_for(w1, need[2], {w1.size(0)});
  g.wh = grad_for(wh, need[3], wh.shape());
  g.bh = grad_for(wh, need[4], {wh.size(0)});
  g.ww = grad_for(ww, need[5], ww.shape());
  g.bw = grad_for(ww, need[6], {ww.size(0)});
  const Tensor ws = scratch(kernels::coord_attention_backward_workspace_bytes(s), x.device());
  KESTREL_CUDA_CHECK_CTX(
      kernels::coord_attention_backward(dt, pdt, s, kernel_act(act), grad_y.data_ptr(), x.data_ptr(), w1.data_ptr(),
                                        wh.data_ptr(), ww.data_ptr(), saved.data_ptr(), g.x.data_ptr(),
                                        ptr_or_null_mut(g.w1), ptr_or_null_mut(g.b1), ptr_or_null_mut(g.wh),
                                        ptr_or_null_mut(g.bh), ptr_or_null_mut(g.ww), ptr_or_null_mut(g.bw),
                                        ws.data_ptr(), cuda::current_stream(x.device().index)),
      op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()), ", w1 ", shape_str(w1.shape()), " ",
      dtype_name(w1.dtype()));
  if (!need[0]) g.x = Tensor();
  return g;
}

Tensor coord_gate_forward(const Tensor& x, const Tensor& gates) {
  const char* op = "coord_gate";
  const KDType dt = kernel_dtype(x.dtype(), op, x);
  const kernels::CoordAttentionShape s = gate_shape(x, op);
  cuda::DeviceGuard guard(x.device().index);
  Tensor y = empty_like(x);
  KESTREL_CUDA_CHECK_CTX(kernels::coord_gate_forward(dt, s, x.data_ptr(), gates.data<float>(), y.data_ptr(),
                                                     cuda::current_stream(x.device().index)),
                         op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
  return y;
}

CoordGateGrads coord_gate_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gates, bool need_x,
                                   bool need_gates) {
  const char* op = "coord_gate backward";
  const KDType dt = kernel_dtype(x.dtype(), op, x);
  const kernels::CoordAttentionShape s = gate_shape(x, op);
  cuda::DeviceGuard guard(x.device().index);
  CoordGateGrads g;
  if (need_x) g.x = empty_like(x);
  if (need_gates) g.gates = Tensor::empty(gates.shape(), DType::F32, x.device());
  KESTREL_CUDA_CHECK_CTX(
      kernels::coord_gate_backward(dt, s, grad_y.data_ptr(), x.data_ptr(), gates.data<float>(),
                                   need_x ? g.x.data_ptr() : nullptr, need_gates ? g.gates.data<float>() : nullptr,
                                   cuda::current_stream(x.device().index)),
      op, " input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
  return g;
}

}  // namespace kestrel::gpu
