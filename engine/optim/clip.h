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
// is the one host wait.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, bool error_if_nonfinite = false);

// clip_grad_norm_ without the host wait, for the training loop: when every
// gradient is on one CUDA device, the norm and the clip factor never leave
// it, so the host queues the next step at once. Returns the norm as a
// one-element f64 tensor on the gradients' device (the CPU otherwise). The
// clipped gradients are bit-identical to clip_grad_norm_'s.
Tensor clip_grad_norm_no_sync_(const std::vector<Tensor>& params, double max_norm);

// The global L2 norm of the gradients, without changing them.
double grad_norm(const std::vector<Tensor>& params);

// The factor clip_grad_norm_ multiplies the gradients by: max_norm / (norm +
// 1e-6) when that is below 1 or the norm is not finite (torch's rule), else 1.
double clip_coefficient(double norm, double max_norm);

// Multiplies every gradient in place by factor, rounded once to its dtype;
// CUDA gradients take a few multi-tensor launches.
void scale_grads_(const std::vector<Tensor>& params, double factor);

}  // namespace kestrel::optim
