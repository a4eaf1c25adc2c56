// RMSprop, exactly torch.optim.RMSprop's rule (centered off). The EfficientNet
// and MobileNetV3 papers used TensorFlow's variant (eps inside the sqrt,
// square_avg starting at 1: timm's rmsproptf), so their eps does not carry
// over as is. Per parameter:
//   g = grad + wd * p                    (coupled, as torch)
//   v = alpha * v + (1 - alpha) * g * g  (v starts at 0)
//   d = g / (sqrt(v) + eps)
//   buf = momentum * buf + d; p -= lr * buf   (momentum > 0; buf starts at 0)
//   p -= lr * d                               (momentum 0)
#pragma once
#include "engine/optim/optimizer.h"

namespace kestrel::optim {

struct RMSpropOptions {
  double lr = 1e-2;  // torch's (kestrel train's default is 1e-3: it adds momentum 0.9)
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.0;
};

class RMSprop : public Optimizer {
 public:
  RMSprop(std::vector<ParamGroup> groups, RMSpropOptions o);
  RMSprop(const std::vector<Tensor>& params, RMSpropOptions o)
      : RMSprop(std::vector<ParamGroup>{ParamGroup{params, {}, 1.0}}, o) {}
  void step() override;
  std::string type_name() const override { return "RMSprop"; }
  const RMSpropOptions& options() const { return opts_; }

 protected:
  std::vector<std::string> state_tensor_names() const override {
    if (opts_.momentum == 0.0) return {"square_avg"};  // no buffer is kept
    return {"square_avg", "momentum_buffer"};
  }

 private:
  RMSpropOptions opts_;
};

}  // namespace kestrel::optim
