#include "engine/optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace kestrel::optim {

namespace {
constexpr double kPi = 3.14159265358979323846;

void check_lr(double v, const char* what, const char* sched) {
  KCHECK(std::isfinite(v) && v >= 0.0, ValueError, sched, ": ", what, " must be finite and >= 0, got ", v);
}
}  // namespace

WarmupCosine::WarmupCosine(double base_lr, int64_t total_steps, int64_t warmup_steps, double min_lr,
                           double warmup_start_lr)
    : base_(base_lr), min_(min_lr), start_(warmup_start_lr), total_(total_steps), warmup_(warmup_steps) {
  check_lr(base_lr, "base_lr", "WarmupCosine");
  check_lr(min_lr, "min_lr", "WarmupCosine");
  check_lr(warmup_start_lr, "warmup_start_lr", "WarmupCosine");
  KCHECK(warmup_steps >= 0 && total_steps > 0 && warmup_steps <= total_steps, ValueError,
         "WarmupCosine: need 0 <= warmup_steps <= total_steps and total_steps > 0, got warmup_steps ", warmup_steps,
         ", total_steps ", total_steps);
}

double WarmupCosine::lr(int64_t step) const {
  if (step < 0) step = 0;
  if (step < warmup_) return start_ + (base_ - start_) * static_cast<double>(step) / static_cast<double>(warmup_);
  if (step >= total_) return min_;
  const double t = static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
  return min_ + 0.5 * (base_ - min_) * (1.0 + std::cos(kPi * t));
}

StepDecay::StepDecay(double base_lr, int64_t step_size, double gamma)
    : base_(base_lr), gamma_(gamma), step_size_(step_size) {
  check_lr(base_lr, "base_lr", "StepDecay");
  check_lr(gamma, "gamma", "StepDecay");
  KCHECK(step_size > 0, ValueError, "StepDecay: step_size must be > 0, got ", step_size);
}

StepDecay::StepDecay(double base_lr, std::vector<int64_t> milestones, double gamma)
    : base_(base_lr), gamma_(gamma), milestones_(std::move(milestones)) {
  check_lr(base_lr, "base_lr", "StepDecay");
  check_lr(gamma, "gamma", "StepDecay");
  std::sort(milestones_.begin(), milestones_.end());
}

double StepDecay::lr(int64_t step) const {
  if (step < 0) step = 0;
  int64_t k = 0;
  if (step_size_ > 0)
    k = step / step_size_;
  else
    k = std::upper_bound(milestones_.begin(), milestones_.end(), step) - milestones_.begin();
  return base_ * std::pow(gamma_, static_cast<double>(k));
}

LinearWarmup::LinearWarmup(std::unique_ptr<LrSchedule> after, int64_t warmup_steps, double start_lr)
    : after_(std::move(after)), warmup_(warmup_steps), start_(start_lr) {
  check_lr(start_lr, "start_lr", "LinearWarmup");
  KCHECK(after_ != nullptr, ValueError, "LinearWarmup: no schedule to warm up");
  KCHECK(warmup_steps >= 0, ValueError, "LinearWarmup: warmup_steps must be >= 0, got ", warmup_steps);
}

double LinearWarmup::lr(int64_t step) const {
  if (step < 0) step = 0;
  if (step >= warmup_) return after_->lr(step);
  return start_ + (after_->lr(warmup_) - start_) * static_cast<double>(step) / static_cast<double>(warmup_);
}

OneCycle::OneCycle(double max_lr, int64_t total_steps, double pct_start, double div_factor, double final_div_factor)
    : max_lr_(max_lr), total_(total_steps) {
  check_lr(max_lr, "max_lr", "OneCycle");
  KCHECK(total_steps > 1, ValueError, "OneCycle: total_steps must be > 1, got ", total_steps);
  KCHECK(pct_start > 0.0 && pct_start < 1.0, ValueError, "OneCycle: pct_start must be in (0, 1), got ", pct_start);
  KCHECK(div_factor > 0.0 && final_div_factor > 0.0, ValueError,
         "OneCycle: div_factor and final_div_factor must be > 0, got ", div_factor, " and ", final_div_factor);
  initial_lr_ = max_lr / div_factor;
  final_lr_ = initial_lr_ / final_div_factor;
  phase1_end_ = pct_start * static_cast<double>(total_steps) - 1.0;
  KCHECK(phase1_end_ > 0.0 && phase1_end_ < static_cast<double>(total_steps - 1), ValueError,
         "OneCycle: pct_start ", pct_start, " with total_steps ", total_steps, " leaves an empty phase");
}

// torch's get_lr() walk over its two phases; phase 2 starts at phase 1's end step.
namespace {
double cos_anneal(double start, double end, double pct) {
  return end + (start - end) / 2.0 * (std::cos(kPi * pct) + 1.0);
}

double two_phase(double a, double peak, double b, double phase1_end, int64_t total, int64_t step) {
  if (step < 0) step = 0;
  if (step > total - 1) step = total - 1;
  const double s = static_cast<double>(step);
  if (s <= phase1_end) return cos_anneal(a, peak, s / phase1_end);
  const double end = static_cast<double>(total - 1);
  return cos_anneal(peak, b, (s - phase1_end) / (end - phase1_end));
}
}  // namespace

double OneCycle::lr(int64_t step) const {
  return two_phase(initial_lr_, max_lr_, final_lr_, phase1_end_, total_, step);
}

double OneCycle::momentum(int64_t step, double base_momentum, double max_momentum) const {
  return two_phase(max_momentum, base_momentum, max_momentum, phase1_end_, total_, step);
}

}  // namespace kestrel::optim
