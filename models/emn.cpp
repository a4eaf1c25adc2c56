#include "models/emn.h"

#include "engine/ops/attention.h"
#include "engine/ops/pool.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"
#include "models/ghostnet.h"

namespace kestrel::models {

namespace {
constexpr Activation RE = Activation::ReLU;
constexpr Activation HS = Activation::HardSwish;
constexpr int64_t kDilations[] = {1, 2, 3};  // multi-scale feature aggregation branches
}  // namespace

const std::vector<EMNVariant>& emn_variants() {
  // Small follows the seed's stage plan; Tiny and Base change widths and
  // expansions so the totals land on the published sizes (docs/models.md).
  static const std::vector<EMNVariant> v = {
      {"emn_tiny", 16,
       {{16, 1, 1, 1.0, 3, RE},
        {24, 2, 2, 4.0, 3, RE},
        {32, 3, 2, 4.0, 5, RE},
        {64, 4, 2, 3.0, 3, HS},
        {96, 3, 1, 3.0, 5, HS},
        {144, 3, 2, 3.0, 5, HS}},
       1280, 0.75e6},
      {"emn_small", 16,
       {{16, 1, 1, 1.0, 3, RE},
        {24, 2, 2, 4.0, 3, RE},
        {48, 3, 2, 4.0, 5, RE},
        {96, 4, 2, 6.0, 3, HS},
        {136, 3, 1, 6.0, 5, HS},
        {224, 3, 2, 6.0, 5, HS}},
       1280, 2.65e6},
      {"emn_base", 24,
       {{24, 1, 1, 1.0, 3, RE},
        {32, 2, 2, 4.0, 3, RE},
        {64, 3, 2, 4.0, 5, RE},
        {128, 4, 2, 6.0, 3, HS},
        {208, 3, 1, 6.0, 5, HS},
        {384, 3, 2, 6.0, 5, HS}},
       1280, 6.3e6},
  };
  return v;
}

CoordinateAttention::CoordinateAttention(int64_t channels, int64_t reduction) {
  const int64_t mip = std::max<int64_t>(8, channels / reduction);
  conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(channels, mip, 1));
  bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(mip));
  conv_h_ = register_module("conv_h", std::make_shared<nn::Conv2d>(mip, channels, 1));
  conv_w_ = register_module("conv_w", std::make_shared<nn::Conv2d>(mip, channels, 1));
}

namespace {
bool fused_kernel_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }
}  // namespace

// The fused kernel (coord_attention op) folds bn1 into conv1, which is exact
// only with BN's running statistics: it runs in eval mode on CUDA. Training
// normalizes with batch statistics, so it keeps the composed path (as does
// the CPU, whose results stay those of the composition).
bool CoordinateAttention::can_fuse(const Tensor& x) const {
  const DType p = conv1_->weight.dtype();
  return x.device().is_cuda() && !bn1_->folded && !bn1_->is_training() && fused_kernel_dtype(x.dtype()) &&
         p == bn1_->weight.dtype() && (p == x.dtype() || p == DType::F32) && conv_h_->weight.dtype() == p &&
         conv_w_->weight.dtype() == p;
}

Tensor CoordinateAttention::forward(const Tensor& x) {
  if (can_fuse(x)) {
    const FoldedConv f = fold_batch_norm(*conv1_, *bn1_);
    return coord_attention(x, f.weight, f.bias, conv_h_->weight, conv_h_->bias, conv_w_->weight, conv_w_->bias,
                           Activation::HardSwish);
  }
  const int64_t h = x.size(1), w = x.size(2);
  Tensor y = (*conv1_)(coord_pool(x));  // [N,H+W,1,C]: the rows' means, then the columns'
  {
    TraceScope s("bn1");
    y = bn1_->forward_fused(y, Activation::HardSwish);
  }
  std::vector<Tensor> parts = split(y, {h, w}, 1);
  Tensor gate_h = sigmoid((*conv_h_)(parts[0]));                                       // [N,H,1,C]
  Tensor gate_w = sigmoid((*conv_w_)(parts[1].permute({0, 2, 1, 3}).contiguous()));  // [N,1,W,C]
  return coord_gate(x, gate_h, gate_w);
}

namespace {

// Inverted residual attention block: ghost expansion -> depthwise kxk ->
// coordinate attention -> ghost projection (linear), residual when shapes allow.
class IRABlock : public Module {
 public:
  IRABlock(int64_t in, int64_t out, double expand, int64_t kernel, int64_t stride, Activation act, double drop_path)
      : residual_(stride == 1 && in == out), drop_path_(drop_path) {
    const int64_t mid = make_divisible(static_cast<double>(in) * expand);
    if (mid != in) expand_ = register_module("ghost1", std::make_shared<GhostModule>(in, mid, act));
    dw_ = register_module("dw", std::make_shared<ConvBNAct>(mid, mid, kernel, ConvSpec{stride, mid}, act));
    ca_ = register_module("ca", std::make_shared<CoordinateAttention>(mid));
    project_ = register_module("ghost2", std::make_shared<GhostModule>(mid, out, Activation::None));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = expand_ ? (*expand_)(x) : x;
    h = (*project_)((*ca_)((*dw_)(h)));
    return residual_ ? residual_add(h, x, drop_path_, is_training()) : h;
  }
  std::string type_name() const override { return "IRABlock"; }

 private:
  std::shared_ptr<GhostModule> expand_, project_;
  std::shared_ptr<ConvBNAct> dw_;
  std::shared_ptr<CoordinateAttention> ca_;
  bool residual_;
  double drop_path_;
};

// Parallel depthwise 3x3 branches at dilation 1, 2, 3 (+BN), concatenated and
// fused back to `channels` by a 1x1 conv + BN + hard-swish.
class MultiScaleAggregation : public Module {
 public:
  explicit MultiScaleAggregation(int64_t channels) {
    branches_ = register_module("branches", std::make_shared<nn::Sequential>());
    for (int64_t d : kDilations)
      branches_->push_back(
          std::make_shared<ConvBNAct>(channels, channels, 3, ConvSpec{1, channels, d}, Activation::None));
    fuse_ = register_module("fuse", std::make_shared<ConvBNAct>(channels * static_cast<int64_t>(std::size(kDilations)),
                                                                 channels, 1, ConvSpec{}, HS));
  }
  Tensor forward(const Tensor& x) override {
    std::vector<Tensor> outs;
    {
      TraceScope s("branches");
      for (size_t i = 0; i < branches_->size(); ++i) outs.push_back((*(*branches_)[i])(x));
    }
    return (*fuse_)(concat(outs, 3));
  }
  std::string type_name() const override { return "MultiScaleAggregation"; }

 private:
  std::shared_ptr<nn::Sequential> branches_;
  std::shared_ptr<ConvBNAct> fuse_;
};

class EMN : public Module {
 public:
  EMN(const EMNVariant& v, const ModelOptions& o) {
    auto ch = [&](int64_t c) { return make_divisible(static_cast<double>(c) * o.width_mult); };
    const int64_t stem = ch(v.stem);
    stem_ = register_module("stem", std::make_shared<ConvBNAct>(o.in_channels, stem, 3,
                                                                 ConvSpec{o.cifar_stem ? 1 : 2}, HS));
    int64_t total = 0;
    for (const IRAStage& s : v.stages) total += scale_depth(s.repeats, o.depth_mult);
    const double drop_path = o.drop_path_or(0.0);
    stages_ = register_module("stages", std::make_shared<nn::Sequential>());
    int64_t in = stem, index = 0;
    bool first_downsample = true;
    for (const IRAStage& s : v.stages) {
      int64_t stride = s.stride;
      if (stride == 2 && first_downsample) {
        first_downsample = false;
        if (o.cifar_stem) stride = 1;  // 32x32: 32-32-32-16-8-8-4
      }
      auto stage = std::make_shared<nn::Sequential>();
      for (int64_t i = 0, n = scale_depth(s.repeats, o.depth_mult); i < n; ++i) {
        const double p = drop_path * static_cast<double>(index++) / static_cast<double>(total);
        stage->push_back(std::make_shared<IRABlock>(in, ch(s.channels), s.expand, s.kernel, i == 0 ? stride : 1,
                                                    s.act, p));
        in = ch(s.channels);
      }
      stages_->push_back(stage);
    }
    msfa_ = register_module("msfa", std::make_shared<MultiScaleAggregation>(in));
    head_ = register_module("head", std::make_shared<ConvBNAct>(in, v.head, 1, ConvSpec{}, HS));
    classifier_ = register_module("classifier", std::make_shared<nn::Sequential>());
    classifier_->push_back(std::make_shared<nn::Dropout>(o.dropout_or(0.2)));
    classifier_->push_back(std::make_shared<nn::Linear>(v.head, o.classes_or(10)));
    init_weights(*this, LinearInit::Normal001, true);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*head_)((*msfa_)((*stages_)((*stem_)(x))));
    h = global_avg_pool(h);
    return (*classifier_)(h.reshape({h.size(0), h.size(3)}));
  }
  std::string type_name() const override { return "EfficientMicroNet"; }

 private:
  std::shared_ptr<ConvBNAct> stem_, head_;
  std::shared_ptr<nn::Sequential> stages_, classifier_;
  std::shared_ptr<MultiScaleAggregation> msfa_;
};

}  // namespace

ModulePtr build_emn(const std::string& name, const ModelOptions& o) {
  for (const EMNVariant& v : emn_variants())
    if (name == v.name) return std::make_shared<EMN>(v, o);
  throw ValueError("emn: no variant '" + name + "' (valid: emn_tiny, emn_small, emn_base)");
}

}  // namespace kestrel::models
