// Softmax and the classification losses. Logits are [N, C].
#pragma once
#include "engine/tensor.h"

namespace kestrel {

Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

// Hard targets (i64 [N]) with optional label smoothing, mean over the batch (PyTorch's formula).
Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing = 0.0);
// Soft targets [N, C] (MixUp, CutMix, distillation): mean over batch of -sum(p * log_softmax).
Tensor cross_entropy_soft(const Tensor& logits, const Tensor& target_probs);
// Focal loss (Lin et al. 2017): mean of -alpha * (1 - p_t)^gamma * log p_t.
Tensor focal_loss(const Tensor& logits, const Tensor& target, double gamma = 2.0, double alpha = 1.0);
// Distillation: T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean over batch.
Tensor kl_div_distill(const Tensor& student_logits, const Tensor& teacher_logits, double temperature);

}  // namespace kestrel
