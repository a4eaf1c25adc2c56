#include "engine/optim/grad_scaler.h"

#include <cmath>

#include "engine/ops/elementwise.h"
#include "engine/optim/clip.h"

namespace kestrel::optim {

namespace {

bool positive_finite(double v) { return std::isfinite(v) && v > 0.0; }

// Every parameter of the optimizer that has a gradient, with that gradient made contiguous.
std::vector<Tensor> params_with_grads(const Optimizer& optimizer) {
  std::vector<Tensor> out;
  for (const ParamGroup& group : optimizer.groups()) {
    for (Tensor p : group.params) {  // a handle: set_grad reaches the shared parameter
      const Tensor g = p.grad();
      if (!g.defined()) continue;
      if (!g.is_contiguous()) p.set_grad(g.contiguous());
      out.push_back(p);
    }
  }
  return out;
}

}  // namespace

GradScaler::GradScaler(GradScalerOptions o) : opts_(o), scale_(o.init_scale) {
  KCHECK(positive_finite(o.init_scale), ValueError, "GradScaler: init_scale must be positive and finite, got ",
         o.init_scale);
  KCHECK(std::isfinite(o.growth_factor) && o.growth_factor > 1.0, ValueError,
         "GradScaler: growth_factor must be > 1, got ", o.growth_factor);
  KCHECK(o.backoff_factor > 0.0 && o.backoff_factor < 1.0, ValueError,
         "GradScaler: backoff_factor must be in (0, 1), got ", o.backoff_factor);
  KCHECK(o.growth_interval >= 1, ValueError, "GradScaler: growth_interval must be >= 1, got ", o.growth_interval);
}

Tensor GradScaler::scale(const Tensor& loss) const { return mul_scalar(loss, scale_); }

bool GradScaler::unscale_(Optimizer& optimizer) { return unscale_(optimizer, 0.0); }

bool GradScaler::unscale_(Optimizer& optimizer, double clip_max_norm) {
  KCHECK(!unscaled_, ValueError, "GradScaler.unscale_: already called since the last update()");
  KCHECK(clip_max_norm >= 0.0, ValueError, "GradScaler.unscale_: clip_max_norm must be >= 0, got ", clip_max_norm);
  unscaled_ = true;
  const std::vector<Tensor> params = params_with_grads(optimizer);
  const double scaled_norm = grad_norm(params);  // the one host wait of the step
  found_inf_ = !std::isfinite(scaled_norm);
  if (found_inf_) return false;  // the step is skipped; the gradients are not used
  const double clip = clip_max_norm > 0.0 ? clip_coefficient(scaled_norm / scale_, clip_max_norm) : 1.0;
  scale_grads_(params, (1.0 / scale_) * clip);
  return true;
}

bool GradScaler::step(Optimizer& optimizer) {
  if (!unscaled_) unscale_(optimizer);
  if (found_inf_) return false;
  optimizer.step();
  return true;
}

void GradScaler::update() {
  KCHECK(unscaled_, ValueError, "GradScaler.update: no unscale_ or step since the last update()");
  if (found_inf_) {
    scale_ *= opts_.backoff_factor;
    growth_tracker_ = 0;
  } else if (++growth_tracker_ == opts_.growth_interval) {
    const double grown = scale_ * opts_.growth_factor;
    if (std::isfinite(grown)) scale_ = grown;  // torch keeps the scale when growing would overflow
    growth_tracker_ = 0;
  }
  unscaled_ = false;
  found_inf_ = false;
}

OptimizerState GradScaler::state() const {
  OptimizerState s;
  s.scalars["scale"] = scale_;
  s.scalars["growth_tracker"] = static_cast<double>(growth_tracker_);
  return s;
}

void GradScaler::load_state(const OptimizerState& s) {
  const auto scale = s.scalars.find("scale"), tracker = s.scalars.find("growth_tracker");
  KCHECK(scale != s.scalars.end() && tracker != s.scalars.end(), ValueError,
         "GradScaler: state lacks 'scale' or 'growth_tracker'");
  KCHECK(positive_finite(scale->second), ValueError, "GradScaler: state scale must be positive and finite, got ",
         scale->second);
  KCHECK(tracker->second >= 0 && tracker->second < static_cast<double>(opts_.growth_interval), ValueError,
         "GradScaler: state growth_tracker ", tracker->second, " is outside [0, ", opts_.growth_interval, ")");
  scale_ = scale->second;
  growth_tracker_ = static_cast<int64_t>(tracker->second);
  unscaled_ = false;
  found_inf_ = false;
}

}  // namespace kestrel::optim
