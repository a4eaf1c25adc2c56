// Building blocks shared by the model families: conv-BN-activation, squeeze-and-
// excitation, pooling layers, channel rounding, options and weight init.
//
// Every block takes the child names it registers as data, so one block serves
// torchvision's names ("0", "1", "fc1") and timm's ("conv", "bn1", "conv_reduce").
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "engine/nn/layers.h"
#include "engine/ops/elementwise.h"

namespace kestrel::models {

using nn::Module;
using nn::ModulePtr;

// What every builder accepts. Unset optionals take the family's defaults (the
// paper's dropout, 1000 classes for ImageNet families, 10 for the CIFAR nets).
struct ModelOptions {
  std::optional<int64_t> num_classes;
  double width_mult = 1.0;
  double depth_mult = 1.0;
  std::optional<double> dropout;
  std::optional<double> drop_path;
  // 32x32 / 28x28 inputs: stride-1 stem and no downsampling right after it, so
  // the network's total stride is 8 instead of 32 (32x32 -> 4x4 at the head).
  bool cifar_stem = false;
  int64_t in_channels = 3;

  int64_t classes_or(int64_t fallback) const { return num_classes.value_or(fallback); }
  double dropout_or(double fallback) const { return dropout.value_or(fallback); }
  double drop_path_or(double fallback) const { return drop_path.value_or(fallback); }
};

// The rule train, eval, bench, summary and scale-search share: inputs of 64 px
// and below get the CIFAR stem.
inline bool cifar_stem_for_resolution(int64_t height) { return height <= 64; }

// Round v to the nearest multiple of divisor, never below min_value (divisor when
// 0) and never more than 10% down: the TF/torchvision/timm channel rounding.
int64_t make_divisible(double v, int64_t divisor = 8, int64_t min_value = 0);

// ceil(n * depth_mult): EfficientNet's layer-count scaling.
int64_t scale_depth(int64_t n, double depth_mult);

struct BNConfig {
  double eps = 1e-5;
  double momentum = 0.1;
};
// TensorFlow-trained families (MobileNetV3, EfficientNet-B5..B7 in torchvision).
inline constexpr BNConfig kTfBN{1e-3, 0.01};

struct ConvSpec {
  int64_t stride = 1;
  int64_t groups = 1;
  int64_t dilation = 1;
  bool bias = false;
};

// act(bn(conv(x)) + residual), bn traced under bn_scope; residual may be
// undefined. The way a block gives a norm its residual: after inference
// fusion (models/fuse.h) folded the norm into the conv, the add and the
// activation then run in the conv's epilogue, with no pass of their own.
Tensor conv_bn_forward(nn::Conv2d& conv, nn::BatchNorm2d& bn, const char* bn_scope, const Tensor& x, Activation act,
                       const Tensor& residual);

// conv -> BN -> activation, padding (k-1)/2*dilation, as torchvision's
// Conv2dNormActivation (children "0" conv, "1" BN) unless other names are given.
class ConvBNAct : public Module {
 public:
  ConvBNAct(int64_t in, int64_t out, int64_t kernel, ConvSpec spec, Activation act, BNConfig bn = {},
            const std::string& conv_name = "0", const std::string& bn_name = "1");
  Tensor forward(const Tensor& x) override;
  // act(bn(conv(x)) + residual): the residual add fused into the BN kernel.
  // Depthwise inference on CUDA folds the BN into the conv (conv2d_act).
  Tensor forward_residual(const Tensor& x, const Tensor& residual);
  std::string type_name() const override { return "ConvBNAct"; }

  std::shared_ptr<nn::Conv2d> conv;
  std::shared_ptr<nn::BatchNorm2d> bn;
  Activation act;

 private:
  std::string bn_name_;
};

struct SENames {
  std::string reduce = "fc1";
  std::string expand = "fc2";
};

// Squeeze-and-excitation: x * gate(expand(act(reduce(mean_hw(x))))), both 1x1
// convs with bias. torchvision's SqueezeExcitation layout by default.
class SqueezeExcite : public Module {
 public:
  SqueezeExcite(int64_t channels, int64_t squeeze, Activation act, Activation gate, SENames names = {});
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "SqueezeExcite"; }
  std::shared_ptr<nn::Conv2d> reduce, expand;
  Activation act, gate;
  // Run the two convs as modules rather than one fused op, so that int8
  // quantization (models/quantize.h) reaches them.
  bool through_modules = false;
};

// A convolution followed by an eval-mode batch norm, as one convolution:
// weight * s and (bias - running_mean) * s + beta, s = gamma / sqrt(running_var
// + eps). Built from engine ops, so gradients reach both modules' parameters;
// exact only in eval mode (training BN normalizes with batch statistics).
// Whether models/fuse.h folded this layer's norm into its conv for float
// inference (an int8 layer keeps its norm's output range instead).
bool folded_without_quantization(const ConvBNAct& layer);

// An inverted-residual block at inference on the CPU, [expand ->] depthwise
// [-> squeeze-excite] -> project [+ x], through inverted_residual_banded
// (engine/ops/conv.h): for a model fused for inference (models/fuse.h) whose
// norms are all folded into the convs (project_folded: the projection's) and
// none is quantized. The same outputs as the layers one by one, without the
// expanded tensor going out to memory. Undefined where that does not apply.
Tensor banded_block_inference(const Tensor& x, const ConvBNAct* expand, const ConvBNAct& depthwise,
                              const SqueezeExcite* se, const nn::Conv2d& project, bool project_folded,
                              bool residual);

struct FoldedConv {
  Tensor weight, bias;
};
FoldedConv fold_batch_norm(const nn::Conv2d& conv, const nn::BatchNorm2d& bn);

class MaxPool2d : public Module {
 public:
  MaxPool2d(int64_t kernel, int64_t stride, int64_t padding) : kernel(kernel), stride(stride), padding(padding) {}
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "MaxPool2d"; }
  int64_t kernel, stride, padding;
};

class AvgPool2d : public Module {
 public:
  AvgPool2d(int64_t kernel, int64_t stride, int64_t padding = 0) : kernel(kernel), stride(stride), padding(padding) {}
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "AvgPool2d"; }
  int64_t kernel, stride, padding;
};

// x + drop_path(branch): stochastic depth on a residual branch (identity in eval).
Tensor residual_add(const Tensor& branch, const Tensor& x, double drop_path_prob, bool training);

// Calls f on root and every module under it, depth first, with its dotted
// path ("features.3.conv"; "" for root), the names state_dict and the trace use.
void visit_modules(Module& root, const std::function<void(Module&, const std::string&)>& f,
                   const std::string& path = "");

// Weight initialisation the reference implementations use, applied to every
// Conv2d / BatchNorm2d / Linear under root.
enum class LinearInit {
  Normal001,        // N(0, 0.01), zero bias (MobileNetV2/V3)
  UniformFanOut,    // U(-1/sqrt(out), 1/sqrt(out)), zero bias (EfficientNet)
  ZeroBias,         // keep PyTorch's default weight, zero bias (DenseNet)
  Default,          // PyTorch's default (ResNet, timm GhostNet)
};
void init_weights(Module& root, LinearInit linear = LinearInit::Default, bool conv_fan_out = true);

// Checks the options every family shares; names the model in the message.
void check_common_options(const std::string& model, const ModelOptions& o);

}  // namespace kestrel::models
