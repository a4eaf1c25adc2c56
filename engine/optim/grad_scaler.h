// Dynamic loss scaling for f16 mixed precision, as torch.cuda.amp.GradScaler:
//
//   scaler.scale(loss).backward();
//   scaler.unscale_(opt);            // optional: before clipping gradients
//                                    // (unscale_(opt, max_norm) clips too, in the same pass)
//   scaler.step(opt);                // skipped when a gradient is inf/nan
//   scaler.update();                 // backoff or growth of the scale
//
// The scale starts at init_scale, is multiplied by backoff_factor after every
// step with an inf/nan gradient (that step is skipped, the optimizer state is
// untouched) and by growth_factor after growth_interval clean steps in a row.
// Finiteness is read from the global gradient norm (engine/optim/clip.h,
// accumulated in f64, so it is finite exactly when every gradient is): one
// host wait per step on CUDA, as torch's scaler with a non-fused optimizer.
// Gradients are then divided by the scale in place (engine/optim/clip.h
// scale_grads_: a few multi-tensor launches on CUDA).
// bf16 has f32's exponent range and runs without a scaler.
#pragma once
#include <cstdint>

#include "engine/optim/optimizer.h"
#include "engine/tensor.h"

namespace kestrel::optim {

struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions o = {});

  // loss * scale, recorded (backward through it yields scaled gradients).
  Tensor scale(const Tensor& loss) const;

  // Checks the gradients of the optimizer's parameters for inf/nan and, when
  // all are finite, divides them by the scale in place. At most once between
  // two update() calls; returns true when every gradient is finite.
  bool unscale_(Optimizer& optimizer);
  // unscale_, then clip_grad_norm_ to clip_max_norm (> 0) in the same pass:
  // the norm of the unscaled gradients is the finiteness check's norm over
  // the scale, so clipping costs no second reduction and no second host wait.
  // Bit-identical to unscale_ then clip_grad_norm_ while the scale is a power
  // of two (the defaults keep it one).
  bool unscale_(Optimizer& optimizer, double clip_max_norm);

  // Runs unscale_ unless it already ran this step, then optimizer.step()
  // unless a gradient was inf/nan. Returns whether the optimizer stepped.
  bool step(Optimizer& optimizer);

  // Ends the step: backoff after an inf/nan, growth after growth_interval
  // clean steps in a row. Needs an unscale_ (or step) since the last update.
  void update();

  double current_scale() const { return scale_; }
  // Clean steps in a row since the last growth or backoff.
  int64_t growth_tracker() const { return growth_tracker_; }
  // Whether this step's unscale_ found an inf/nan (false before it ran).
  bool found_inf() const { return found_inf_; }
  const GradScalerOptions& options() const { return opts_; }

  // Scalars "scale" and "growth_tracker", for resuming a run exactly.
  // load_state throws ValueError when either is missing or out of range.
  OptimizerState state() const;
  void load_state(const OptimizerState& s);

 private:
  GradScalerOptions opts_;
  double scale_;
  int64_t growth_tracker_ = 0;
  bool unscaled_ = false;  // unscale_ ran since the last update()
  bool found_inf_ = false;
};

}  // namespace kestrel::optim
