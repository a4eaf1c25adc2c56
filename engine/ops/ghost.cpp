#include "engine/ops/ghost.h"

#include <vector>

#include "engine/autograd.h"
#include "engine/gpu/ghost.h"
#include "engine/ops/check.h"
#include "engine/ops/conv.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

constexpr int64_t kMaxCudaCheapKernel = 7;  // kernels/depthwise_conv.h's kDepthwiseMaxKernel

void check_ghost_args(const Tensor& x, const Tensor& wp, const Tensor& bp, const Tensor& wc, const Tensor& bc) {
  const char* op = "ghost_module";
  check_defined(x, op, "input");
  check_defined(wp, op, "w_primary");
  check_defined(wc, op, "w_cheap");
  check_dim(x, 4, op, "input (NHWC)");
  KCHECK(is_floating(x.dtype()), DTypeError, op, ": input must be floating point, got ", dtype_name(x.dtype()));
  KCHECK(x.numel() > 0, ShapeError, op, ": input ", shape_str(x.shape()), " is empty");
  const bool ohwi = wp.dim() == 4 && wp.size(1) == 1 && wp.size(2) == 1;
  KCHECK(ohwi || wp.dim() == 2, ShapeError, op, ": w_primary must be [C_primary,1,1,C_in] or [C_primary,C_in], got ",
         shape_str(wp.shape()));
  KCHECK(wp.size(wp.dim() - 1) == x.size(3), ShapeError, op, ": w_primary ", shape_str(wp.shape()), " expects ",
         wp.size(wp.dim() - 1), " input channels but the input ", shape_str(x.shape()), " has ", x.size(3));
  const int64_t primary = wp.size(0);
  KCHECK(wc.dim() == 4 && wc.size(1) == wc.size(2) && wc.size(1) % 2 == 1 && wc.size(3) == 1, ShapeError, op,
         ": w_cheap must be a depthwise [C_cheap,K,K,1] weight with K odd, got ", shape_str(wc.shape()));
  KCHECK(wc.size(0) >= 1 && wc.size(0) <= primary, ShapeError, op, ": w_cheap ", shape_str(wc.shape()),
         " must have between 1 and C_primary = ", primary, " channels");
  for (const Tensor* t : {&wp, &bp, &wc, &bc}) {
    if (!t->defined()) continue;
    check_same_device_and_dtype(*t, x, op);
  }
  KCHECK(!bp.defined() || (bp.dim() == 1 && bp.size(0) == primary), ShapeError, op, ": b_primary must be [",
         primary, "], got ", shape_str(bp.shape()));
  KCHECK(!bc.defined() || (bc.dim() == 1 && bc.size(0) == wc.size(0)), ShapeError, op, ": b_cheap must be [",
         wc.size(0), "], got ", shape_str(bc.shape()));
}

// The fused kernels take f32, f16 and bf16 and cheap kernels up to 7; other
// CUDA cases (f64, larger kernels) compose engine ops.
bool fused_on_cuda(const Tensor& x, const Tensor& wc) {
  const DType t = x.dtype();
  return x.device().is_cuda() && (t == DType::F32 || t == DType::F16 || t == DType::BF16) &&
         wc.size(1) <= kMaxCudaCheapKernel;
}

Tensor ghost_composed(const Tensor& x, const Tensor& wp, const Tensor& bp, const Tensor& wc, const Tensor& bc,
                      Activation act) {
  const Tensor w1 = wp.dim() == 4 ? wp : wp.reshape({wp.size(0), 1, 1, wp.size(1)});
  Tensor p = activation(conv2d(x, w1, bp, {}), act);
  const int64_t cheap = wc.size(0), pad = wc.size(1) / 2;
  Conv2dParams dw;
  dw.pad_h = dw.pad_w = pad;
  dw.groups = cheap;
  Tensor q = activation(conv2d(cheap == p.size(3) ? p : p.narrow(3, 0, cheap), wc, bc, dw), act);
  return concat({p, q}, 3);
}

Tensor detached(const Tensor& t) { return t.defined() ? t.detach().contiguous() : Tensor(); }

Tensor ghost_cuda(const Tensor& x, const Tensor& wp, const Tensor& bp, const Tensor& wc, const Tensor& bc,
                  Activation act) {
  const char* op = "ghost_module";
  const Tensor xc = x.detach().contiguous();
  const Tensor mp = wp.detach().contiguous().view({wp.size(0), wp.size(wp.dim() - 1)});
  const Tensor wcc = wc.detach().contiguous();
  const bool grad = needs_grad({x, wp, bp, wc, bc});
  gpu::GhostForward f = gpu::ghost_module_forward(xc, mp, detached(bp), wcc, detached(bc), act, grad);
  const int64_t pixels = x.numel() / x.size(3);
  const int64_t macs = pixels * (mp.numel() + wc.numel());
  trace_op(op, {x, wp, bp, wc, bc}, f.y, macs,
           {{"kernel", std::to_string(wc.size(1)) + "x" + std::to_string(wc.size(1))},
            {"act", activation_name(act)}});
  if (!grad) return f.y;
  gpu::GhostForward saved = f;
  saved.y = f.y.detach();  // not the recorded output itself: no reference cycle through its node
  const Shape wp_shape = wp.shape();
  return record(f.y, op, {x, wp, bp, wc, bc},
                [xc, mp, wcc, saved, act, wp_shape](const Tensor& g, const std::vector<bool>& needs) {
                  gpu::GhostGrads gr = gpu::ghost_module_backward(g.contiguous(), xc, mp, wcc, saved, act, needs);
                  Tensor gwp = gr.w_primary.defined() ? gr.w_primary.view(wp_shape) : gr.w_primary;
                  return std::vector<Tensor>{gr.x, gwp, gr.b_primary, gr.w_cheap, gr.b_cheap};
                });
}

}  // namespace

Tensor ghost_module(const Tensor& x, const Tensor& w_primary, const Tensor& b_primary, const Tensor& w_cheap,
                    const Tensor& b_cheap, Activation act) {
  check_ghost_args(x, w_primary, b_primary, w_cheap, b_cheap);
  if constexpr (kHaveCuda) {
    if (fused_on_cuda(x, w_cheap)) return ghost_cuda(x, w_primary, b_primary, w_cheap, b_cheap, act);
  }
  if (ghost_in_place_applies(x, w_primary, b_primary, w_cheap, b_cheap))
    return ghost_in_place(x, w_primary, b_primary, w_cheap, b_cheap, act);
  return ghost_composed(x, w_primary, b_primary, w_cheap, b_cheap, act);
}

}  // namespace kestrel
