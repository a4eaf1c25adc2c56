#include "models/resnet.h"

#include "engine/ops/dropout.h"
#include "engine/ops/pool.h"
#include "engine/trace.h"

namespace kestrel::models {

namespace {

// The paper's Table 1: block type and blocks per stage for each depth.
struct ResNetSpec {
  int depth;
  bool bottleneck;
  int blocks[4];
};
constexpr ResNetSpec kResNets[] = {
    {18, false, {2, 2, 2, 2}},  {34, false, {3, 4, 6, 3}},   {50, true, {3, 4, 6, 3}},
    {101, true, {3, 4, 23, 3}}, {152, true, {3, 8, 36, 3}},
};
constexpr int64_t kStagePlanes[4] = {64, 128, 256, 512};
constexpr int64_t kStageStride[4] = {1, 2, 2, 2};

std::shared_ptr<nn::Conv2d> conv(int64_t in, int64_t out, int64_t k, int64_t stride) {
  nn::Conv2dOptions o;
  o.stride = stride;
  o.padding = (k - 1) / 2;
  o.bias = false;
  return std::make_shared<nn::Conv2d>(in, out, k, o);
}

// 1x1 conv + BN on the shortcut when the shape changes ("downsample.0", ".1").
std::shared_ptr<nn::Sequential> downsample(int64_t in, int64_t out, int64_t stride) {
  auto d = std::make_shared<nn::Sequential>();
  d->push_back(conv(in, out, 1, stride));
  d->push_back(std::make_shared<nn::BatchNorm2d>(out));
  return d;
}

class BasicBlock : public Module {
 public:
  static constexpr int64_t kExpansion = 1;
  BasicBlock(int64_t in, int64_t planes, int64_t stride) {
    conv1 = register_module("conv1", conv(in, planes, 3, stride));
    bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, 1));
    bn2 = register_module("bn2", std::make_shared<nn::BatchNorm2d>(planes));
    if (stride != 1 || in != planes) down = register_module("downsample", downsample(in, planes, stride));
  }
  Tensor forward(const Tensor& x) override {
    Tensor identity = down ? (*down)(x) : x;
    Tensor h;
    {
      Tensor c = (*conv1)(x);
      TraceScope s("bn1");
      h = bn1->forward_fused(c, Activation::ReLU);
    }
    return conv_bn_forward(*conv2, *bn2, "bn2", h, Activation::ReLU, identity);
  }
  std::string type_name() const override { return "BasicBlock"; }

 private:
  std::shared_ptr<nn::Conv2d> conv1, conv2;
  std::shared_ptr<nn::BatchNorm2d> bn1, bn2;
  std::shared_ptr<nn::Sequential> down;
};

class Bottleneck : public Module {
 public:
  static constexpr int64_t kExpansion = 4;
  Bottleneck(int64_t in, int64_t planes, int64_t stride) {
    const int64_t out = planes * kExpansion;
    conv1 = register_module("conv1", conv(in, planes, 1, 1));
    bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, stride));  // stride on the 3x3 (ResNet v1.5)
    bn2 = register_module("bn2", std::make_shared<nn::BatchNorm2d>(planes));
    conv3 = register_module("conv3", conv(planes, out, 1, 1));
    bn3 = register_module("bn3", std::make_shared<nn::BatchNorm2d>(out));
    if (stride != 1 || in != out) down = register_module("downsample", downsample(in, out, stride));
  }
  Tensor forward(const Tensor& x) override {
    Tensor identity = down ? (*down)(x) : x;
    Tensor h = conv_bn_forward(*conv1, *bn1, "bn1", x, Activation::ReLU, Tensor());
    h = conv_bn_forward(*conv2, *bn2, "bn2", h, Activation::ReLU, Tensor());
    return conv_bn_forward(*conv3, *bn3, "bn3", h, Activation::ReLU, identity);
  }
  std::string type_name() const override { return "Bottleneck"; }

 private:
  std::shared_ptr<nn::Conv2d> conv1, conv2, conv3;
  std::shared_ptr<nn::BatchNorm2d> bn1, bn2, bn3;
  std::shared_ptr<nn::Sequential> down;
};

class ResNet : public Module {
 public:
  ResNet(const ResNetSpec& spec, const ModelOptions& o) {
    const int64_t stem = make_divisible(64 * o.width_mult);
    // CIFAR stem: 3x3 stride-1 conv, no max pool (total stride 8).
    conv1 = register_module("conv1", o.cifar_stem ? conv(o.in_channels, stem, 3, 1) : conv(o.in_channels, stem, 7, 2));
    bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(stem));
    if (!o.cifar_stem) maxpool = register_module("maxpool", std::make_shared<MaxPool2d>(3, 2, 1));
    const int64_t expansion = spec.bottleneck ? Bottleneck::kExpansion : BasicBlock::kExpansion;
    int64_t in = stem;
    for (int s = 0; s < 4; ++s) {
      auto layer = std::make_shared<nn::Sequential>();
      const int64_t planes = make_divisible(kStagePlanes[s] * o.width_mult);
      const int64_t n = scale_depth(spec.blocks[s], o.depth_mult);
      for (int64_t b = 0; b < n; ++b) {
        const int64_t stride = b == 0 ? kStageStride[s] : 1;
        if (spec.bottleneck)
          layer->push_back(std::make_shared<Bottleneck>(in, planes, stride));
        else
          layer->push_back(std::make_shared<BasicBlock>(in, planes, stride));
        in = planes * expansion;
      }
      layers[s] = register_module("layer" + std::to_string(s + 1), layer);
    }
    dropout = o.dropout_or(0.0);
    fc = register_module("fc", std::make_shared<nn::Linear>(in, o.classes_or(1000)));
    init_weights(*this, LinearInit::Default, true);
  }
  Tensor forward(const Tensor& x) override {
    Tensor c = (*conv1)(x);
    Tensor h;
    {
      TraceScope s("bn1");
      h = bn1->forward_fused(c, Activation::ReLU);
    }
    if (maxpool) h = (*maxpool)(h);
    for (auto& l : layers) h = (*l)(h);
    Tensor pooled = global_avg_pool(h);
    pooled = pooled.reshape({pooled.size(0), pooled.size(3)});
    if (dropout > 0.0) pooled = kestrel::dropout(pooled, dropout, is_training(), nn::init_generator());
    return (*fc)(pooled);
  }
  std::string type_name() const override { return "ResNet"; }

 private:
  std::shared_ptr<nn::Conv2d> conv1;
  std::shared_ptr<nn::BatchNorm2d> bn1;
  std::shared_ptr<MaxPool2d> maxpool;
  std::shared_ptr<nn::Sequential> layers[4];
  std::shared_ptr<nn::Linear> fc;
  double dropout = 0.0;
};

}  // namespace

ModulePtr build_resnet(int depth, const ModelOptions& o) {
  for (const ResNetSpec& s : kResNets)
    if (s.depth == depth) return std::make_shared<ResNet>(s, o);
  throw ValueError("resnet: no depth " + std::to_string(depth) + " (valid: 18, 34, 50, 101, 152)");
}

}  // namespace kestrel::models
