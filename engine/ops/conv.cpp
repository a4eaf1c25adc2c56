#include "engine/ops/conv.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cpu/conv.h"
#include "engine/cpu/conv_gemm.h"
#include "engine/cpu/parallel.h"
#include "engine/cpu/pool.h"
#include "engine/gpu/conv.h"
#include "engine/ops/attention.h"
#include "engine/ops/check.h"
#include "engine/trace.h"

namespace kestrel {

int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  KCHECK(stride >= 1 && dilation >= 1 && kernel >= 1 && pad >= 0, ValueError, "conv_output_size: invalid kernel ",
         kernel, ", stride ", stride, ", padding ", pad, " or dilation ", dilation);
  const int64_t span = dilation * (kernel - 1) + 1;
  const int64_t room = in + 2 * pad - span;
  if (room < 0) return 0;
  return room / stride + 1;
}

namespace {

std::string pair_str(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

cpu::ConvGeom conv_geometry(const Shape& xs, const Tensor& w, const Conv2dParams& p) {
  const char* op = "conv2d";
  KCHECK(xs.size() == 4, ShapeError, op, ": input (NHWC) must have 4 dims, got ", shape_str(xs));
  check_dim(w, 4, op, "weight (OHWI)");
  KCHECK(p.stride_h >= 1 && p.stride_w >= 1, ValueError, op, ": stride must be >= 1, got ",
         pair_str(p.stride_h, p.stride_w));
  KCHECK(p.dilation_h >= 1 && p.dilation_w >= 1, ValueError, op, ": dilation must be >= 1, got ",
         pair_str(p.dilation_h, p.dilation_w));
  KCHECK(p.pad_h >= 0 && p.pad_w >= 0, ValueError, op, ": padding must be >= 0, got ", pair_str(p.pad_h, p.pad_w));
  KCHECK(p.groups >= 1, ValueError, op, ": groups must be >= 1, got ", p.groups);
  cpu::ConvGeom g;
  g.n = xs[0];
  g.h = xs[1];
  g.w = xs[2];
  g.c_in = xs[3];
  g.c_out = w.size(0);
  g.kh = w.size(1);
  g.kw = w.size(2);
  g.sh = p.stride_h;
  g.sw = p.stride_w;
  g.ph = p.pad_h;
  g.pw = p.pad_w;
  g.dh = p.dilation_h;
  g.dw = p.dilation_w;
  g.groups = p.groups;
  KCHECK(g.c_in % p.groups == 0, ShapeError, op, ": groups=", p.groups, " does not divide the ", g.c_in,
         " input channels (input ", shape_str(xs), " NHWC, weight ", shape_str(w.shape()), " OHWI)");
  KCHECK(g.c_out % p.groups == 0, ShapeError, op, ": groups=", p.groups, " does not divide the ", g.c_out,
         " output channels (weight ", shape_str(w.shape()), " OHWI)");
  KCHECK(w.size(3) * p.groups == g.c_in, ShapeError, op, ": input has ", g.c_in, " channels but weight expects ",
         w.size(3) * p.groups, " (", w.size(3), " per group x ", p.groups, " groups; weight ", shape_str(w.shape()),
         " OHWI, input ", shape_str(xs), " NHWC)");
  KCHECK(g.kh >= 1 && g.kw >= 1, ShapeError, op, ": empty kernel in weight ", shape_str(w.shape()));
  g.oh = conv_output_size(g.h, g.kh, g.sh, g.ph, g.dh);
  g.ow = conv_output_size(g.w, g.kw, g.sw, g.pw, g.dw);
  KCHECK(g.oh > 0 && g.ow > 0, ShapeError, op, ": kernel ", pair_str(g.kh, g.kw), " with dilation ",
         pair_str(g.dh, g.dw), " does not fit the padded input (input ", shape_str(xs), " NHWC, padding ",
         pair_str(g.ph, g.pw), ")");
  return g;
}

}  // namespace

namespace {

// The operands after autocast and checks, and contiguous detached copies.
struct ConvOperands {
  Tensor x, weight, bias;
  Tensor xc, wc, bc;
  cpu::ConvGeom g;
};

ConvOperands conv_operands(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, const Conv2dParams& p,
                           const char* op) {
  ConvOperands o;
  // Under autocast (CUDA only) f32 operands become f16/bf16 through recorded casts.
  o.x = autocast_operand(x_in);
  o.weight = autocast_operand(weight_in);
  o.bias = autocast_operand(bias_in);
  check_defined(o.x, op, "input");
  check_defined(o.weight, op, "weight");
  check_same_device_and_dtype(o.x, o.weight, op);
  o.g = conv_geometry(o.x.shape(), o.weight, p);
  if (o.bias.defined()) {
    check_same_device_and_dtype(o.x, o.bias, op);
    KCHECK(o.bias.dim() == 1 && o.bias.size(0) == o.g.c_out, ShapeError, op, ": bias has shape ",
           shape_str(o.bias.shape()), " but the weight ", shape_str(o.weight.shape()), " has ", o.g.c_out,
           " output channels");
  }
  o.xc = o.x.detach().contiguous();
  o.wc = o.weight.detach().contiguous();
  o.bc = o.bias.defined() ? o.bias.detach().contiguous() : Tensor();
  return o;
}

// Multiply-accumulates of one forward, for the trace (FLOP counting).
int64_t conv_macs(const cpu::ConvGeom& g) { return g.n * g.oh * g.ow * g.c_out * g.kh * g.kw * g.cin_g(); }

std::map<std::string, std::string> conv_trace_attrs(const cpu::ConvGeom& g, const Tensor& bias) {
  if (active_trace() == nullptr) return {};  // the strings cost more than a small conv at batch 1
  return {{"kernel", pair_str(g.kh, g.kw)},
          {"stride", pair_str(g.sh, g.sw)},
          {"padding", pair_str(g.ph, g.pw)},
          {"dilation", pair_str(g.dh, g.dw)},
          {"groups", std::to_string(g.groups)},
          {"bias", bias.defined() ? "true" : "false"}};
}

// A frozen weight's (a model fused for inference) form for the kernels,
// built by make() on its first use and kept with its storage; null where the
// weight may still change.
template <typename Form, typename Make>
std::shared_ptr<const Form> frozen_form(const Tensor& weight, const cpu::ConvGeom& g, const char* name, Make&& make) {
  const std::shared_ptr<Storage>& storage = weight.storage();
  if (!storage->frozen()) return nullptr;
  const auto offset = static_cast<const char*>(weight.data_ptr()) - static_cast<const char*>(storage->data());
  const std::string key = std::string(name) + "@" + std::to_string(offset) + " groups " + std::to_string(g.groups) +
                          " k " + std::to_string(g.k()) + " c_out " + std::to_string(g.c_out);
  return std::static_pointer_cast<const Form>(
      storage->derived(key, [&] { return std::make_shared<const Form>(make()); }));
}

// act(conv(x, w) + b + residual) on the CPU, the activation in the kernel's
// epilogue. residual: contiguous, of the output's shape and dtype, or
// undefined; the implicit GEMM adds it in its epilogue, the other paths in a
// pass of their own.
Tensor cpu_forward(const ConvOperands& o, Activation act, const char* op, const Tensor& residual = Tensor()) {
  if (residual.defined() && (o.g.depthwise() || o.wc.dtype() != DType::F32 || !cpu::implicit_gemm_enabled())) {
    TracePause inside_this_op;
    return activation(add(cpu_forward(o, Activation::None, op), residual), act);
  }
  const cpu::ConvGeom& g = o.g;
  Tensor out = Tensor::empty({g.n, g.oh, g.ow, g.c_out}, o.x.dtype(), o.x.device());
  if (o.wc.dtype() == DType::F32) {
    const float* x = o.xc.data<float>();
    const float* bias = o.bc.defined() ? o.bc.data<float>() : nullptr;
    float* y = out.data<float>();
    if (g.depthwise()) {
      const auto taps_major = frozen_form<std::vector<float>>(
          o.wc, g, "depthwise_taps_major", [&] { return cpu::depthwise_weight_taps_major(g, o.wc.data<float>()); });
      if (taps_major != nullptr) {
        cpu::depthwise_forward_taps_major(g, x, taps_major->data(), bias, y, act);
        return out;
      }
    } else if (cpu::implicit_gemm_enabled()) {
      auto packed = frozen_form<cpu::PackedConvWeights>(
          o.wc, g, "conv_gemm", [&] { return cpu::pack_conv_weights(g, o.wc.data<float>()); });
      if (packed == nullptr && residual.defined())  // weights not frozen: packed for this call alone
        packed = std::make_shared<const cpu::PackedConvWeights>(cpu::pack_conv_weights(g, o.wc.data<float>()));
      if (packed != nullptr) {
        cpu::implicit_gemm_conv(g, x, *packed, bias, y, act, residual.defined() ? residual.data<float>() : nullptr);
        return out;
      }
    }
  }
  dispatch_float(o.x.dtype(), op, [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::conv2d_forward<scalar_t>(g, o.xc.data<scalar_t>(), o.wc.data<scalar_t>(),
                                  o.bc.defined() ? o.bc.data<scalar_t>() : nullptr, out.data<scalar_t>(), act);
  });
  return out;
}

}  // namespace

Tensor conv2d(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, const Conv2dParams& p) {
  const char* op = "conv2d";
  const ConvOperands o = conv_operands(x_in, weight_in, bias_in, p, op);
  const Tensor &x = o.x, &weight = o.weight, &bias = o.bias, &xc = o.xc, &wc = o.wc, &bc = o.bc;
  const cpu::ConvGeom& g = o.g;
  Tensor out;
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) out = gpu::conv2d_forward(g, xc, wc, bc);
  }
  if (!out.defined()) out = cpu_forward(o, Activation::None, op);
  trace_op(op, {x, weight, bias}, out, conv_macs(g), conv_trace_attrs(g, bias));
  if (!needs_grad({x, weight, bias})) return out;
  // Keep only what backward needs: x for the weight gradient, w for the input gradient.
  const Tensor xs = weight.requires_grad() ? xc : Tensor();
  const Tensor ws = x.requires_grad() ? wc : Tensor();
  return record(out, op, {x, weight, bias}, [g, xs, ws](const Tensor& grad, const std::vector<bool>& needs) {
    const Tensor gy = grad.contiguous();
    const bool want_bias = needs.size() > 2 && needs[2];
    Tensor gx, gw, gb;
    if constexpr (kHaveCuda) {
      if (gy.device().is_cuda()) {
        if (needs[0]) gx = gpu::conv2d_backward_input(g, gy, ws);
        if (needs[1] || want_bias) {
          gpu::ConvParamGrads pg = gpu::conv2d_backward_params(g, xs, gy, needs[1], want_bias);
          gw = pg.weight;
          gb = pg.bias;
        }
        return std::vector<Tensor>{gx, gw, gb};
      }
    }
    dispatch_float(gy.dtype(), "conv2d backward", [&](auto tag_) {
      using scalar_t = KESTREL_SCALAR(tag_);
      const scalar_t* pgy = gy.data<scalar_t>();
      if (needs[0]) {
        gx = Tensor::empty({g.n, g.h, g.w, g.c_in}, gy.dtype(), gy.device());
        cpu::conv2d_backward_input<scalar_t>(g, pgy, ws.data<scalar_t>(), gx.data<scalar_t>());
      }
      if (needs[1]) {
        gw = Tensor::empty({g.c_out, g.kh, g.kw, g.cin_g()}, gy.dtype(), gy.device());
        cpu::conv2d_backward_weight<scalar_t>(g, xs.data<scalar_t>(), pgy, gw.data<scalar_t>());
      }
      if (want_bias) {
        gb = Tensor::empty({g.c_out}, gy.dtype(), gy.device());
        cpu::conv2d_backward_bias<scalar_t>(g, pgy, gb.data<scalar_t>());
      }
    });
    return std::vector<Tensor>{gx, gw, gb};
  });
}

Tensor conv2d_act(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, const Conv2dParams& p,
                  Activation act, const Tensor& residual_in) {
  const auto composed = [&] {
    const Tensor y = conv2d(x_in, weight_in, bias_in, p);
    return activation(residual_in.defined() ? add(y, residual_in) : y, act);
  };
  if (needs_grad({x_in, weight_in, bias_in, residual_in})) return composed();
  const char* op = "conv2d_act";
  const ConvOperands o = conv_operands(x_in, weight_in, bias_in, p, op);
  const cpu::ConvGeom& g = o.g;
  Tensor residual;
  if (residual_in.defined()) {
    check_same_device(residual_in, o.x, op);
    KCHECK(residual_in.shape() == Shape({g.n, g.oh, g.ow, g.c_out}) && residual_in.dtype() == o.x.dtype(), ShapeError,
           op, ": residual ", shape_str(residual_in.shape()), " ", dtype_name(residual_in.dtype()),
           " must match the output ", shape_str({g.n, g.oh, g.ow, g.c_out}), " ", dtype_name(o.x.dtype()));
    residual = residual_in.contiguous();
  }
  Tensor out;
  if constexpr (kHaveCuda) {
    if (o.x.device().is_cuda()) {
      // Only the depthwise kernel has an activation epilogue on CUDA, and no residual.
      if (residual.defined() || gpu::conv2d_path(g, o.x.dtype()) != gpu::ConvPath::Depthwise) return composed();
      out = gpu::depthwise_forward_act(g, o.xc, o.wc, o.bc, act);
    }
  }
  if (!out.defined()) out = cpu_forward(o, act, op, residual);
  auto attrs = conv_trace_attrs(g, o.bias);
  if (!attrs.empty()) attrs["activation"] = activation_name(act);
  trace_op(op, {o.x, o.weight, o.bias, residual}, out, conv_macs(g), attrs);
  return out;
}

namespace {

bool frozen_f32_cpu(const Tensor& t) {
  return !t.defined() || (t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && t.storage()->frozen());
}

bool is_pointwise(const ConvStage& s) {
  const Conv2dParams& p = s.params;
  return s.weight.dim() == 4 && s.weight.size(1) == 1 && s.weight.size(2) == 1 && p.stride_h == 1 &&
         p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0 && p.groups == 1;
}

// A stage's geometry on rows x width pixels of one image.
cpu::ConvGeom band_geometry(const cpu::ConvGeom& g, int64_t rows, int64_t out_rows) {
  cpu::ConvGeom b = g;
  b.n = 1;
  b.h = rows;
  b.oh = out_rows;
  return b;
}

// Expanded rows to keep in cache per band: about a quarter of a 1 MiB L2.
constexpr int64_t kBandBytes = 256 * 1024;

// The squeeze-excite's weights fit a block of `mid` channels: [cr,..,mid] then [mid,..,cr].
bool fits_channels(const SqueezeExciteStage& se, int64_t mid) {
  const Tensor &w1 = se.w1, &w2 = se.w2;
  if (!w1.defined() || !w2.defined()) return false;
  const bool shapes_ok = (w1.dim() == 2 || (w1.dim() == 4 && w1.size(1) == 1 && w1.size(2) == 1)) &&
                         (w2.dim() == 2 || (w2.dim() == 4 && w2.size(1) == 1 && w2.size(2) == 1));
  if (!shapes_ok || w1.size(w1.dim() - 1) != mid || w2.size(0) != mid || w2.size(w2.dim() - 1) != w1.size(0))
    return false;
  return (!se.b1.defined() || se.b1.shape() == Shape({w1.size(0)})) &&
         (!se.b2.defined() || se.b2.shape() == Shape({mid}));
}

}  // namespace

bool ghost_in_place_applies(const Tensor& x, const Tensor& wp, const Tensor& bp, const Tensor& wc,
                            const Tensor& bc) {
  if (!cpu::implicit_gemm_enabled() || !x.defined() || x.dim() != 4 || !x.device().is_cpu() ||
      x.dtype() != DType::F32 || !wp.defined() || !wc.defined())
    return false;
  if (layers_are_traced() || needs_grad({x, wp, bp, wc, bc})) return false;
  for (const Tensor* t : {&wp, &bp, &wc, &bc})
    if (!frozen_f32_cpu(*t)) return false;
  if (wp.dim() != 4 || wp.size(1) != 1 || wp.size(2) != 1 || wp.size(3) != x.size(3)) return false;
  const int64_t primary = wp.size(0), cheap = wc.size(0);
  return wc.dim() == 4 && wc.size(1) == wc.size(2) && wc.size(1) % 2 == 1 && wc.size(3) == 1 && cheap >= 2 &&
         cheap <= primary && (!bp.defined() || bp.shape() == Shape({primary})) &&
         (!bc.defined() || bc.shape() == Shape({cheap}));
}

Tensor ghost_in_place(const Tensor& x_in, const Tensor& wp, const Tensor& bp, const Tensor& wc, const Tensor& bc,
                      Activation act) {
  const char* op = "ghost_module";
  KCHECK(ghost_in_place_applies(x_in, wp, bp, wc, bc), ValueError, op,
         ": in place needs f32 CPU tensors, frozen 1x1 and depthwise weights, no gradient, the AVX-512 implicit "
         "GEMM and no trace naming each layer (input ", shape_str(x_in.shape()), ")");
  const Tensor x = x_in.contiguous();
  const int64_t primary = wp.size(0), cheap = wc.size(0), out_channels = primary + cheap, k = wc.size(1);
  const cpu::ConvGeom g_primary_dense = conv_geometry(x.shape(), wp, Conv2dParams{});
  cpu::ConvGeom g_primary = g_primary_dense;
  g_primary.y_pixel_stride = out_channels;
  Conv2dParams dw;
  dw.pad_h = dw.pad_w = k / 2;
  dw.groups = cheap;
  cpu::ConvGeom g_cheap = conv_geometry({x.size(0), x.size(1), x.size(2), cheap}, wc, dw);
  g_cheap.x_pixel_stride = g_cheap.y_pixel_stride = out_channels;
  // The packed forms conv2d_act keeps for these weights (same keys, same geometry).
  const auto packed = frozen_form<cpu::PackedConvWeights>(
      wp, g_primary_dense, "conv_gemm", [&] { return cpu::pack_conv_weights(g_primary_dense, wp.data<float>()); });
  const auto taps = frozen_form<std::vector<float>>(
      wc, g_cheap, "depthwise_taps_major", [&] { return cpu::depthwise_weight_taps_major(g_cheap, wc.data<float>()); });
  Tensor out = Tensor::empty({x.size(0), x.size(1), x.size(2), out_channels}, DType::F32, x.device());
  float* y = out.data<float>();
  cpu::implicit_gemm_conv(g_primary, x.data<float>(), *packed, bp.defined() ? bp.data<float>() : nullptr, y, act);
  cpu::depthwise_forward_taps_major(g_cheap, static_cast<const float*>(y), taps->data(),
                                    bc.defined() ? bc.data<float>() : nullptr, y + primary, act);
  trace_op(op, {x_in, wp, bp, wc, bc}, out, conv_macs(g_primary) + conv_macs(g_cheap));
  return out;
}

bool inverted_residual_banded_applies(const Tensor& x, const ConvStage* expand, const ConvStage& depthwise,
                                      const SqueezeExciteStage* se, const ConvStage& project,
                                      int64_t min_expanded_bytes) {
  if (!cpu::implicit_gemm_enabled() || !x.defined() || x.dim() != 4 || !x.device().is_cpu() ||
      x.dtype() != DType::F32)
    return false;
  if (layers_are_traced()) return false;
  std::vector<Tensor> all{x, depthwise.weight, depthwise.bias, project.weight, project.bias};
  if (expand != nullptr) {
    all.push_back(expand->weight);
    all.push_back(expand->bias);
  }
  if (se != nullptr) all.insert(all.end(), {se->w1, se->b1, se->w2, se->b2});
  if (needs_grad(all)) return false;
  for (size_t i = 1; i < all.size(); ++i)
    if (!frozen_f32_cpu(all[i])) return false;
  if (!depthwise.weight.defined() || !project.weight.defined() || !is_pointwise(project) ||
      (expand != nullptr && (!expand->weight.defined() || !is_pointwise(*expand))))
    return false;
  const int64_t mid = depthwise.weight.size(0);
  const int64_t in = expand != nullptr ? expand->weight.size(3) : mid;
  if (x.size(3) != in || (expand != nullptr && expand->weight.size(0) != mid) || depthwise.params.groups != mid ||
      depthwise.weight.size(3) != 1 || project.weight.size(3) != mid || (se != nullptr && !fits_channels(*se, mid)))
    return false;
  return x.size(0) * x.size(1) * x.size(2) * mid * int64_t{sizeof(float)} >= min_expanded_bytes;
}

Tensor inverted_residual_banded(const Tensor& x_in, const ConvStage* expand, const ConvStage& depthwise,
                                const SqueezeExciteStage* se, const ConvStage& project, const Tensor& residual_in) {
  const char* op = "inverted_residual";
  KCHECK(inverted_residual_banded_applies(x_in, expand, depthwise, se, project, 0), ValueError, op,
         ": needs f32 CPU tensors, frozen weights of a 1x1 / depthwise / [squeeze-excite /] 1x1 chain, no gradient, "
         "the AVX-512 implicit GEMM and no trace naming each layer (input ", shape_str(x_in.shape()), ")");
  const Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2);
  // Each stage's geometry over the whole input, checked as conv2d checks it.
  const int64_t mid = depthwise.weight.size(0);
  cpu::ConvGeom ge{};
  if (expand != nullptr) ge = conv_geometry(x.shape(), expand->weight, expand->params);
  const cpu::ConvGeom gd = conv_geometry({N, H, W, mid}, depthwise.weight, depthwise.params);
  const cpu::ConvGeom gp = conv_geometry({N, gd.oh, gd.ow, mid}, project.weight, project.params);
  Tensor residual;
  if (residual_in.defined()) {
    KCHECK(residual_in.shape() == Shape({N, gp.oh, gp.ow, gp.c_out}) && residual_in.dtype() == DType::F32 &&
               residual_in.device().is_cpu(),
           ShapeError, op, ": residual ", shape_str(residual_in.shape()), " must match the output ",
           shape_str({N, gp.oh, gp.ow, gp.c_out}));
    residual = residual_in.contiguous();
  }
  Tensor out = Tensor::empty({N, gp.oh, gp.ow, gp.c_out}, DType::F32, x.device());

  // The kernels' forms of the frozen weights, shared with conv2d_act's.
  std::shared_ptr<const cpu::PackedConvWeights> packed_expand;
  if (expand != nullptr)
    packed_expand = frozen_form<cpu::PackedConvWeights>(
        expand->weight, ge, "conv_gemm", [&] { return cpu::pack_conv_weights(ge, expand->weight.data<float>()); });
  const auto taps = frozen_form<std::vector<float>>(depthwise.weight, gd, "depthwise_taps_major", [&] {
    return cpu::depthwise_weight_taps_major(gd, depthwise.weight.data<float>());
  });
  const auto packed_project = frozen_form<cpu::PackedConvWeights>(
      project.weight, gp, "conv_gemm", [&] { return cpu::pack_conv_weights(gp, project.weight.data<float>()); });
  const float* bias_e = expand != nullptr && expand->bias.defined() ? expand->bias.data<float>() : nullptr;
  const float* bias_d = depthwise.bias.defined() ? depthwise.bias.data<float>() : nullptr;
  const float* bias_p = project.bias.defined() ? project.bias.data<float>() : nullptr;
  float* py = out.data<float>();
  const float* pr = residual.defined() ? residual.data<float>() : nullptr;
  // Output rows [o0, o1) of image n through the projection, from the band's depthwise rows.
  auto project_band = [&](const float* rows, int64_t n, int64_t o0, int64_t o1) {
    const int64_t offset = ((n * gp.oh + o0) * gp.ow) * gp.c_out;
    cpu::implicit_gemm_conv(band_geometry(gp, o1 - o0, o1 - o0), rows, *packed_project, bias_p, py + offset,
                            project.act, pr != nullptr ? pr + offset : nullptr);
  };
  // With a squeeze-excite: the whole depthwise output, and each of its rows' sums.
  Tensor dw_all;
  std::vector<float> dw_row_sums;
  if (se != nullptr) {
    dw_all = Tensor::empty({N, gd.oh, gd.ow, mid}, DType::F32, x.device());
    dw_row_sums.resize(static_cast<size_t>(N * gd.oh * mid));
  }

  // Input rows [lo, hi) that output rows [o0, o1) of the depthwise read.
  const int64_t reach = (gd.kh - 1) * gd.dh + 1;
  auto rows_lo = [&](int64_t o0) { return std::max<int64_t>(0, o0 * gd.sh - gd.ph); };
  auto rows_hi = [&](int64_t o1) { return std::min<int64_t>(H, (o1 - 1) * gd.sh - gd.ph + reach); };
  const int64_t row_bytes = W * mid * int64_t{sizeof(float)};
  const int64_t band = std::clamp<int64_t>((kBandBytes / row_bytes - reach) / gd.sh + 1, 1, gd.oh);
  // Strips of output rows, two per thread in all: each thread walks its own
  // strip band by band, keeping the rows a band shares with the next.
  const int threads = cpu::partial_count(true);
  const int64_t strips = threads > 1 ? std::clamp<int64_t>((2 * threads + N - 1) / N, 1, gd.oh) : 1;
  const float* px = x.data<float>();
  cpu::parallel_for(N * strips, N * strips > 1, [&](int64_t item) {
    const int64_t n = item / strips, s = item % strips;
    const int64_t first = gd.oh * s / strips, last = gd.oh * (s + 1) / strips;
    if (first == last) return;
    const float* image = px + n * H * W * x.size(3);
    std::vector<float> expanded, dw_band(se != nullptr ? 0 : static_cast<size_t>(band * gd.ow * mid));
    if (expand != nullptr) expanded.resize(static_cast<size_t>(((band - 1) * gd.sh + reach) * W * mid));
    int64_t have_lo = 0, have_hi = 0;  // expanded rows held, at the front of `expanded`
    for (int64_t o0 = first; o0 < last; o0 += band) {
      const int64_t o1 = std::min(last, o0 + band), lo = rows_lo(o0), hi = rows_hi(o1);
      const float* rows = image + lo * W * mid;  // no expansion: the input's own rows
      if (expand != nullptr) {
        if (have_hi > lo && have_lo <= lo) {  // keep the rows this band shares with the last
          std::copy(expanded.begin() + (lo - have_lo) * W * mid, expanded.begin() + (have_hi - have_lo) * W * mid,
                    expanded.begin());
        } else {
          have_hi = lo;
        }
        have_lo = lo;
        if (hi > have_hi) {
          const cpu::ConvGeom g = band_geometry(ge, hi - have_hi, hi - have_hi);
          cpu::implicit_gemm_conv(g, image + have_hi * W * ge.c_in, *packed_expand, bias_e,
                                  expanded.data() + (have_hi - lo) * W * mid, expand->act, nullptr);
          have_hi = hi;
        }
        rows = expanded.data();
      }
      cpu::ConvGeom g = band_geometry(gd, hi - lo, o1 - o0);
      g.ph = lo - (o0 * gd.sh - gd.ph);  // the band's first row is the window's top, or the padding above it
      if (se == nullptr) {
        cpu::depthwise_forward_taps_major(g, rows, taps->data(), bias_d, dw_band.data(), depthwise.act);
        project_band(dw_band.data(), n, o0, o1);
      } else {
        float* dw_rows = dw_all.data<float>() + (n * gd.oh + o0) * gd.ow * mid;
        cpu::depthwise_forward_taps_major(g, rows, taps->data(), bias_d, dw_rows, depthwise.act);
        cpu::row_sums(dw_rows, o1 - o0, gd.ow, mid, dw_row_sums.data() + (n * gd.oh + o0) * mid);
      }
    }
  });
  int64_t se_macs = 0;
  if (se != nullptr) {
    Tensor gate;
    {
      TracePause inside_this_op;
      Tensor pooled = Tensor::empty({N, 1, 1, mid}, DType::F32, x.device());
      cpu::mean_of_row_sums(dw_row_sums.data(), N, gd.oh, gd.ow, mid, pooled.data<float>());
      gate = squeeze_excite_gate(pooled, se->w1, se->b1, se->w2, se->b2, se->act, se->gate).contiguous();
    }
    se_macs = 2 * N * se->w1.numel() + dw_all.numel();
    // Bands of the depthwise output times the gate, projected while in cache.
    const int64_t gated_band = std::clamp<int64_t>(kBandBytes / (gd.ow * mid * int64_t{sizeof(float)}), 1, gd.oh);
    const float* pd = dw_all.data<float>();
    const float* pg = gate.data<float>();
    cpu::parallel_for(N * strips, N * strips > 1, [&](int64_t item) {
      const int64_t n = item / strips, s = item % strips;
      const int64_t first = gd.oh * s / strips, last = gd.oh * (s + 1) / strips;
      std::vector<float> gated(static_cast<size_t>(std::min(gated_band, last - first) * gd.ow * mid));
      const float* g = pg + n * mid;
      for (int64_t o0 = first; o0 < last; o0 += gated_band) {
        const int64_t o1 = std::min(last, o0 + gated_band), pixels = (o1 - o0) * gd.ow;
        const float* src = pd + (n * gd.oh + o0) * gd.ow * mid;
        for (int64_t q = 0; q < pixels; ++q) {
          const float* xr = src + q * mid;
          float* yr = gated.data() + q * mid;
#pragma omp simd
          for (int64_t c = 0; c < mid; ++c) yr[c] = xr[c] * g[c];
        }
        project_band(gated.data(), n, o0, o1);
      }
    });
  }
  trace_op(op, {x_in, residual_in}, out,
           conv_macs(gd) + conv_macs(gp) + (expand != nullptr ? conv_macs(ge) : 0) + se_macs);
  return out;
}

}  // namespace kestrel
