#include "models/cifar_net.h"

#include <cmath>

#include "engine/ops/pool.h"
#include "engine/trace.h"

namespace kestrel::models {

namespace {

// Stem 3x3 (3->20) + BN + ReLU, then four layers of two blocks each.
constexpr int64_t kStem = 20;
struct CifarLayer {
  int64_t out, stride, blocks;
};
constexpr CifarLayer kLayers[] = {{20, 1, 2}, {40, 2, 2}, {80, 2, 2}, {160, 2, 2}};

std::shared_ptr<nn::Conv2d> conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t groups) {
  nn::Conv2dOptions o;
  o.stride = stride;
  o.padding = (k - 1) / 2;
  o.groups = groups;
  o.bias = false;
  return std::make_shared<nn::Conv2d>(in, out, k, o);
}

// dw3x3 (stride here) -> pw1x1 -> BN -> ReLU -> dw3x3 -> pw1x1 -> BN, plus the
// input (1x1 conv + BN when channels or stride change), then ReLU.
class SeparableBlock : public Module {
 public:
  SeparableBlock(int64_t in, int64_t out, int64_t stride) {
    dw1 = register_module("dw1", conv(in, in, 3, stride, in));
    pw1 = register_module("pw1", conv(in, out, 1, 1, 1));
    bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(out));
    dw2 = register_module("dw2", conv(out, out, 3, 1, out));
    pw2 = register_module("pw2", conv(out, out, 1, 1, 1));
    bn2 = register_module("bn2", std::make_shared<nn::BatchNorm2d>(out));
    if (in != out || stride != 1) {
      shortcut = register_module("shortcut", std::make_shared<nn::Sequential>());
      shortcut->push_back(conv(in, out, 1, stride, 1));
      shortcut->push_back(std::make_shared<nn::BatchNorm2d>(out));
    }
  }
  Tensor forward(const Tensor& x) override {
    Tensor identity = shortcut ? (*shortcut)(x) : x;
    Tensor h = (*pw1)((*dw1)(x));
    {
      TraceScope s("bn1");
      h = bn1->forward_fused(h, Activation::ReLU);
    }
    return conv_bn_forward(*pw2, *bn2, "bn2", (*dw2)(h), Activation::ReLU, identity);
  }
  std::string type_name() const override { return "SeparableBlock"; }

 private:
  std::shared_ptr<nn::Conv2d> dw1, pw1, dw2, pw2;
  std::shared_ptr<nn::BatchNorm2d> bn1, bn2;
  std::shared_ptr<nn::Sequential> shortcut;
};

class CifarNet : public Module {
 public:
  explicit CifarNet(const ModelOptions& o) {
    auto ch = [&](int64_t c) {
      return std::max<int64_t>(1, static_cast<int64_t>(std::lround(static_cast<double>(c) * o.width_mult)));
    };
    stem_ = register_module("stem", std::make_shared<ConvBNAct>(o.in_channels, ch(kStem), 3, ConvSpec{},
                                                                 Activation::ReLU));
    int64_t in = ch(kStem);
    for (size_t i = 0; i < std::size(kLayers); ++i) {
      auto layer = std::make_shared<nn::Sequential>();
      for (int64_t b = 0, n = scale_depth(kLayers[i].blocks, o.depth_mult); b < n; ++b) {
        layer->push_back(std::make_shared<SeparableBlock>(in, ch(kLayers[i].out), b == 0 ? kLayers[i].stride : 1));
        in = ch(kLayers[i].out);
      }
      layers_.push_back(register_module("layer" + std::to_string(i + 1), layer));
    }
    dropout_ = register_module("dropout", std::make_shared<nn::Dropout>(o.dropout_or(0.2)));
    fc_ = register_module("fc", std::make_shared<nn::Linear>(in, o.classes_or(10)));
    init_weights(*this, LinearInit::Default, true);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*stem_)(x);
    for (auto& l : layers_) h = (*l)(h);
    h = global_avg_pool(h);
    return (*fc_)((*dropout_)(h.reshape({h.size(0), h.size(3)})));
  }
  std::string type_name() const override { return "CifarNet200K"; }

 private:
  std::shared_ptr<ConvBNAct> stem_;
  std::vector<std::shared_ptr<nn::Sequential>> layers_;
  std::shared_ptr<nn::Dropout> dropout_;
  std::shared_ptr<nn::Linear> fc_;
};

}  // namespace

ModulePtr build_cifar_net(const ModelOptions& o) { return std::make_shared<CifarNet>(o); }

}  // namespace kestrel::models
