#include "engine/optim/plateau.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/error.h"

namespace kestrel::optim {

// As torch, the best starts at the worst value: a first epoch at inf (or
// nan) is no improvement.
ReduceOnPlateau::ReduceOnPlateau(double lr, PlateauOptions o)
    : o_(o),
      lr_(lr),
      best_(o.higher_is_better ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity()) {
  KCHECK(std::isfinite(lr) && lr >= 0.0, ValueError, "ReduceOnPlateau: lr must be finite and >= 0, got ", lr);
  KCHECK(o.factor > 0.0 && o.factor < 1.0, ValueError, "ReduceOnPlateau: factor must be in (0, 1), got ", o.factor);
  KCHECK(o.patience >= 0 && o.cooldown >= 0, ValueError, "ReduceOnPlateau: patience and cooldown must be >= 0, got ",
         o.patience, " and ", o.cooldown);
  KCHECK(o.threshold >= 0.0 && std::isfinite(o.min_lr) && o.min_lr >= 0.0, ValueError,
         "ReduceOnPlateau: threshold and min_lr must be >= 0, got ", o.threshold, " and ", o.min_lr);
}

bool ReduceOnPlateau::improves_on_best(double metric) const {
  return o_.higher_is_better ? metric > best_ * (1.0 + o_.threshold) : metric < best_ * (1.0 - o_.threshold);
}

bool ReduceOnPlateau::observe(double metric) {
  if (improves_on_best(metric)) {
    best_ = metric;
    bad_epochs_ = 0;
  } else {
    ++bad_epochs_;
  }
  if (cooldown_left_ > 0) {  // bad epochs right after a reduction do not count
    --cooldown_left_;
    bad_epochs_ = 0;
  }
  if (bad_epochs_ <= o_.patience) return false;
  bad_epochs_ = 0;
  cooldown_left_ = o_.cooldown;
  const double lowered = std::max(lr_ * o_.factor, o_.min_lr);
  if (lr_ - lowered <= 1e-8) return false;  // at the floor already (torch's eps)
  lr_ = lowered;
  return true;
}

}  // namespace kestrel::optim
