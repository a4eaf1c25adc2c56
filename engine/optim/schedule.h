// Learning-rate schedules as pure functions of the optimizer step (0-based):
// lr(step) has no hidden state, so a resumed run only needs the step count.
// Call opt.set_lr(schedule.lr(step)) before each opt.step().
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace kestrel::optim {

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double lr(int64_t step) const = 0;
};

// Linear warmup from warmup_start_lr (step 0) to base_lr (step warmup_steps),
// then half a cosine from base_lr to min_lr reached at step total_steps, and
// min_lr after that. warmup_steps may be 0.
class WarmupCosine : public LrSchedule {
 public:
  WarmupCosine(double base_lr, int64_t total_steps, int64_t warmup_steps = 0, double min_lr = 0.0,
               double warmup_start_lr = 0.0);
  double lr(int64_t step) const override;

 private:
  double base_, min_, start_;
  int64_t total_, warmup_;
};

// base_lr * gamma^(number of milestones <= step). StepDecay(base, 30, 0.1) is
// torch's StepLR(step_size=30); the milestone form is MultiStepLR.
class StepDecay : public LrSchedule {
 public:
  StepDecay(double base_lr, int64_t step_size, double gamma);
  StepDecay(double base_lr, std::vector<int64_t> milestones, double gamma);
  double lr(int64_t step) const override;

 private:
  double base_, gamma_;
  int64_t step_size_ = 0;
  std::vector<int64_t> milestones_;
};

// Linear warmup from start_lr (step 0) to what `after` gives at warmup_steps,
// then `after` itself: the warmup of any schedule (timm's warmup_t and warmup_lr_init).
class LinearWarmup : public LrSchedule {
 public:
  LinearWarmup(std::unique_ptr<LrSchedule> after, int64_t warmup_steps, double start_lr = 0.0);
  double lr(int64_t step) const override;

 private:
  std::unique_ptr<LrSchedule> after_;
  int64_t warmup_;
  double start_;
};

// torch.optim.lr_scheduler.OneCycleLR with anneal_strategy='cos',
// three_phase=False: cosine from max_lr/div_factor up to max_lr over the first
// pct_start*total_steps - 1 steps, then cosine down to
// max_lr/(div_factor*final_div_factor) at step total_steps - 1. Steps past the
// end stay at the final lr (torch raises there instead).
class OneCycle : public LrSchedule {
 public:
  OneCycle(double max_lr, int64_t total_steps, double pct_start = 0.3, double div_factor = 25.0,
           double final_div_factor = 1e4);
  double lr(int64_t step) const override;
  // torch's cycle_momentum: base_momentum where lr is max, max_momentum at the ends.
  double momentum(int64_t step, double base_momentum = 0.85, double max_momentum = 0.95) const;

 private:
  double max_lr_, initial_lr_, final_lr_;
  int64_t total_;
  double phase1_end_;
};

}  // namespace kestrel::optim
