#include "engine/ops/ghost_norms.h"

#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu/depthwise.h"
#include "engine/gpu/conv.h"
#include "engine/gpu/norm.h"
#include "engine/ops/check.h"
#include "engine/ops/cpu_norm.h"
#include "engine/ops/elementwise.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

// A norm's tensors: [C], on z's device, in z's dtype on the CPU and f32 on
// CUDA (its norm kernels take f32 parameters, also under mixed precision).
bool fits_norm(const GhostNorm& n, const Tensor& z, int64_t C) {
  const DType want = z.device().is_cuda() ? DType::F32 : z.dtype();
  for (const Tensor* t : {&n.weight, &n.bias, &n.running_mean, &n.running_var})
    if (t->defined() && (t->shape() != Shape({C}) || t->dtype() != want || t->device() != z.device())) return false;
  return n.params.training && n.running_mean.defined() == n.running_var.defined();
}

// The cheap depthwise conv's geometry: "same" padding, stride 1, its input a
// in the first half of y's channels.
cpu::ConvGeom cheap_geometry(const Tensor& z, int64_t k) {
  cpu::ConvGeom g;
  g.n = z.size(0);
  g.h = g.oh = z.size(1);
  g.w = g.ow = z.size(2);
  g.c_in = g.c_out = g.groups = z.size(3);
  g.kh = g.kw = k;
  g.ph = g.pw = k / 2;
  g.x_pixel_stride = 2 * z.size(3);
  return g;
}

// The op in a trace: the cheap conv's multiply-adds, its kernel and activation.
void trace_ghost_norms(const char* op, const std::vector<Tensor>& inputs, const Tensor& y, int64_t k,
                       Activation act) {
  if (active_trace() == nullptr) return;  // the strings cost more than the check
  trace_op(op, inputs, y, y.numel() / 2 * k * k,
           {{"kernel", std::to_string(k) + "x" + std::to_string(k)}, {"act", activation_name(act)}});
}

}  // namespace

bool ghost_norms_apply(const Tensor& z, const GhostNorm& primary, const Tensor& w_cheap, const GhostNorm& cheap) {
  if (!z.defined() || z.dim() != 4 || layers_are_traced()) return false;
  const int64_t C = z.size(3);
  const bool shapes = C > 0 && w_cheap.defined() && w_cheap.device() == z.device() && w_cheap.dim() == 4 &&
                      w_cheap.size(0) == C && w_cheap.size(1) == w_cheap.size(2) && w_cheap.size(1) % 2 == 1 &&
                      w_cheap.size(3) == 1 && fits_norm(primary, z, C) && fits_norm(cheap, z, C);
  if (!shapes) return false;
  if (z.device().is_cpu())
    return (z.dtype() == DType::F32 || z.dtype() == DType::F64) && w_cheap.dtype() == z.dtype();
  if constexpr (kHaveCuda) {
    // The depthwise kernels (f32, f16, bf16; kernels up to 7); under mixed
    // precision the f32 weight is cast to z's dtype.
    const bool weight_ok = w_cheap.dtype() == z.dtype() || w_cheap.dtype() == DType::F32;
    return z.device().is_cuda() && weight_ok &&
           gpu::conv2d_path(cheap_geometry(z, w_cheap.size(1)), z.dtype()) == gpu::ConvPath::Depthwise;
  }
  return false;
}

namespace {

// CUDA: the norms' kernels write into y's halves and read the gradient's in
// place (rows a pitch apart), the depthwise kernels read a from y.
Tensor ghost_norms_cuda(const char* op, const Tensor& z_in, const GhostNorm& np, const Tensor& w_cheap,
                        const GhostNorm& nc, Activation act) {
  const Tensor z = z_in.detach().contiguous();
  const Tensor wc = w_cheap.detach().to(z.dtype()).contiguous();
  const DType w_dtype = w_cheap.dtype();
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), K = wc.size(1);
  const cpu::ConvGeom g = cheap_geometry(z, K);
  const std::vector<Tensor> inputs{z_in, np.weight, np.bias, w_cheap, nc.weight, nc.bias};
  const bool grad = needs_grad(inputs);
  Tensor y = Tensor::empty({N, H, W, 2 * C}, z.dtype(), z.device());
  const Tensor a = y.narrow(3, 0, C), b = y.narrow(3, C, C);
  Tensor zc;
  gpu::BatchNormStats saved_p, saved_c;
  if constexpr (kHaveCuda) {
    const BatchNormParams &pp = np.params, &pc = nc.params;
    saved_p = gpu::batch_norm_act_forward(z, np.weight, np.bias, np.running_mean, np.running_var, Tensor(), true,
                                          pp.momentum, pp.eps, act, grad, a)
                  .saved;
    zc = gpu::conv2d_forward(g, a, wc, Tensor());
    saved_c = gpu::batch_norm_act_forward(zc, nc.weight, nc.bias, nc.running_mean, nc.running_var, Tensor(), true,
                                          pc.momentum, pc.eps, act, grad, b)
                  .saved;
  }
  trace_ghost_norms(op, inputs, y, K, act);
  if (!grad) return y;
  const Tensor ys = y.detach();  // not the recorded output itself: no reference cycle through its node
  auto param = [](const Tensor& t) { return t.defined() ? t.detach() : Tensor(); };
  const Tensor wp = param(np.weight), bp = param(np.bias), wn = param(nc.weight), bn = param(nc.bias);
  return record(y, op, inputs,
                [z, wc, w_dtype, zc, ys, g, saved_p, saved_c, wp, bp, wn, bn, act](const Tensor& grad_y,
                                                                                   const std::vector<bool>& needs) {
                  std::vector<Tensor> grads(6);
                  if constexpr (kHaveCuda) {
                    const int64_t C = g.c_in;
                    const Tensor gy = grad_y.contiguous();
                    const gpu::BatchNormGrads gc = gpu::batch_norm_act_backward(
                        gy.narrow(3, C, C), zc, Tensor(), wn, bn, saved_c, true, act, {true, needs[4], needs[5], false});
                    grads[4] = gc.weight;
                    grads[5] = gc.bias;
                    if (needs[3]) grads[3] = gpu::conv2d_backward_params(g, ys.narrow(3, 0, C), gc.x, true, false)
                                                 .weight.to(w_dtype);
                    if (!(needs[0] || needs[1] || needs[2])) return grads;
                    cpu::ConvGeom dense = g;
                    dense.x_pixel_stride = 0;
                    Tensor ga = gpu::conv2d_backward_input(dense, gc.x, wc);
                    add_(ga, gy.narrow(3, 0, C));  // the first half's own gradient
                    const gpu::BatchNormGrads gp = gpu::batch_norm_act_backward(
                        ga, z, Tensor(), wp, bp, saved_p, true, act, {needs[0], needs[1], needs[2], false});
                    grads[0] = gp.x;
                    grads[1] = gp.weight;
                    grads[2] = gp.bias;
                  }
                  return grads;
                });
}

}  // namespace

Tensor ghost_norms(const Tensor& z_in, const GhostNorm& primary, const Tensor& w_cheap, const GhostNorm& cheap,
                   Activation act) {
  const char* op = "ghost_norms";
  KCHECK(ghost_norms_apply(z_in, primary, w_cheap, cheap), ValueError, op,
         ": needs an input [N,H,W,C] (got ", shape_str(z_in.shape()), " ", dtype_name(z_in.dtype()),
         ") in f32 or f64 on the CPU, f32, f16 or bf16 on CUDA, a [C,K,K,1] cheap weight with K odd (got ",
         shape_str(w_cheap.shape()), "), [C] norm tensors in training mode, and no trace naming each layer");
  check_batch_statistics(z_in, z_in.numel() / z_in.size(3), op);
  if (z_in.device().is_cuda()) return ghost_norms_cuda(op, z_in, primary, w_cheap, cheap, act);
  const Tensor z = z_in.detach().contiguous();
  const Tensor wc = w_cheap.detach().contiguous();
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), K = wc.size(1);
  const cpu::ConvGeom g = cheap_geometry(z, K);
  Tensor y = Tensor::empty({N, H, W, 2 * C}, z.dtype(), z.device());
  const Tensor a = y.narrow(3, 0, C), b = y.narrow(3, C, C);
  GhostNorm np = primary, nc = cheap;  // handles: the running statistics update in place
  const CpuNorm norm_p =
      cpu_norm_prepare(op, z, np.weight, np.bias, np.running_mean, np.running_var, np.params, act);
  cpu_norm_forward(norm_p, z, Tensor(), a);
  const Tensor zc = Tensor::empty({N, H, W, C}, z.dtype(), z.device());
  dispatch_float(z.dtype(), op, [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    cpu::depthwise_forward<T>(g, static_cast<const T*>(a.data_ptr()), wc.data<T>(), nullptr, zc.data<T>(),
                              Activation::None);
  });
  const CpuNorm norm_c =
      cpu_norm_prepare(op, zc, nc.weight, nc.bias, nc.running_mean, nc.running_var, nc.params, act);
  cpu_norm_forward(norm_c, zc, Tensor(), b);

  const std::vector<Tensor> inputs{z_in, primary.weight, primary.bias, w_cheap, cheap.weight, cheap.bias};
  trace_ghost_norms(op, inputs, y, K, act);
  if (!needs_grad(inputs)) return y;
  const Tensor ys = y.detach();  // not the recorded output itself: no reference cycle through its node
  return record(y, op, inputs, [z, wc, zc, ys, norm_p, norm_c, g](const Tensor& grad, const std::vector<bool>& needs) {
    const int64_t C = g.c_in;
    const Tensor gy = grad.contiguous();
    const bool want_first = needs[0] || needs[1] || needs[2];
    // The cheap half: its norm's gradients, then the depthwise conv's.
    std::vector<Tensor> gc =
        cpu_norm_backward(norm_c, zc, Tensor(), gy.narrow(3, C, C), {true, needs[4], needs[5], false});
    const Tensor& gzc = gc[0];
    Tensor gwc, gz, gwp, gbp;
    dispatch_float(gy.dtype(), "ghost_norms backward", [&](auto tag_) {
      using T = KESTREL_SCALAR(tag_);
      if (needs[3]) {
        gwc = Tensor::empty(wc.shape(), wc.dtype(), wc.device());
        cpu::depthwise_backward_weight<T>(g, static_cast<const T*>(ys.data_ptr()), gzc.data<T>(), gwc.data<T>());
      }
      if (!want_first) return;
      cpu::ConvGeom dense = g;
      dense.x_pixel_stride = 0;
      Tensor ga = Tensor::empty(z.shape(), z.dtype(), z.device());
      cpu::depthwise_backward_input<T>(dense, gzc.data<T>(), wc.data<T>(), ga.data<T>());
      add_(ga, gy.narrow(3, 0, C));  // the first half's own gradient joins the cheap conv's
      std::vector<Tensor> gp = cpu_norm_backward(norm_p, z, Tensor(), ga, {needs[0], needs[1], needs[2], false});
      gz = gp[0];
      gwp = gp[1];
      gbp = gp[2];
    });
    return std::vector<Tensor>{gz, gwp, gbp, gwc, gc[1], gc[2]};
  });
}

}  // namespace kestrel
