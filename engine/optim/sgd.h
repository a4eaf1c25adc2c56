// SGD with momentum, dampening, Nesterov and (coupled) weight decay, exactly
// torch.optim.SGD's rule:
//   g = grad + wd * p
//   buf = g                                  (first step)
//   buf = momentum * buf + (1 - dampening) * g  (later steps)
//   g = nesterov ? g + momentum * buf : buf
//   p -= lr * g
#pragma once
#include "engine/optim/optimizer.h"

namespace kestrel::optim {

struct SGDOptions {
  double lr = 0.1;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, SGDOptions o);
  SGD(const std::vector<Tensor>& params, SGDOptions o) : SGD(std::vector<ParamGroup>{ParamGroup{params, {}, 1.0}}, o) {}
  void step() override;
  std::string type_name() const override { return "SGD"; }
  const SGDOptions& options() const { return opts_; }

 protected:
  std::vector<std::string> state_tensor_names() const override { return {"momentum_buffer"}; }

 private:
  SGDOptions opts_;
};

}  // namespace kestrel::optim
