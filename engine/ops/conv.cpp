#include "engine/ops/conv.h"

#include <map>
#include <string>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cpu/conv.h"
#include "engine/cpu/conv_gemm.h"
#include "engine/gpu/conv.h"
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

cpu::ConvGeom conv_geometry(const Tensor& x, const Tensor& w, const Conv2dParams& p) {
  const char* op = "conv2d";
  check_dim(x, 4, op, "input (NHWC)");
  check_dim(w, 4, op, "weight (OHWI)");
  KCHECK(p.stride_h >= 1 && p.stride_w >= 1, ValueError, op, ": stride must be >= 1, got ",
         pair_str(p.stride_h, p.stride_w));
  KCHECK(p.dilation_h >= 1 && p.dilation_w >= 1, ValueError, op, ": dilation must be >= 1, got ",
         pair_str(p.dilation_h, p.dilation_w));
  KCHECK(p.pad_h >= 0 && p.pad_w >= 0, ValueError, op, ": padding must be >= 0, got ", pair_str(p.pad_h, p.pad_w));
  KCHECK(p.groups >= 1, ValueError, op, ": groups must be >= 1, got ", p.groups);
  cpu::ConvGeom g;
  g.n = x.size(0);
  g.h = x.size(1);
  g.w = x.size(2);
  g.c_in = x.size(3);
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
         " input channels (input ", shape_str(x.shape()), " NHWC, weight ", shape_str(w.shape()), " OHWI)");
  KCHECK(g.c_out % p.groups == 0, ShapeError, op, ": groups=", p.groups, " does not divide the ", g.c_out,
         " output channels (weight ", shape_str(w.shape()), " OHWI)");
  KCHECK(w.size(3) * p.groups == g.c_in, ShapeError, op, ": input has ", g.c_in, " channels but weight expects ",
         w.size(3) * p.groups, " (", w.size(3), " per group x ", p.groups, " groups; weight ", shape_str(w.shape()),
         " OHWI, input ", shape_str(x.shape()), " NHWC)");
  KCHECK(g.kh >= 1 && g.kw >= 1, ShapeError, op, ": empty kernel in weight ", shape_str(w.shape()));
  g.oh = conv_output_size(g.h, g.kh, g.sh, g.ph, g.dh);
  g.ow = conv_output_size(g.w, g.kw, g.sw, g.pw, g.dw);
  KCHECK(g.oh > 0 && g.ow > 0, ShapeError, op, ": kernel ", pair_str(g.kh, g.kw), " with dilation ",
         pair_str(g.dh, g.dw), " does not fit the padded input (input ", shape_str(x.shape()), " NHWC, padding ",
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
  o.g = conv_geometry(o.x, o.weight, p);
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
std::shared_ptr<const Form> frozen_form(const ConvOperands& o, const char* name, Make&& make) {
  const cpu::ConvGeom& g = o.g;
  const std::shared_ptr<Storage>& storage = o.wc.storage();
  if (!storage->frozen()) return nullptr;
  const auto offset = static_cast<const char*>(o.wc.data_ptr()) - static_cast<const char*>(storage->data());
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
          o, "depthwise_taps_major", [&] { return cpu::depthwise_weight_taps_major(g, o.wc.data<float>()); });
      if (taps_major != nullptr) {
        cpu::depthwise_forward_taps_major(g, x, taps_major->data(), bias, y, act);
        return out;
      }
    } else if (cpu::implicit_gemm_enabled()) {
      auto packed = frozen_form<cpu::PackedConvWeights>(
          o, "conv_gemm", [&] { return cpu::pack_conv_weights(g, o.wc.data<float>()); });
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

}  // namespace kestrel
