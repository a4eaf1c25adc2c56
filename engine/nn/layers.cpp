#include "engine/nn/layers.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/gpu/norm.h"
#include "engine/ops/check.h"
#include "engine/ops/dropout.h"
#include "engine/ops/linear.h"
#include "engine/ops/pool.h"

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

Tensor Conv2d::forward(const Tensor& x) { return conv2d(x, weight, bias, params); }

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

Tensor BatchNorm2d::forward_fused(const Tensor& x, Activation act, const Tensor& residual) {
  BatchNormParams p;
  p.training = is_training();
  p.momentum = momentum;
  p.eps = eps;
  if (p.training) count_batch(num_batches_tracked);
  if (act == Activation::None && !residual.defined())
    return batch_norm(x, weight, bias, running_mean, running_var, p);
  return batch_norm_act(x, weight, bias, running_mean, running_var, p, act, residual);
}

Linear::Linear(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  KCHECK(in > 0 && out > 0, ValueError, "Linear: features must be positive (in=", in, ", out=", out, ")");
  weight = register_parameter("weight", uniform_init({out, in}, in));
  if (has_bias) bias = register_parameter("bias", uniform_init({out}, in));
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

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
