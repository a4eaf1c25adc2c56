#include "models/efficientnet.h"

#include "engine/ops/dropout.h"
#include "engine/ops/pool.h"

namespace kestrel::models {

namespace {

// EfficientNet-B0, paper Table 1 (stages 2-8): MBConv expand ratio, kernel,
// stride, input channels, output channels, layers. Stem 3x3/2 to 32, head 1x1 to 1280.
struct MBConvStage {
  int64_t expand, kernel, stride, in, out, layers;
};
constexpr MBConvStage kB0Stages[] = {
    {1, 3, 1, 32, 16, 1},  {6, 3, 2, 16, 24, 2},  {6, 5, 2, 24, 40, 2},   {6, 3, 2, 40, 80, 3},
    {6, 5, 1, 80, 112, 3}, {6, 5, 2, 112, 192, 4}, {6, 3, 1, 192, 320, 1},
};

// expand 1x1 (when ratio > 1) -> depthwise kxk -> SE (squeeze to in/4) -> project 1x1;
// residual with stochastic depth when the shape is kept. Children "block.N".
class MBConv : public Module {
 public:
  MBConv(int64_t in, int64_t out, int64_t expand, int64_t kernel, int64_t stride, double drop_path, BNConfig bn)
      : residual_(stride == 1 && in == out), drop_path_(drop_path) {
    const int64_t mid = make_divisible(static_cast<double>(in * expand));
    block_ = register_module("block", std::make_shared<nn::Sequential>());
    if (mid != in) {
      expand_ = std::make_shared<ConvBNAct>(in, mid, 1, ConvSpec{}, Activation::SiLU, bn);
      block_->push_back(expand_);
    }
    dw_ = std::make_shared<ConvBNAct>(mid, mid, kernel, ConvSpec{stride, mid}, Activation::SiLU, bn);
    se_ = std::make_shared<SqueezeExcite>(mid, std::max<int64_t>(1, in / 4), Activation::SiLU, Activation::Sigmoid);
    project_ = std::make_shared<ConvBNAct>(mid, out, 1, ConvSpec{}, Activation::None, bn);
    for (const ModulePtr& m : std::initializer_list<ModulePtr>{dw_, se_, project_}) block_->push_back(m);
  }
  Tensor forward(const Tensor& x) override {
    // Fused for inference on the CPU: the convolutions in bands of rows.
    const Tensor banded = banded_block_inference(x, expand_.get(), *dw_, se_.get(), *project_->conv,
                                                 project_->bn->folded_for_inference(), residual_);
    if (banded.defined()) return banded;
    Tensor y = (*block_)(x);
    return residual_ ? residual_add(y, x, drop_path_, is_training()) : y;
  }
  std::string type_name() const override { return "MBConv"; }

 private:
  std::shared_ptr<nn::Sequential> block_;
  std::shared_ptr<ConvBNAct> expand_, dw_, project_;
  std::shared_ptr<SqueezeExcite> se_;
  bool residual_;
  double drop_path_;
};

class EfficientNet : public Module {
 public:
  EfficientNet(const EfficientNetVariant& v, const ModelOptions& o) {
    const double width = v.width * o.width_mult, depth = v.depth * o.depth_mult;
    const BNConfig bn = v.tf_bn ? kTfBN : BNConfig{};
    auto ch = [&](int64_t c) { return make_divisible(static_cast<double>(c) * width); };

    int64_t total_blocks = 0;
    for (const MBConvStage& s : kB0Stages) total_blocks += scale_depth(s.layers, depth);
    const double drop_path = o.drop_path_or(0.2);

    features_ = register_module("features", std::make_shared<nn::Sequential>());
    features_->push_back(std::make_shared<ConvBNAct>(o.in_channels, ch(kB0Stages[0].in), 3,
                                                     ConvSpec{o.cifar_stem ? 1 : 2}, Activation::SiLU, bn));
    int64_t block_id = 0;
    bool first_downsample = true;
    for (const MBConvStage& s : kB0Stages) {
      auto stage = std::make_shared<nn::Sequential>();
      int64_t in = ch(s.in);
      int64_t stride = s.stride;
      if (stride == 2 && first_downsample) {
        first_downsample = false;
        if (o.cifar_stem) stride = 1;
      }
      for (int64_t i = 0, n = scale_depth(s.layers, depth); i < n; ++i) {
        // Stochastic depth grows linearly with the block's index in the whole network.
        const double p = drop_path * static_cast<double>(block_id++) / static_cast<double>(total_blocks);
        stage->push_back(std::make_shared<MBConv>(in, ch(s.out), s.expand, s.kernel, i == 0 ? stride : 1, p, bn));
        in = ch(s.out);
      }
      features_->push_back(stage);
    }
    const int64_t last = ch(kB0Stages[6].out);
    features_->push_back(std::make_shared<ConvBNAct>(last, 4 * last, 1, ConvSpec{}, Activation::SiLU, bn));
    classifier_ = register_module("classifier", std::make_shared<nn::Sequential>());
    classifier_->push_back(std::make_shared<nn::Dropout>(o.dropout_or(v.dropout)));
    classifier_->push_back(std::make_shared<nn::Linear>(4 * last, o.classes_or(1000)));
    init_weights(*this, LinearInit::UniformFanOut, true);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*features_)(x);
    h = global_avg_pool(h);
    return (*classifier_)(h.reshape({h.size(0), h.size(3)}));
  }
  std::string type_name() const override { return "EfficientNet"; }

 private:
  std::shared_ptr<nn::Sequential> features_, classifier_;
};

}  // namespace

const std::vector<EfficientNetVariant>& efficientnet_variants() {
  // Width, depth, resolution and dropout of the paper's B0-B7 (as released).
  static const std::vector<EfficientNetVariant> v = {
      {"efficientnet_b0", 1.0, 1.0, 224, 0.2, false}, {"efficientnet_b1", 1.0, 1.1, 240, 0.2, false},
      {"efficientnet_b2", 1.1, 1.2, 260, 0.3, false}, {"efficientnet_b3", 1.2, 1.4, 300, 0.3, false},
      {"efficientnet_b4", 1.4, 1.8, 380, 0.4, false}, {"efficientnet_b5", 1.6, 2.2, 456, 0.4, true},
      {"efficientnet_b6", 1.8, 2.6, 528, 0.5, true},  {"efficientnet_b7", 2.0, 3.1, 600, 0.5, true},
  };
  return v;
}

ModulePtr build_efficientnet(int index, const ModelOptions& o) {
  const auto& v = efficientnet_variants();
  KCHECK(index >= 0 && index < static_cast<int>(v.size()), ValueError, "efficientnet: no variant b", index,
         " (valid: b0..b7)");
  return std::make_shared<EfficientNet>(v[static_cast<size_t>(index)], o);
}

}  // namespace kestrel::models
