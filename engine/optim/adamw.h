// AdamW (decoupled weight decay), exactly torch.optim.AdamW's rule
// (amsgrad off). Per parameter, at its t-th update:
//   p *= 1 - lr * wd
//   m = m + (1 - beta1) * (g - m)         (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
#pragma once
#include "engine/optim/optimizer.h"

namespace kestrel::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // torch's default
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions o);
  AdamW(const std::vector<Tensor>& params, AdamWOptions o)
      : AdamW(std::vector<ParamGroup>{ParamGroup{params, {}, 1.0}}, o) {}
  void step() override;
  std::string type_name() const override { return "AdamW"; }
  const AdamWOptions& options() const { return opts_; }

 protected:
  std::vector<std::string> state_tensor_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  std::vector<std::string> state_scalar_names() const override { return {"step"}; }

 private:
  AdamWOptions opts_;
};

}  // namespace kestrel::optim
