// GhostNet (Han et al. 2020) with timm's ghostnet_100 names: conv_stem, bn1,
// blocks.S.B.{ghost1,conv_dw,bn_dw,se,ghost2,shortcut}, conv_head, classifier.
#pragma once
#include "models/common.h"

namespace kestrel::models {

// Ghost module: a primary 1x1 conv makes ceil(out/ratio) maps, a cheap depthwise
// conv makes the rest from them; concatenated and cut to `out` channels.
// Children primary_conv.{0,1}, cheap_operation.{0,1}.
class GhostModule : public Module {
 public:
  GhostModule(int64_t in, int64_t out, Activation act, int64_t ratio = 2, int64_t dw_kernel = 3, BNConfig bn = {});
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "GhostModule"; }
  // Whether forward(x) runs the fused ghost_module op (eval mode on CUDA, ratio 2).
  bool can_fuse(const Tensor& x) const;

 private:
  Tensor forward_in_place(const Tensor& x) const;
  Tensor forward_ghost_norms(const Tensor& x);

  std::shared_ptr<ConvBNAct> primary_, cheap_;
  int64_t out_;
};

// width 1.0 is timm's ghostnet_100.
ModulePtr build_ghostnet(const ModelOptions& o);

}  // namespace kestrel::models
