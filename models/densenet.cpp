#include "models/densenet.h"

#include <cmath>
#include <vector>

#include "engine/ops/dropout.h"
#include "engine/ops/pool.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"

namespace kestrel::models {

namespace {

// Paper Table 1: growth rate k, initial features, layers per dense block.
struct DenseNetSpec {
  int depth;
  int64_t growth, init_features;
  int64_t blocks[4];
};
constexpr DenseNetSpec kDenseNets[] = {
    {121, 32, 64, {6, 12, 24, 16}},
    {169, 32, 64, {6, 12, 32, 32}},
    {201, 32, 64, {6, 12, 48, 32}},
    {161, 48, 96, {6, 12, 36, 24}},
};
constexpr int64_t kBottleneckWidth = 4;  // bn_size: the 1x1 conv makes 4k features

std::shared_ptr<nn::Conv2d> conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t padding) {
  nn::Conv2dOptions o;
  o.stride = stride;
  o.padding = padding;
  o.bias = false;
  return std::make_shared<nn::Conv2d>(in, out, k, o);
}

Tensor bn_relu(nn::BatchNorm2d& bn, const char* name, const Tensor& x) {
  TraceScope s(name);
  return bn.forward_fused(x, Activation::ReLU);
}

// BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) on the concatenation of all earlier features.
class DenseLayer : public Module {
 public:
  DenseLayer(int64_t in, int64_t growth) {
    norm1 = register_module("norm1", std::make_shared<nn::BatchNorm2d>(in));
    conv1 = register_module("conv1", conv(in, kBottleneckWidth * growth, 1, 1, 0));
    norm2 = register_module("norm2", std::make_shared<nn::BatchNorm2d>(kBottleneckWidth * growth));
    conv2 = register_module("conv2", conv(kBottleneckWidth * growth, growth, 3, 1, 1));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*conv1)(bn_relu(*norm1, "norm1", x));
    return (*conv2)(bn_relu(*norm2, "norm2", h));
  }
  std::string type_name() const override { return "DenseLayer"; }

 private:
  std::shared_ptr<nn::BatchNorm2d> norm1, norm2;
  std::shared_ptr<nn::Conv2d> conv1, conv2;
};

class DenseBlock : public Module {
 public:
  DenseBlock(int64_t layers, int64_t in, int64_t growth) {
    for (int64_t i = 0; i < layers; ++i)
      layers_.push_back(
          register_module("denselayer" + std::to_string(i + 1), std::make_shared<DenseLayer>(in + i * growth, growth)));
  }
  Tensor forward(const Tensor& x) override {
    std::vector<Tensor> features{x};
    Tensor all = x;
    for (auto& layer : layers_) {
      features.push_back((*layer)(all));
      all = concat(features, 3);
    }
    return all;
  }
  std::string type_name() const override { return "DenseBlock"; }

 private:
  std::vector<std::shared_ptr<DenseLayer>> layers_;
};

// BN-ReLU-conv1x1 (halves the features)-avgpool 2x2.
class Transition : public Module {
 public:
  Transition(int64_t in, int64_t out) {
    norm = register_module("norm", std::make_shared<nn::BatchNorm2d>(in));
    conv_ = register_module("conv", conv(in, out, 1, 1, 0));
    pool = register_module("pool", std::make_shared<AvgPool2d>(2, 2));
  }
  Tensor forward(const Tensor& x) override { return (*pool)((*conv_)(bn_relu(*norm, "norm", x))); }
  std::string type_name() const override { return "Transition"; }

 private:
  std::shared_ptr<nn::BatchNorm2d> norm;
  std::shared_ptr<nn::Conv2d> conv_;
  std::shared_ptr<AvgPool2d> pool;
};

class DenseNet : public Module {
 public:
  DenseNet(const DenseNetSpec& spec, const ModelOptions& o) {
    const int64_t growth = std::max<int64_t>(1, static_cast<int64_t>(std::lround(spec.growth * o.width_mult)));
    const int64_t init = make_divisible(spec.init_features * o.width_mult);
    features_ = register_module("features", std::make_shared<nn::Sequential>());
    if (o.cifar_stem) {  // 3x3 stride-1 conv, no max pool (total stride 8)
      features_->add("conv0", conv(o.in_channels, init, 3, 1, 1));
      features_->add("norm0", std::make_shared<nn::BatchNorm2d>(init));
      features_->add("relu0", std::make_shared<nn::Act>(Activation::ReLU));
    } else {
      features_->add("conv0", conv(o.in_channels, init, 7, 2, 3));
      features_->add("norm0", std::make_shared<nn::BatchNorm2d>(init));
      features_->add("relu0", std::make_shared<nn::Act>(Activation::ReLU));
      features_->add("pool0", std::make_shared<MaxPool2d>(3, 2, 1));
    }
    int64_t c = init;
    for (int i = 0; i < 4; ++i) {
      const int64_t n = scale_depth(spec.blocks[i], o.depth_mult);
      features_->add("denseblock" + std::to_string(i + 1), std::make_shared<DenseBlock>(n, c, growth));
      c += n * growth;
      if (i != 3) {
        features_->add("transition" + std::to_string(i + 1), std::make_shared<Transition>(c, c / 2));
        c /= 2;
      }
    }
    norm5_ = std::make_shared<nn::BatchNorm2d>(c);
    features_->add("norm5", norm5_);
    dropout_ = o.dropout_or(0.0);
    classifier_ = register_module("classifier", std::make_shared<nn::Linear>(c, o.classes_or(1000)));
    init_weights(*this, LinearInit::ZeroBias, false);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = relu((*features_)(x));
    h = global_avg_pool(h);
    h = h.reshape({h.size(0), h.size(3)});
    if (dropout_ > 0.0) h = dropout(h, dropout_, is_training(), nn::init_generator());
    return (*classifier_)(h);
  }
  std::string type_name() const override { return "DenseNet"; }

 private:
  std::shared_ptr<nn::Sequential> features_;
  std::shared_ptr<nn::BatchNorm2d> norm5_;
  std::shared_ptr<nn::Linear> classifier_;
  double dropout_ = 0.0;
};

}  // namespace

ModulePtr build_densenet(int depth, const ModelOptions& o) {
  for (const DenseNetSpec& s : kDenseNets)
    if (s.depth == depth) return std::make_shared<DenseNet>(s, o);
  throw ValueError("densenet: no depth " + std::to_string(depth) + " (valid: 121, 161, 169, 201)");
}

}  // namespace kestrel::models
