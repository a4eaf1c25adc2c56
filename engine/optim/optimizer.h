// Optimizer base: parameter groups, step(), zero_grad(), and a state that
// exports to named tensors plus scalars so a resumed run matches an
// uninterrupted one bit for bit.
//
// Per-parameter state is keyed by the parameter's position across all groups
// ("3.exp_avg"), like PyTorch's optimizer.state_dict(). Updates run in place on
// the parameter storage: on the CPU one fused pass per tensor (f32 and f64); on
// CUDA multi-tensor fused kernels (engine/gpu/optim.h; f32 parameters, f32/f16/
// bf16 gradients). State tensors live on their parameter's device; state()
// hands out CPU copies of CUDA state and load_state copies back to the device,
// so a checkpoint moves freely between CPU and CUDA runs.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/nn/module.h"
#include "engine/tensor.h"

namespace kestrel::optim {

struct ParamGroup {
  std::vector<Tensor> params;
  // Overrides the optimizer's weight decay for this group (e.g. 0 for biases and norms).
  std::optional<double> weight_decay;
  double lr_scale = 1.0;  // this group's lr = optimizer lr * lr_scale
};

// Two groups: tensors with dim >= 2 get `weight_decay`; biases and norm
// parameters (dim <= 1) get none, the usual recipe for image classifiers.
std::vector<ParamGroup> decay_groups(const nn::NamedTensors& named_params, double weight_decay);

// Named tensors plus named scalars. Scalars are doubles, exact for step counts.
struct OptimizerState {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> scalars;

  // Everything as tensors, to store in a safetensors checkpoint beside the
  // model: tensors as "<prefix>state.<name>", scalars as 0-d f64 tensors
  // "<prefix>scalar.<name>" (exact: doubles survive bit for bit).
  nn::NamedTensors to_named_tensors(const std::string& prefix) const;
  // Inverse of to_named_tensors; entries without the prefix are ignored.
  static OptimizerState from_named_tensors(const nn::NamedTensors& all, const std::string& prefix);
};

class Optimizer {
 public:
  Optimizer(std::vector<ParamGroup> groups, double lr);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient; parameters without one are skipped.
  virtual void step() = 0;
  void zero_grad();  // drops the gradients (as PyTorch's set_to_none=True)

  double lr() const { return lr_; }
  void set_lr(double lr);
  const std::vector<ParamGroup>& groups() const { return groups_; }
  int64_t num_params() const { return static_cast<int64_t>(flat_.size()); }

  // Hyperparameters are not part of the state: they come from the recipe.
  // lr is included because a schedule may have set it.
  OptimizerState state() const;
  // Throws ValueError when the state was written for other parameters
  // (count, shape or dtype differ) or names an unknown entry.
  void load_state(const OptimizerState& s);

  virtual std::string type_name() const = 0;

 protected:
  struct ParamRef {
    Tensor param;
    double weight_decay;
    double lr_scale;
  };
  // Per-parameter state tensors this optimizer keeps, e.g. {"exp_avg", "exp_avg_sq"}.
  virtual std::vector<std::string> state_tensor_names() const = 0;
  // Per-parameter scalar state names, e.g. {"step"}.
  virtual std::vector<std::string> state_scalar_names() const { return {}; }
  std::vector<ParamRef> flat_;  // every parameter, in group order
  // state_[i][name]: undefined until the first step that touches parameter i.
  std::vector<std::map<std::string, Tensor>> state_tensors_;
  std::vector<std::map<std::string, double>> state_scalars_;
  double lr_;

  // Flattens the groups; call from the derived constructor. default_weight_decay
  // applies to groups that do not set their own.
  void init_params(double default_weight_decay);
  // The parameter's gradient as a contiguous tensor of its dtype, or undefined.
  static Tensor grad_for_update(const Tensor& param, const char* op);

 private:
  std::vector<ParamGroup> groups_;
};

}  // namespace kestrel::optim
