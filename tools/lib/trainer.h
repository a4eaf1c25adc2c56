// The training loop behind `kestrel train`: data, model, optimizer, schedule,
// EMA, checkpoints, resume, logs and curves.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "data/loader.h"
#include "data/transforms.h"
#include "engine/nn/module.h"
#include "tools/lib/metrics.h"
#include "tools/lib/train_config.h"

namespace kestrel::tools {

struct TrainSummary {
  bool completed = false;  // false when stopped early by stop_after_steps (simulated kill) or a signal
  int interrupted_by = 0;  // SIGINT or SIGTERM when a signal stopped the run (saved mid-epoch)
  int64_t epochs_run = 0;
  int64_t epochs = 0;  // the run's length (a resumed run's own, from its saved recipe)
  int64_t global_step = 0;
  double best_top1 = 0.0;   // at the best epoch
  double best_score = 0.0;  // the best epoch's --eval-metric: top-1, top-5 or minus the val loss
  std::string eval_metric = "top1";  // the run's (a resumed run's own)
  int64_t best_epoch = -1;
  double final_top1 = 0.0;
  double seconds = 0.0;
  bool early_stopped = false;
  double teacher_top1 = -1.0;  // the teacher ensemble's test top-1 when distilling
  double float_top1 = -1.0;       // qat: the float checkpoint's test top-1
  double calibrated_top1 = -1.0;  // qat: the int8 model's after calibration, before fine-tuning
  std::string out_dir;
};

TrainSummary train(TrainConfig config);

// What --resume of the run in `out` would be asked to change: each field of
// `requested` (TrainConfig JSON keys a command sets) whose value differs from
// the run's saved recipe, as "--key value (the run's: value)". The fields a
// resumed run takes from the command (out, device, loader, workers,
// data_dir) are not compared. Empty when out holds no checkpoint.
std::vector<std::string> resume_conflicts(const std::string& out, const nlohmann::json& requested);

struct EvalResult {
  double loss = 0.0;
  ClassificationMetrics metrics;
  double seconds = 0.0;
  explicit EvalResult(int64_t classes) : metrics(classes) {}
};
// Runs the model over a loader in eval mode without gradients. Under an
// AutocastGuard (engine/autocast.h) the forward runs in f16/bf16 on CUDA; the
// logits are cast to f32 before the loss and metrics. With `tta`, each
// image's logits are the mean over its views (data::tta_views).
EvalResult evaluate(nn::Module& model, data::BatchLoader& loader, int64_t num_classes, bool progress,
                    const std::string& label = "eval", const std::optional<data::TTAOptions>& tta = std::nullopt);

}  // namespace kestrel::tools
