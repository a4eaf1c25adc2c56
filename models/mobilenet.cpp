#include "models/mobilenet.h"

#include <cmath>

#include "engine/ops/pool.h"

namespace kestrel::models {

namespace {

Tensor pool_flatten(const Tensor& x) {
  Tensor h = global_avg_pool(x);
  return h.reshape({h.size(0), h.size(3)});
}

// ---------------------------------------------------------------- MobileNetV2

// Paper Table 2: expansion t, channels c, repeats n, first stride s.
struct V2Stage {
  int64_t t, c, n, s;
};
constexpr V2Stage kV2Stages[] = {
    {1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2}, {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1},
};

// expand 1x1 (t > 1) -> depthwise 3x3 -> linear 1x1 projection; children "conv.N".
class InvertedResidualV2 : public Module {
 public:
  InvertedResidualV2(int64_t in, int64_t out, int64_t stride, int64_t t) : residual_(stride == 1 && in == out) {
    const int64_t hidden = in * t;
    conv_ = register_module("conv", std::make_shared<nn::Sequential>());
    if (t != 1) expand_ = std::make_shared<ConvBNAct>(in, hidden, 1, ConvSpec{}, Activation::ReLU6);
    if (expand_) conv_->push_back(expand_);
    dw_ = std::make_shared<ConvBNAct>(hidden, hidden, 3, ConvSpec{stride, hidden}, Activation::ReLU6);
    conv_->push_back(dw_);
    nn::Conv2dOptions pw;
    pw.bias = false;
    project_ = std::make_shared<nn::Conv2d>(hidden, out, 1, pw);
    project_bn_ = std::make_shared<nn::BatchNorm2d>(out);
    conv_->push_back(project_);
    conv_->push_back(project_bn_);
  }
  Tensor forward(const Tensor& x) override {
    // Fused for inference on the CPU: the three convolutions in bands of rows.
    const Tensor banded =
        banded_block_inference(x, expand_.get(), *dw_, nullptr, *project_, project_bn_->folded_for_inference(),
                               residual_);
    if (banded.defined()) return banded;
    Tensor y = (*conv_)(x);
    return residual_ ? add(x, y) : y;
  }
  std::string type_name() const override { return "InvertedResidual"; }

 private:
  std::shared_ptr<nn::Sequential> conv_;
  std::shared_ptr<ConvBNAct> expand_, dw_;
  std::shared_ptr<nn::Conv2d> project_;
  std::shared_ptr<nn::BatchNorm2d> project_bn_;
  bool residual_;
};

class MobileNetV2 : public Module {
 public:
  explicit MobileNetV2(const ModelOptions& o) {
    const double w = o.width_mult;
    int64_t in = make_divisible(32 * w);
    const int64_t last = make_divisible(1280 * std::max(1.0, w));
    features_ = register_module("features", std::make_shared<nn::Sequential>());
    features_->push_back(
        std::make_shared<ConvBNAct>(o.in_channels, in, 3, ConvSpec{o.cifar_stem ? 1 : 2}, Activation::ReLU6));
    bool first_downsample = true;
    for (const V2Stage& st : kV2Stages) {
      const int64_t out = make_divisible(static_cast<double>(st.c) * w);
      int64_t stride = st.s;
      if (stride == 2 && first_downsample) {
        first_downsample = false;
        if (o.cifar_stem) stride = 1;
      }
      for (int64_t i = 0, n = scale_depth(st.n, o.depth_mult); i < n; ++i) {
        features_->push_back(std::make_shared<InvertedResidualV2>(in, out, i == 0 ? stride : 1, st.t));
        in = out;
      }
    }
    features_->push_back(std::make_shared<ConvBNAct>(in, last, 1, ConvSpec{}, Activation::ReLU6));
    classifier_ = register_module("classifier", std::make_shared<nn::Sequential>());
    classifier_->push_back(std::make_shared<nn::Dropout>(o.dropout_or(0.2)));
    classifier_->push_back(std::make_shared<nn::Linear>(last, o.classes_or(1000)));
    init_weights(*this, LinearInit::Normal001, true);
  }
  Tensor forward(const Tensor& x) override { return (*classifier_)(pool_flatten((*features_)(x))); }
  std::string type_name() const override { return "MobileNetV2"; }

 private:
  std::shared_ptr<nn::Sequential> features_, classifier_;
};

// ---------------------------------------------------------------- MobileNetV3

// Paper Tables 1 and 2, one row per bneck: input, kernel, expansion size,
// output, SE, activation (hard-swish or ReLU), stride.
struct V3Block {
  int64_t in, kernel, expanded, out;
  bool se, hswish;
  int64_t stride;
};
constexpr V3Block kV3Large[] = {
    {16, 3, 16, 16, false, false, 1},   {16, 3, 64, 24, false, false, 2},   {24, 3, 72, 24, false, false, 1},
    {24, 5, 72, 40, true, false, 2},    {40, 5, 120, 40, true, false, 1},   {40, 5, 120, 40, true, false, 1},
    {40, 3, 240, 80, false, true, 2},   {80, 3, 200, 80, false, true, 1},   {80, 3, 184, 80, false, true, 1},
    {80, 3, 184, 80, false, true, 1},   {80, 3, 480, 112, true, true, 1},   {112, 3, 672, 112, true, true, 1},
    {112, 5, 672, 160, true, true, 2},  {160, 5, 960, 160, true, true, 1},  {160, 5, 960, 160, true, true, 1},
};
constexpr V3Block kV3Small[] = {
    {16, 3, 16, 16, true, false, 2},  {16, 3, 72, 24, false, false, 2}, {24, 3, 88, 24, false, false, 1},
    {24, 5, 96, 40, true, true, 2},   {40, 5, 240, 40, true, true, 1},  {40, 5, 240, 40, true, true, 1},
    {40, 5, 120, 48, true, true, 1},  {48, 5, 144, 48, true, true, 1},  {48, 5, 288, 96, true, true, 2},
    {96, 5, 576, 96, true, true, 1},  {96, 5, 576, 96, true, true, 1},
};
constexpr int64_t kV3LargeLastChannel = 1280, kV3SmallLastChannel = 1024;

// expand 1x1 (when widths differ) -> depthwise -> SE (ReLU, hard-sigmoid gate,
// squeeze to expanded/4 rounded to 8) -> linear 1x1; children "block.N".
class InvertedResidualV3 : public Module {
 public:
  InvertedResidualV3(int64_t in, int64_t kernel, int64_t mid, int64_t out, bool se, bool hswish, int64_t stride)
      : residual_(stride == 1 && in == out) {
    const Activation act = hswish ? Activation::HardSwish : Activation::ReLU;
    block_ = register_module("block", std::make_shared<nn::Sequential>());
    if (mid != in) expand_ = std::make_shared<ConvBNAct>(in, mid, 1, ConvSpec{}, act, kTfBN);
    if (expand_) block_->push_back(expand_);
    dw_ = std::make_shared<ConvBNAct>(mid, mid, kernel, ConvSpec{stride, mid}, act, kTfBN);
    block_->push_back(dw_);
    if (se) {
      se_ = std::make_shared<SqueezeExcite>(mid, make_divisible(static_cast<double>(mid / 4)), Activation::ReLU,
                                            Activation::HardSigmoid);
      block_->push_back(se_);
    }
    project_ = std::make_shared<ConvBNAct>(mid, out, 1, ConvSpec{}, Activation::None, kTfBN);
    block_->push_back(project_);
  }
  Tensor forward(const Tensor& x) override {
    // Fused for inference on the CPU: the convolutions in bands of rows.
    const Tensor banded = banded_block_inference(x, expand_.get(), *dw_, se_.get(), *project_->conv,
                                                 project_->bn->folded_for_inference(), residual_);
    if (banded.defined()) return banded;
    Tensor y = (*block_)(x);
    return residual_ ? add(y, x) : y;
  }
  std::string type_name() const override { return "InvertedResidual"; }

 private:
  std::shared_ptr<nn::Sequential> block_;
  std::shared_ptr<ConvBNAct> expand_, dw_, project_;
  std::shared_ptr<SqueezeExcite> se_;
  bool residual_;
};

class MobileNetV3 : public Module {
 public:
  MobileNetV3(bool large, const ModelOptions& o) {
    const double w = o.width_mult;
    auto ch = [&](int64_t c) { return make_divisible(static_cast<double>(c) * w); };
    const V3Block* blocks = large ? kV3Large : kV3Small;
    const size_t n = large ? std::size(kV3Large) : std::size(kV3Small);
    features_ = register_module("features", std::make_shared<nn::Sequential>());
    features_->push_back(std::make_shared<ConvBNAct>(o.in_channels, ch(blocks[0].in), 3,
                                                     ConvSpec{o.cifar_stem ? 1 : 2}, Activation::HardSwish, kTfBN));
    bool first_downsample = true;
    for (size_t i = 0; i < n; ++i) {
      const V3Block& b = blocks[i];
      int64_t stride = b.stride;
      if (stride == 2 && first_downsample) {
        first_downsample = false;
        if (o.cifar_stem) stride = 1;
      }
      features_->push_back(std::make_shared<InvertedResidualV3>(ch(b.in), b.kernel, ch(b.expanded), ch(b.out), b.se,
                                                                b.hswish, stride));
    }
    const int64_t last_in = ch(blocks[n - 1].out), last_conv = 6 * last_in;
    const int64_t last = ch(large ? kV3LargeLastChannel : kV3SmallLastChannel);
    features_->push_back(std::make_shared<ConvBNAct>(last_in, last_conv, 1, ConvSpec{}, Activation::HardSwish, kTfBN));
    classifier_ = register_module("classifier", std::make_shared<nn::Sequential>());
    classifier_->push_back(std::make_shared<nn::Linear>(last_conv, last));
    classifier_->push_back(std::make_shared<nn::Act>(Activation::HardSwish));
    classifier_->push_back(std::make_shared<nn::Dropout>(o.dropout_or(0.2)));
    classifier_->push_back(std::make_shared<nn::Linear>(last, o.classes_or(1000)));
    init_weights(*this, LinearInit::Normal001, true);
  }
  Tensor forward(const Tensor& x) override { return (*classifier_)(pool_flatten((*features_)(x))); }
  std::string type_name() const override { return "MobileNetV3"; }

 private:
  std::shared_ptr<nn::Sequential> features_, classifier_;
};

}  // namespace

ModulePtr build_mobilenet_v2(const ModelOptions& o) { return std::make_shared<MobileNetV2>(o); }

ModulePtr build_mobilenet_v3(bool large, const ModelOptions& o) {
  KCHECK(o.depth_mult == 1.0, ValueError, large ? "mobilenet_v3_large" : "mobilenet_v3_small",
         ": depth_mult is not supported (the paper's table lists every block; got ", o.depth_mult, ")");
  return std::make_shared<MobileNetV3>(large, o);
}

}  // namespace kestrel::models
