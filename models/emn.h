// EfficientMicroNet (EMN) Tiny / Small / Base: ghost-module inverted residual
// blocks with coordinate attention (IRA), multi-scale feature aggregation and
// a MobileNetV3-style head. The exact tables are in docs/models.md.
#pragma once
#include <vector>

#include "models/common.h"

namespace kestrel::models {

// One stage of IRA blocks: output channels, blocks, first stride, expansion
// ratio (of the block's input channels), depthwise kernel, activation.
struct IRAStage {
  int64_t channels, repeats, stride;
  double expand;
  int64_t kernel;
  Activation act;
};

struct EMNVariant {
  const char* name;
  int64_t stem;
  std::vector<IRAStage> stages;
  int64_t head;  // 1x1 conv width before the pool
  double published_params;  // the seed's figure at 10 classes
};
const std::vector<EMNVariant>& emn_variants();

// Coordinate attention (Hou et al. 2021): pools along H and along W, a shared
// 1x1 conv + BN + hard-swish, then one sigmoid gate per axis.
class CoordinateAttention : public Module {
 public:
  CoordinateAttention(int64_t channels, int64_t reduction = 32);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "CoordinateAttention"; }
  // Whether forward(x) runs the fused CUDA kernel (eval mode on CUDA).
  bool can_fuse(const Tensor& x) const;

 private:
  std::shared_ptr<nn::Conv2d> conv1_, conv_h_, conv_w_;
  std::shared_ptr<nn::BatchNorm2d> bn1_;
};

// name: "emn_tiny", "emn_small" or "emn_base".
ModulePtr build_emn(const std::string& name, const ModelOptions& o);

}  // namespace kestrel::models
