// The mean of several checkpoints of one model, tensor by tensor, as timm's
// avg_checkpoints.py: weights and batch-norm statistics averaged in double
// precision, counters (num_batches_tracked) the largest. The mean of a long
// run's best epochs (train --checkpoint-hist) can beat each of them; that of
// a short one-cycle run did not (docs/results.md).
#pragma once
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

}  // namespace kestrel::tools
