// Exponential moving average of a model's parameters and buffers, as timm's
// ModelEmaV3 (ModelEmaV2 with optional warmup): after each optimizer step,
//   ema = ema + (1 - d) * (model - ema)       for floating tensors
//   ema = model                               for integer buffers
// with d = decay_at(step). Evaluate with copy_to(model) (or swap_with for a
// round trip back to the training weights). The EMA lives on the model's
// device (make it after moving the model); CUDA tensors are blended on the
// device (engine/gpu/optim.h) and state() hands out CPU copies.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "engine/nn/module.h"
#include "engine/optim/optimizer.h"

namespace kestrel::optim {

struct EmaOptions {
  double decay = 0.9999;
  // timm's warmup: d = 1 - (1 + s / warmup_gamma)^(-warmup_power), capped at decay.
  bool warmup = false;
  double warmup_gamma = 1.0;
  double warmup_power = 2.0 / 3.0;
  double min_decay = 0.0;
  int64_t update_after_step = 0;  // before this, updates copy the model (d = 0)
};

class ModelEma {
 public:
  // Takes a copy of the model's current parameters and buffers.
  ModelEma(const nn::Module& model, EmaOptions o = {});

  // timm's get_decay(step): s = step - update_after_step - 1; d = 0 when s <= 0,
  // else decay (or the warmup value clamped to [min_decay, decay]).
  double decay_at(int64_t step) const;

  // Counts this update (updates() += 1) and blends with d = decay_at(updates()),
  // as timm's train loop passes step = the optimizer update count.
  void update(const nn::Module& model);
  // Blends with an explicit decay (timm's update(model) without a step).
  void update_with_decay(const nn::Module& model, double decay);

  int64_t updates() const { return updates_; }
  // EMA weights into the model (its parameters and buffers, in place).
  void copy_to(nn::Module& model) const;
  // Exchanges the EMA weights and the model's, so eval then swap back restores training.
  void swap_with(nn::Module& model);

  // The EMA tensors in the model's own layout and names, plus "updates";
  // for resuming a run. load_state throws ValueError on a mismatch.
  OptimizerState state() const;
  void load_state(const OptimizerState& s);
  const nn::NamedTensors& tensors() const { return ema_; }

 private:
  nn::NamedTensors live(const nn::Module& model) const;  // params then buffers, checked against ema_
  EmaOptions opts_;
  nn::NamedTensors ema_;
  int64_t updates_ = 0;
};

}  // namespace kestrel::optim
