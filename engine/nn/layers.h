// The basic layers, each holding PyTorch's parameter names.
#pragma once
#include <memory>
#include <vector>

#include "engine/nn/module.h"
#include "engine/ops/conv.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/norm.h"
#include "engine/random.h"

namespace kestrel::nn {

struct Conv2dOptions {
  int64_t stride = 1;
  int64_t padding = 0;
  int64_t dilation = 1;
  int64_t groups = 1;
  bool bias = true;
};

// weight is OHWI [out, k, k, in/groups]; PyTorch's default init (kaiming uniform, a=sqrt(5)).
// Quantization-aware training (engine/nn/quant.h) of a Conv2d or Linear: the
// input, weight and bias are fake-quantized, and the output too unless a
// folded batch norm after the layer quantizes it. Adds the buffers input_range
// and (with quantize_output) output_range.
struct LayerQuantization {
  bool enabled = false;
  bool quantize_output = false;
  Tensor input_range, output_range;
};

class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kernel, Conv2dOptions o = {});
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Conv2d"; }
  void enable_quantization(bool quantize_output);
  // Gives the conv a bias (zeros) if it has none, e.g. to fold a batch norm into.
  void add_bias();
  Tensor weight, bias;
  int64_t in_channels, out_channels, kernel_size;
  Conv2dParams params;
  LayerQuantization quant;
  // Inference with a folded batch norm (models/fuse.h): the activation that
  // followed the norm, applied in the convolution's epilogue (conv2d_act).
  Activation fused_act = Activation::None;
  // act(conv(x) + residual) with fused_act: a folded norm's residual add in
  // the epilogue too. Traced under this module's name, as forward is.
  Tensor forward_residual(const Tensor& x, const Tensor& residual);
  // Set when models::conv_bn_forward gave this conv's norm a residual: the
  // model then routes that residual here, so fusion may fold such a norm.
  bool takes_residual = false;
};

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  Tensor forward(const Tensor& x) override;
  // act(bn(x) + residual) in one fused op.
  Tensor forward_fused(const Tensor& x, Activation act, const Tensor& residual = Tensor());
  // The settings of one forward pass, for an op that runs this norm inside
  // it (ghost_norms); in training it counts the batch (num_batches_tracked).
  BatchNormParams pass_params();
  std::string type_name() const override { return folded ? "BatchNorm2d(folded)" : "BatchNorm2d"; }
  // After the caller has folded this norm into the conv before it: the module
  // keeps only its activation and residual add, and quantizes the conv's
  // output (buffer output_range), after the activation when it is a clamp
  // (none, ReLU, ReLU6) and there is no residual, so int8 runtimes fuse it
  // into the conv, else before. With a residual and a clamp, the sum is
  // quantized too (buffer sum_range), so the add runs as an int8 add.
  void fold_away(bool with_residual);
  // Inference (models/fuse.h): the caller folded this norm, and the
  // activation after it, into the conv before it; the module passes its input
  // through. Eval mode only: training would need the statistics that are gone.
  void fold_for_inference();
  // Folded by fold_for_inference (not by fold_away, which adds output_range).
  bool folded_for_inference() const { return folded && !output_range.defined(); }
  // Throws ValueError when folded for inference and in training mode.
  void check_not_trained_folded() const;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  int64_t channels;
  double eps, momentum;
  bool folded = false;
  Tensor output_range, sum_range;
};

class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Linear"; }
  void enable_quantization(bool quantize_output);
  Tensor weight, bias;
  int64_t in_features, out_features;
  LayerQuantization quant;
};

class Act : public Module {
 public:
  explicit Act(Activation a) : act(a) {}
  Tensor forward(const Tensor& x) override { return activation(x, act); }
  std::string type_name() const override { return activation_name(act); }
  Activation act;
};

class Identity : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
  std::string type_name() const override { return "Identity"; }
};

class Dropout : public Module {
 public:
  explicit Dropout(double p) : p(p) {}
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Dropout"; }
  double p;
};

// [N,H,W,C] -> [N,C]
class GlobalAvgPool : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "GlobalAvgPool"; }
};

// Children named "0", "1", ... as torch.nn.Sequential.
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<ModulePtr> modules);
  void push_back(ModulePtr m);
  // Adds under an explicit name (torchvision's "features.conv0" style).
  void add(const std::string& name, ModulePtr m);
  Tensor forward(const Tensor& x) override;
  size_t size() const { return items_.size(); }
  ModulePtr operator[](size_t i) const { return items_[i]; }
  std::string type_name() const override { return "Sequential"; }

 private:
  std::vector<ModulePtr> items_;
};

// The generator that initializes parameters and drives dropout; seed it for reproducible runs.
Generator& init_generator();

}  // namespace kestrel::nn
