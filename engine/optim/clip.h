// Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace kestrel::optim {

// The L2 norm of all gradients together (parameters without a gradient are
// skipped). When it exceeds max_norm, every gradient is scaled in place by
// max_norm / (norm + 1e-6). Returns the norm before clipping. A non-finite
// norm throws ValueError when error_if_nonfinite, else gradients are scaled
// as torch does (they become NaN) and the norm is returned for the caller to see.
// CUDA gradients are reduced and scaled on their device; reading the norm back
// is the one synchronization.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, bool error_if_nonfinite = false);

// The global L2 norm of the gradients, without changing them.
double grad_norm(const std::vector<Tensor>& params);

}  // namespace kestrel::optim
