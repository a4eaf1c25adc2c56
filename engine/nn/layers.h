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
class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kernel, Conv2dOptions o = {});
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Conv2d"; }
  Tensor weight, bias;
  int64_t in_channels, out_channels, kernel_size;
  Conv2dParams params;
};

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  Tensor forward(const Tensor& x) override;
  // act(bn(x) + residual) in one fused op.
  Tensor forward_fused(const Tensor& x, Activation act, const Tensor& residual = Tensor());
  std::string type_name() const override { return "BatchNorm2d"; }
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  int64_t channels;
  double eps, momentum;
};

class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Linear"; }
  Tensor weight, bias;
  int64_t in_features, out_features;
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
