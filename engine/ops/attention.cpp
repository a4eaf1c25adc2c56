#include "engine/ops/attention.h"

#include <vector>

#include "engine/autograd.h"
#include "engine/cpu/coord_gate.h"
#include "engine/gpu/attention.h"
#include "engine/ops/check.h"
#include "engine/ops/conv.h"
#include "engine/ops/pool.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

// A 1x1 convolution weight given as [out,1,1,in] (OHWI) or [out,in]: checks it
// against the expected size and returns its [out, in] sizes.
void check_pointwise_weight(const Tensor& w, const Tensor& x, int64_t in, const char* op, const char* what) {
  check_defined(w, op, what);
  check_same_device(w, x, op);
  const bool ohwi = w.dim() == 4 && w.size(1) == 1 && w.size(2) == 1;
  KCHECK(ohwi || w.dim() == 2, ShapeError, op, ": ", what, " must be [out,1,1,in] (OHWI) or [out,in], got ",
         shape_str(w.shape()), " for input ", shape_str(x.shape()));
  KCHECK(w.size(w.dim() - 1) == in, ShapeError, op, ": ", what, " ", shape_str(w.shape()), " expects ",
         w.size(w.dim() - 1), " input channels, but ", in, " arrive (input ", shape_str(x.shape()), ")");
}

void check_bias(const Tensor& b, const Tensor& w, const Tensor& x, const char* op, const char* what) {
  if (!b.defined()) return;
  check_same_device(b, x, op);
  KCHECK(b.dim() == 1 && b.size(0) == w.size(0), ShapeError, op, ": ", what, " must be [", w.size(0), "], got ",
         shape_str(b.shape()));
  KCHECK(b.dtype() == w.dtype(), DTypeError, op, ": ", what, " is ", dtype_name(b.dtype()), " but its weight is ",
         dtype_name(w.dtype()));
}

// Parameters match x's dtype; on CUDA they may also be f32 (mixed precision).
void check_param_dtype(const Tensor& w, const Tensor& x, const char* op, const char* what) {
  const bool mixed_ok = x.device().is_cuda() && w.dtype() == DType::F32;
  KCHECK(w.dtype() == x.dtype() || mixed_ok, DTypeError, op, ": ", what, " is ", dtype_name(w.dtype()),
         " but the input is ", dtype_name(x.dtype()), " ", shape_str(x.shape()),
         (x.device().is_cuda() ? " (CUDA also takes f32 parameters)" : ""));
}

void check_input(const Tensor& x, const char* op) {
  check_defined(x, op, "input");
  check_dim(x, 4, op, "input (NHWC)");
  KCHECK(is_floating(x.dtype()), DTypeError, op, ": input must be floating point, got ", dtype_name(x.dtype()));
  KCHECK(x.numel() > 0, ShapeError, op, ": input ", shape_str(x.shape()), " is empty");
}

// The fused kernels take f32, f16 and bf16; other CUDA dtypes (f64) compose engine ops.
bool fused_on_cuda(const Tensor& x) {
  return x.device().is_cuda() && (x.dtype() == DType::F32 || x.dtype() == DType::F16 || x.dtype() == DType::BF16);
}

Tensor as_ohwi(const Tensor& w) { return w.dim() == 4 ? w : w.reshape({w.size(0), 1, 1, w.size(1)}); }

// Detached, contiguous [out, in] view of a pointwise weight for the kernels.
Tensor as_matrix(const Tensor& w) { return w.detach().contiguous().view({w.size(0), w.size(w.dim() - 1)}); }

Tensor detached(const Tensor& t) { return t.defined() ? t.detach().contiguous() : Tensor(); }

// A weight gradient computed as [out, in], in the weight's own shape.
Tensor in_shape(const Tensor& g, const Shape& s) { return g.defined() ? g.view(s) : g; }

Tensor pointwise(const Tensor& x, const Tensor& w, const Tensor& b) { return conv2d(x, as_ohwi(w), b, {}); }

}  // namespace

Tensor squeeze_excite_gate(const Tensor& pooled, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                           const Tensor& b2, Activation act, Activation gate) {
  const Tensor s = activation(pointwise(pooled, w1, b1), act);
  return activation(pointwise(s, w2, b2), gate);
}

namespace {

Tensor squeeze_excite_composed(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                               const Tensor& b2, Activation act, Activation gate) {
  return mul(x, squeeze_excite_gate(global_avg_pool(x), w1, b1, w2, b2, act, gate));
}

Tensor coord_attention_composed(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& wh,
                                const Tensor& bh, const Tensor& ww, const Tensor& bw, Activation act) {
  const int64_t h = x.size(1), w = x.size(2);
  Tensor t = activation(pointwise(coord_pool(x), w1, b1), act);  // pooled [N,H+W,1,C]
  std::vector<Tensor> parts = split(t, {h, w}, 1);
  Tensor gate_h = sigmoid(pointwise(parts[0], wh, bh));                                       // [N,H,1,C]
  Tensor gate_w = sigmoid(pointwise(parts[1].permute({0, 2, 1, 3}).contiguous(), ww, bw));  // [N,1,W,C]
  return coord_gate(x, gate_h, gate_w);
}

Tensor squeeze_excite_cuda(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                           Activation act, Activation gate) {
  const char* op = "squeeze_excite";
  const Tensor xc = x.detach().contiguous();
  const Tensor m1 = as_matrix(w1), m2 = as_matrix(w2);
  const Tensor c2 = detached(b2);
  gpu::FusedAttentionForward f = gpu::squeeze_excite_forward(xc, m1, detached(b1), m2, c2, act, gate);
  const int64_t macs = 2 * x.numel() + 2 * x.size(0) * m1.numel();
  trace_op(op, {x, w1, b1, w2, b2}, f.y, macs, {{"act", activation_name(act)}, {"gate", activation_name(gate)}});
  if (!needs_grad({x, w1, b1, w2, b2})) return f.y;
  const Tensor saved = f.saved;
  const Shape s1 = w1.shape(), s2 = w2.shape();
  return record(f.y, op, {x, w1, b1, w2, b2},
                [xc, m1, m2, c2, saved, act, gate, s1, s2](const Tensor& g, const std::vector<bool>& needs) {
                  gpu::SqueezeExciteGrads gr =
                      gpu::squeeze_excite_backward(g.contiguous(), xc, m1, m2, c2, saved, act, gate, needs);
                  return std::vector<Tensor>{gr.x, in_shape(gr.w1, s1), gr.b1, in_shape(gr.w2, s2), gr.b2};
                });
}

Tensor coord_attention_cuda(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& wh, const Tensor& bh,
                            const Tensor& ww, const Tensor& bw, Activation act) {
  const char* op = "coord_attention";
  const Tensor xc = x.detach().contiguous();
  const Tensor m1 = as_matrix(w1), mh = as_matrix(wh), mw = as_matrix(ww);
  gpu::FusedAttentionForward f =
      gpu::coord_attention_forward(xc, m1, detached(b1), mh, detached(bh), mw, detached(bw), act);
  const int64_t positions = x.size(0) * (x.size(1) + x.size(2));
  const int64_t macs = 3 * x.numel() + positions * (m1.numel() + mh.numel());
  trace_op(op, {x, w1, b1, wh, bh, ww, bw}, f.y, macs, {{"act", activation_name(act)}});
  if (!needs_grad({x, w1, b1, wh, bh, ww, bw})) return f.y;
  const Tensor saved = f.saved;
  const Shape s1 = w1.shape(), sh = wh.shape(), sw = ww.shape();
  return record(f.y, op, {x, w1, b1, wh, bh, ww, bw},
                [xc, m1, mh, mw, saved, act, s1, sh, sw](const Tensor& g, const std::vector<bool>& needs) {
                  gpu::CoordAttentionGrads gr =
                      gpu::coord_attention_backward(g.contiguous(), xc, m1, mh, mw, saved, act, needs);
                  return std::vector<Tensor>{gr.x,  in_shape(gr.w1, s1), gr.b1, in_shape(gr.wh, sh),
                                             gr.bh, in_shape(gr.ww, sw), gr.bw};
                });
}

// The fused gates take the gates on x's device and in x's dtype.
bool gates_like_input(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w) {
  for (const Tensor* t : {&gate_h, &gate_w})
    if (t->device() != x.device() || t->dtype() != x.dtype()) return false;
  return true;
}

Tensor coord_gate_cpu(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w) {
  const char* op = "coord_gate";
  const Tensor xc = x.detach().contiguous(), hc = gate_h.detach().contiguous(), wc = gate_w.detach().contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cpu::coord_gate_forward(xc, hc, wc, y);
  trace_op(op, {x, gate_h, gate_w}, y);
  return record(y, op, {x, gate_h, gate_w}, [xc, hc, wc](const Tensor& g, const std::vector<bool>& needs) {
    const Tensor inputs[3] = {xc, hc, wc};
    std::vector<Tensor> grads(3);
    for (size_t i = 0; i < 3; ++i)
      if (needs[i]) grads[i] = Tensor::empty(inputs[i].shape(), xc.dtype(), xc.device());
    cpu::coord_gate_backward(g.contiguous(), xc, hc, wc, grads[0], grads[1], grads[2]);
    return grads;
  });
}

// The kernels take both gates as one f32 [N, H+W, C] tensor (small beside x).
Tensor coord_gate_cuda(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w) {
  const char* op = "coord_gate";
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  const Tensor xc = x.detach().contiguous();
  const Tensor gates =
      concat({gate_h.detach().reshape({n, h, c}), gate_w.detach().reshape({n, w, c})}, 1).to(DType::F32).contiguous();
  Tensor y = gpu::coord_gate_forward(xc, gates);
  trace_op(op, {x, gate_h, gate_w}, y);
  const DType dt = x.dtype();
  return record(y, op, {x, gate_h, gate_w}, [xc, gates, n, h, w, c, dt](const Tensor& g, const std::vector<bool>& needs) {
    gpu::CoordGateGrads gr = gpu::coord_gate_backward(g.contiguous(), xc, gates, needs[0], needs[1] || needs[2]);
    Tensor gh, gw;
    if (needs[1]) gh = gr.gates.narrow(1, 0, h).reshape({n, h, 1, c}).to(dt);
    if (needs[2]) gw = gr.gates.narrow(1, h, w).reshape({n, 1, w, c}).to(dt);
    return std::vector<Tensor>{gr.x, gh, gw};
  });
}

}  // namespace

Tensor coord_gate(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w) {
  const char* op = "coord_gate";
  check_input(x, op);
  check_defined(gate_h, op, "gate_h");
  check_defined(gate_w, op, "gate_w");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  KCHECK(gate_h.shape() == Shape({n, h, 1, c}) && gate_w.shape() == Shape({n, 1, w, c}), ShapeError, op,
         ": gates must be [N,H,1,C] and [N,1,W,C] for input ", shape_str(x.shape()), ", got ",
         shape_str(gate_h.shape()), " and ", shape_str(gate_w.shape()));
  if (gates_like_input(x, gate_h, gate_w)) {
    if (x.device().is_cpu() && (x.dtype() == DType::F32 || x.dtype() == DType::F64))
      return coord_gate_cpu(x, gate_h, gate_w);
    if constexpr (kHaveCuda) {
      if (fused_on_cuda(x)) return coord_gate_cuda(x, gate_h, gate_w);
    }
  }
  return mul(mul(x, gate_h), gate_w);
}

Tensor squeeze_excite(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                      Activation act, Activation gate) {
  const char* op = "squeeze_excite";
  check_input(x, op);
  const int64_t C = x.size(3);
  check_pointwise_weight(w1, x, C, op, "w1");
  check_pointwise_weight(w2, x, w1.size(0), op, "w2");
  KCHECK(w2.size(0) == C, ShapeError, op, ": w2 ", shape_str(w2.shape()), " must give back the input's ", C,
         " channels (input ", shape_str(x.shape()), ")");
  check_param_dtype(w1, x, op, "w1");
  KCHECK(w2.dtype() == w1.dtype(), DTypeError, op, ": w1 is ", dtype_name(w1.dtype()), " but w2 is ",
         dtype_name(w2.dtype()));
  check_bias(b1, w1, x, op, "b1");
  check_bias(b2, w2, x, op, "b2");
  if constexpr (kHaveCuda) {
    if (fused_on_cuda(x) && gpu::fused_attention_fits(C, w1.size(0)))
      return squeeze_excite_cuda(x, w1, b1, w2, b2, act, gate);
  }
  return squeeze_excite_composed(x, w1, b1, w2, b2, act, gate);
}

Tensor coord_attention(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& wh, const Tensor& bh,
                       const Tensor& ww, const Tensor& bw, Activation act) {
  const char* op = "coord_attention";
  check_input(x, op);
  const int64_t C = x.size(3);
  check_pointwise_weight(w1, x, C, op, "w1");
  check_pointwise_weight(wh, x, w1.size(0), op, "wh");
  check_pointwise_weight(ww, x, w1.size(0), op, "ww");
  for (const Tensor* w : {&wh, &ww})
    KCHECK(w->size(0) == C, ShapeError, op, ": gate weight ", shape_str(w->shape()), " must give back the input's ",
           C, " channels (input ", shape_str(x.shape()), ")");
  check_param_dtype(w1, x, op, "w1");
  KCHECK(wh.dtype() == w1.dtype() && ww.dtype() == w1.dtype(), DTypeError, op,
         ": w1, wh and ww must share a dtype, got ", dtype_name(w1.dtype()), ", ", dtype_name(wh.dtype()), ", ",
         dtype_name(ww.dtype()));
  check_bias(b1, w1, x, op, "b1");
  check_bias(bh, wh, x, op, "bh");
  check_bias(bw, ww, x, op, "bw");
  if constexpr (kHaveCuda) {
    if (fused_on_cuda(x) && gpu::fused_attention_fits(C, w1.size(0)))
      return coord_attention_cuda(x, w1, b1, wh, bh, ww, bw, act);
  }
  return coord_attention_composed(x, w1, b1, wh, bh, ww, bw, act);
}

}  // namespace kestrel
