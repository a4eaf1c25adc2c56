// The rate of torch.optim.lr_scheduler.ReduceLROnPlateau (threshold_mode
// "rel"): fed one validation number per epoch, it multiplies the rate by
// `factor` (not below min_lr) once more than `patience` epochs in a row have
// not beaten the best by a relative `threshold`; then `cooldown` epochs pass
// before bad epochs count again. Unlike the step schedules it depends on what
// validation measured, so a resumed run replays the saved epochs' numbers.
#pragma once
#include <cstdint>

namespace kestrel::optim {

struct PlateauOptions {
  double factor = 0.1;
  int64_t patience = 10;
  double threshold = 1e-4;
  int64_t cooldown = 0;
  double min_lr = 0.0;
  bool higher_is_better = true;  // accuracy; false for a loss
};

class ReduceOnPlateau {
 public:
  ReduceOnPlateau(double lr, PlateauOptions o);
  // One epoch's validation number (nan, or inf for a loss, is no
  // improvement); true when it lowered the rate.
  bool observe(double metric);
  double lr() const { return lr_; }

 private:
  bool improves_on_best(double metric) const;

  PlateauOptions o_;
  double lr_;
  double best_;
  int64_t bad_epochs_ = 0;
  int64_t cooldown_left_ = 0;
};

}  // namespace kestrel::optim
