#include "models/common.h"

#include <cmath>
#include <functional>
#include <sstream>

#include "engine/autograd.h"
#include "engine/ops/attention.h"
#include "engine/ops/dropout.h"
#include "engine/ops/pool.h"
#include "engine/trace.h"

namespace kestrel::models {

int64_t make_divisible(double v, int64_t divisor, int64_t min_value) {
  if (min_value <= 0) min_value = divisor;
  int64_t rounded = static_cast<int64_t>(v + divisor / 2.0) / divisor * divisor;
  rounded = std::max(min_value, rounded);
  if (static_cast<double>(rounded) < 0.9 * v) rounded += divisor;
  return rounded;
}

int64_t scale_depth(int64_t n, double depth_mult) {
  return static_cast<int64_t>(std::ceil(static_cast<double>(n) * depth_mult));
}

ConvBNAct::ConvBNAct(int64_t in, int64_t out, int64_t kernel, ConvSpec spec, Activation act, BNConfig bn_cfg,
                     const std::string& conv_name, const std::string& bn_name)
    : act(act), bn_name_(bn_name) {
  nn::Conv2dOptions o;
  o.stride = spec.stride;
  o.padding = (kernel - 1) / 2 * spec.dilation;
  o.dilation = spec.dilation;
  o.groups = spec.groups;
  o.bias = spec.bias;
  conv = register_module(conv_name, std::make_shared<nn::Conv2d>(in, out, kernel, o));
  bn = register_module(bn_name, std::make_shared<nn::BatchNorm2d>(out, bn_cfg.eps, bn_cfg.momentum));
}

Tensor ConvBNAct::forward(const Tensor& x) { return forward_residual(x, Tensor()); }

namespace {

// A conv with its norm folded in, as a stage of a convolution chain.
ConvStage inference_stage(const nn::Conv2d& conv) { return {conv.weight, conv.bias, conv.params, conv.fused_act}; }

}  // namespace

bool folded_without_quantization(const ConvBNAct& layer) {
  return layer.bn->folded_for_inference() && !layer.conv->quant.enabled;
}

Tensor banded_block_inference(const Tensor& x, const ConvBNAct* expand, const ConvBNAct& depthwise,
                              const SqueezeExcite* se, const nn::Conv2d& project, bool project_folded,
                              bool residual) {
  if (depthwise.is_training() || !project_folded || project.quant.enabled ||
      !folded_without_quantization(depthwise) || (expand != nullptr && !folded_without_quantization(*expand)) ||
      (se != nullptr && se->through_modules))
    return Tensor();
  const ConvStage d = inference_stage(*depthwise.conv), p = inference_stage(project);
  const ConvStage e = expand != nullptr ? inference_stage(*expand->conv) : ConvStage{};
  const ConvStage* ep = expand != nullptr ? &e : nullptr;
  SqueezeExciteStage s;
  if (se != nullptr) s = {se->reduce->weight, se->reduce->bias, se->expand->weight, se->expand->bias, se->act, se->gate};
  const SqueezeExciteStage* sp = se != nullptr ? &s : nullptr;
  if (!inverted_residual_banded_applies(x, ep, d, sp, p)) return Tensor();
  return inverted_residual_banded(x, ep, d, sp, p, residual ? x : Tensor());
}

Tensor ConvBNAct::forward_residual(const Tensor& x, const Tensor& residual) {
  // Inference of a depthwise layer on CUDA: the batch norm folds into the
  // weights and bias, and the kernel applies them and the activation in its
  // epilogue, one pass over the output instead of two (conv, then BN + act).
  const bool depthwise = conv->params.groups == conv->in_channels && conv->in_channels == conv->out_channels;
  if (depthwise && !bn->folded && !is_training() && !residual.defined() && x.device().is_cuda() &&
      !GradMode::enabled()) {
    const FoldedConv f = fold_batch_norm(*conv, *bn);
    TraceScope scope(bn_name_);
    return conv2d_act(x, f.weight, f.bias, conv->params, act);
  }
  return conv_bn_forward(*conv, *bn, bn_name_.c_str(), x, act, residual);
}

Tensor conv_bn_forward(nn::Conv2d& conv, nn::BatchNorm2d& bn, const char* bn_scope, const Tensor& x, Activation act,
                       const Tensor& residual) {
  if (residual.defined()) {
    conv.takes_residual = true;
    if (bn.folded_for_inference()) {
      bn.check_not_trained_folded();
      return conv.forward_residual(x, residual);
    }
  }
  Tensor y = conv(x);
  TraceScope scope(bn_scope);
  return bn.forward_fused(y, act, residual);
}

SqueezeExcite::SqueezeExcite(int64_t channels, int64_t squeeze, Activation act, Activation gate, SENames names)
    : act(act), gate(gate) {
  reduce = register_module(names.reduce, std::make_shared<nn::Conv2d>(channels, squeeze, 1));
  expand = register_module(names.expand, std::make_shared<nn::Conv2d>(squeeze, channels, 1));
}

// One op: the fused kernels on CUDA, the same composition as before on the CPU.
// The ops run in this module's trace scope, not in fc1's and fc2's.
Tensor SqueezeExcite::forward(const Tensor& x) {
  if (!through_modules) return squeeze_excite(x, reduce->weight, reduce->bias, expand->weight, expand->bias, act, gate);
  const Tensor s = activation((*reduce)(global_avg_pool(x)), act);
  return mul(x, activation((*expand)(s), gate));
}

FoldedConv fold_batch_norm(const nn::Conv2d& conv, const nn::BatchNorm2d& bn) {
  const int64_t out = conv.out_channels;
  const Tensor scale = div(bn.weight, sqrt(add_scalar(bn.running_var, bn.eps)));  // [out]
  const Tensor shifted = conv.bias.defined() ? sub(conv.bias, bn.running_mean) : neg(bn.running_mean);
  return {mul(conv.weight, scale.reshape({out, 1, 1, 1})), add(mul(shifted, scale), bn.bias)};
}

Tensor MaxPool2d::forward(const Tensor& x) { return max_pool2d(x, kernel, stride, padding); }
Tensor AvgPool2d::forward(const Tensor& x) { return avg_pool2d(x, kernel, stride, padding); }

Tensor residual_add(const Tensor& branch, const Tensor& x, double drop_path_prob, bool training) {
  if (drop_path_prob > 0.0 && training) return add(drop_path(branch, drop_path_prob, true, nn::init_generator()), x);
  return add(branch, x);
}

void visit_modules(Module& root, const std::function<void(Module&, const std::string&)>& f,
                   const std::string& path) {
  f(root, path);
  for (auto& [name, child] : root.named_children())
    visit_modules(*child, f, path.empty() || name.empty() ? path + name : path + "." + name);
}

namespace {
void fill_normal(Tensor& t, double stddev) {
  NoGradGuard g;
  t.copy_(mul_scalar(Tensor::randn(t.shape(), nn::init_generator(), t.dtype()), stddev));
}

void fill_uniform(Tensor& t, double bound) {
  NoGradGuard g;
  Tensor u = Tensor::rand(t.shape(), nn::init_generator(), t.dtype());
  t.copy_(add_scalar(mul_scalar(u, 2.0 * bound), -bound));
}
}  // namespace

void init_weights(Module& root, LinearInit linear, bool conv_fan_out) {
  visit_modules(root, [&](Module& m, const std::string&) {
    if (auto* c = dynamic_cast<nn::Conv2d*>(&m)) {
      // kaiming normal, gain sqrt(2): PyTorch's fan_out = out * k * k, fan_in = in/groups * k * k.
      const int64_t k2 = c->kernel_size * c->kernel_size;
      const int64_t fan = conv_fan_out ? c->out_channels * k2 : c->in_channels / c->params.groups * k2;
      fill_normal(c->weight, std::sqrt(2.0 / static_cast<double>(fan)));
      if (c->bias.defined()) c->bias.fill_(0.0);
    } else if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(&m)) {
      bn->weight.fill_(1.0);
      bn->bias.fill_(0.0);
    } else if (auto* l = dynamic_cast<nn::Linear*>(&m)) {
      switch (linear) {
        case LinearInit::Normal001:
          fill_normal(l->weight, 0.01);
          break;
        case LinearInit::UniformFanOut:
          fill_uniform(l->weight, 1.0 / std::sqrt(static_cast<double>(l->out_features)));
          break;
        case LinearInit::ZeroBias:
        case LinearInit::Default:
          break;
      }
      if (linear != LinearInit::Default && l->bias.defined()) l->bias.fill_(0.0);
    }
  });
}

void check_common_options(const std::string& model, const ModelOptions& o) {
  KCHECK(!o.num_classes || *o.num_classes > 0, ValueError, model, ": num_classes must be positive, got ",
         o.num_classes.value_or(0));
  KCHECK(o.width_mult > 0.0 && std::isfinite(o.width_mult), ValueError, model,
         ": width_mult must be positive, got ", o.width_mult);
  KCHECK(o.depth_mult > 0.0 && std::isfinite(o.depth_mult), ValueError, model,
         ": depth_mult must be positive, got ", o.depth_mult);
  KCHECK(!o.dropout || (*o.dropout >= 0.0 && *o.dropout < 1.0), ValueError, model,
         ": dropout must be in [0, 1), got ", o.dropout.value_or(0));
  KCHECK(!o.drop_path || (*o.drop_path >= 0.0 && *o.drop_path < 1.0), ValueError, model,
         ": drop_path must be in [0, 1), got ", o.drop_path.value_or(0));
  KCHECK(o.in_channels > 0, ValueError, model, ": in_channels must be positive, got ", o.in_channels);
}

}  // namespace kestrel::models
