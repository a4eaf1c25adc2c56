// Precise batch-norm statistics (`kestrel train --precise-bn N`): before an
// evaluation, with the weights held fixed, each batch norm's running mean and
// variance become the plain average over N batches of training images, as in
// Wu and Johnson, "Rethinking 'Batch' in BatchNorm" (2021). The momentum
// average that training keeps lags weights that move fast (a high learning
// rate, few steps an epoch), and an eval-mode score then measures that lag
// rather than the weights (docs/results.md, "Batch-norm statistics").
#pragma once
#include <cstdint>

#include "data/loader.h"
#include "engine/nn/module.h"

namespace kestrel::tools {

// Runs `model` in training mode without gradients over the first `batches`
// batches of `epoch` of `loader` (on the model's device), each batch norm
// averaging the statistics it sees with equal weights (PyTorch's momentum=None).
// Momentum, num_batches_tracked, the init generator (dropout's draws) and the
// model's mode are left as they were. Returns the batches used (fewer when an epoch has fewer).
// Throws ValueError when the model has no batch norm that is not folded.
int64_t recompute_batch_norm_statistics(nn::Module& model, data::BatchLoader& loader, int64_t epoch, int64_t batches);
// Whether the model has a batch norm that is not folded (what the above recomputes).
bool has_batch_norm_to_recompute(nn::Module& model);

}  // namespace kestrel::tools
