// The mean of several checkpoints of one model, tensor by tensor, as timm's
// avg_checkpoints.py: weights and batch-norm statistics averaged in double
// precision, counters (num_batches_tracked) the largest. Averaging the best
// epochs of one run (train --checkpoint-hist) often beats each of them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tools/lib/checkpoint.h"

namespace kestrel::tools {

struct AveragedModel {
  nn::ModulePtr model;
  ModelInfo info;
};

// Every checkpoint must hold the same model trained on the same data (classes,
// input size and normalization); int8 (qat) checkpoints are refused.
AveragedModel average_checkpoints(const std::vector<std::string>& paths);

// The checkpoints a run folder kept (train --checkpoint-hist), best first: the
// `top` best, or all of them when top is 0.
std::vector<std::string> kept_checkpoints(const std::string& run_dir, int64_t top);

}  // namespace kestrel::tools
