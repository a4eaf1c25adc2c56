#include "engine/nn/layers.h"

#include <cmath>
#include <functional>

#include "engine/autograd.h"
#include "engine/gpu/norm.h"
#include "engine/nn/quant.h"
#include "engine/ops/check.h"
#include "engine/ops/dropout.h"
#include "engine/ops/linear.h"
#include "engine/ops/pool.h"
#include "engine/ops/quantize.h"
#include "engine/trace.h"

namespace kestrel::nn {

Generator& init_generator() { return default_generator(); }

namespace {
// U(-bound, bound) with bound = 1/sqrt(fan_in): PyTorch's default for conv and linear.
Tensor uniform_init(const Shape& shape, int64_t fan_in) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
  Tensor u = Tensor::rand(shape, init_generator(), DType::F32);
  NoGradGuard g;
  return add_scalar(mul_scalar(u, 2.0 * bound), -bound);
}
}  // namespace

Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, Conv2dOptions o)
    : in_channels(in), out_channels(out), kernel_size(kernel) {
  KCHECK(in > 0 && out > 0 && kernel > 0, ValueError, "Conv2d: channels and kernel must be positive (in=", in,
         ", out=", out, ", kernel=", kernel, ")");
  KCHECK(o.groups > 0 && in % o.groups == 0 && out % o.groups == 0, ValueError, "Conv2d: groups=", o.groups,
         " must divide in=", in, " and out=", out);
  params.stride_h = params.stride_w = o.stride;
  params.pad_h = params.pad_w = o.padding;
  params.dilation_h = params.dilation_w = o.dilation;
  params.groups = o.groups;
  const int64_t fan_in = (in / o.groups) * kernel * kernel;
  weight = register_parameter("weight", uniform_init({out, kernel, kernel, in / o.groups}, fan_in), true);
  if (o.bias) bias = register_parameter("bias", uniform_init({out}, fan_in));
}

namespace {
// y = op(quantized x, quantized weight, bias on the int32 grid), then the
// output quantized if asked: what an int8 kernel computes.
template <typename Op>
Tensor quantized_forward(const Module& m, LayerQuantization& q, const Tensor& x, const Tensor& weight,
                         const Tensor& bias, Op op) {
  const bool observe = observing_ranges(m);
  const QuantizedActivation xq = quantize_activation(x, q.input_range, observe, "input");
  const Tensor scales = weight_scales(weight);
  const Tensor bq = bias.defined() ? fake_quantize_bias(bias, xq.scale, scales) : bias;
  Tensor y = op(xq.value, fake_quantize_weight(weight, scales), bq);
  return q.quantize_output ? quantize_activation(y, q.output_range, observe, "output").value : y;
}

void enable(Module& m, LayerQuantization& q, bool quantize_output,
            const std::function<Tensor&(const std::string&, Tensor)>& add_buffer) {
  KCHECK(!q.enabled, ValueError, m.type_name(), ": quantization is already enabled");
  q.enabled = true;
  q.quantize_output = quantize_output;
  q.input_range = add_buffer("input_range", unobserved_range());
  if (quantize_output) q.output_range = add_buffer("output_range", unobserved_range());
}
}  // namespace

Tensor Conv2d::forward(const Tensor& x) {
  if (fused_act != Activation::None) return conv2d_act(x, weight, bias, params, fused_act);
  if (!quant.enabled) return conv2d(x, weight, bias, params);
  return quantized_forward(*this, quant, x, weight, bias, [&](const Tensor& xq, const Tensor& wq, const Tensor& bq) {
    return conv2d(xq, wq, bq, params);
  });
}

Tensor Conv2d::forward_residual(const Tensor& x, const Tensor& residual) {
  TraceScope scope(scope_name());
  return conv2d_act(x, weight, bias, params, fused_act, residual);
}

void Conv2d::enable_quantization(bool quantize_output) {
  enable(*this, quant, quantize_output, [&](const std::string& n, Tensor t) -> Tensor& {
    return register_buffer(n, t.to(weight.device()));
  });
}

void Conv2d::add_bias() {
  if (!bias.defined()) bias = register_parameter("bias", Tensor::zeros({out_channels}, weight.dtype(), weight.device()));
}

BatchNorm2d::BatchNorm2d(int64_t c, double eps, double momentum) : channels(c), eps(eps), momentum(momentum) {
  KCHECK(c > 0, ValueError, "BatchNorm2d: channels must be positive, got ", c);
  weight = register_parameter("weight", Tensor::ones({c}));
  bias = register_parameter("bias", Tensor::zeros({c}));
  running_mean = register_buffer("running_mean", Tensor::zeros({c}));
  running_var = register_buffer("running_var", Tensor::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::I64));
}

namespace {
// num_batches_tracked += 1 where the buffer lives (no host round trip on CUDA).
void count_batch(const Tensor& counter) {
  if constexpr (kHaveCuda) {
    if (counter.device().is_cuda()) return gpu::increment_counter(counter);
  }
  *counter.data<int64_t>() += 1;
}
}  // namespace

Tensor BatchNorm2d::forward(const Tensor& x) { return forward_fused(x, Activation::None); }

void BatchNorm2d::fold_away(bool with_residual) {
  KCHECK(!folded, ValueError, "BatchNorm2d: already folded");
  const Device device = running_mean.device();
  clear_tensors();
  weight = bias = running_mean = running_var = num_batches_tracked = Tensor();
  folded = true;
  output_range = register_buffer("output_range", unobserved_range().to(device));
  if (with_residual) sum_range = register_buffer("sum_range", unobserved_range().to(device));
}

void BatchNorm2d::fold_for_inference() {
  KCHECK(!folded, ValueError, "BatchNorm2d: already folded");
  clear_tensors();
  weight = bias = running_mean = running_var = num_batches_tracked = Tensor();
  folded = true;
}

void BatchNorm2d::check_not_trained_folded() const {
  KCHECK(!(folded_for_inference() && is_training()), ValueError,
         "BatchNorm2d: folded into its convolution for inference; build the model again to train it");
}

Tensor BatchNorm2d::forward_fused(const Tensor& x, Activation act, const Tensor& residual) {
  if (folded_for_inference()) {  // its activation moved into the conv too
    check_not_trained_folded();
    KCHECK(!residual.defined(), ValueError, "BatchNorm2d: folded for inference but given a residual");
    return x;
  }
  if (folded) {
    const bool observe = observing_ranges(*this);
    const bool clamp = act == Activation::None || act == Activation::ReLU || act == Activation::ReLU6;
    if (clamp && !residual.defined())
      return quantize_activation(activation(x, act), output_range, observe, "output").value;
    Tensor y = quantize_activation(x, output_range, observe, "output").value;
    if (!residual.defined()) return activation(y, act);
    KCHECK(sum_range.defined(), ValueError, "BatchNorm2d: folded without a residual but given one");
    y = activation(add(y, residual), act);
    return clamp ? quantize_activation(y, sum_range, observe, "sum").value : y;
  }
  const BatchNormParams p = pass_params();
  if (act == Activation::None && !residual.defined())
    return batch_norm(x, weight, bias, running_mean, running_var, p);
  return batch_norm_act(x, weight, bias, running_mean, running_var, p, act, residual);
}

BatchNormParams BatchNorm2d::pass_params() {
  BatchNormParams p;
  p.training = is_training();
  p.momentum = momentum;
  p.eps = eps;
  if (p.training) count_batch(num_batches_tracked);
  return p;
}

Linear::Linear(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  KCHECK(in > 0 && out > 0, ValueError, "Linear: features must be positive (in=", in, ", out=", out, ")");
  weight = register_parameter("weight", uniform_init({out, in}, in));
  if (has_bias) bias = register_parameter("bias", uniform_init({out}, in));
}

Tensor Linear::forward(const Tensor& x) {
  if (!quant.enabled) return linear(x, weight, bias);
  return quantized_forward(*this, quant, x, weight, bias,
                           [](const Tensor& xq, const Tensor& wq, const Tensor& bq) { return linear(xq, wq, bq); });
}

void Linear::enable_quantization(bool quantize_output) {
  enable(*this, quant, quantize_output, [&](const std::string& n, Tensor t) -> Tensor& {
    return register_buffer(n, t.to(weight.device()));
  });
}

Tensor Dropout::forward(const Tensor& x) { return dropout(x, p, is_training(), init_generator()); }

Tensor GlobalAvgPool::forward(const Tensor& x) {
  Tensor pooled = global_avg_pool(x);
  return pooled.reshape({pooled.size(0), pooled.size(3)});
}

Sequential::Sequential(std::vector<ModulePtr> modules) {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(ModulePtr m) { add(std::to_string(items_.size()), std::move(m)); }

void Sequential::add(const std::string& name, ModulePtr m) {
  register_module(name, m);
  items_.push_back(std::move(m));
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& m : items_) h = (*m)(h);
  return h;
}

}  // namespace kestrel::nn
