// CUDA softmax and classification losses (engine/ops/loss.h), matching
// engine/cpu/loss.h. Tensors are contiguous and on one CUDA device. Loss
// values stay on the device: forwards return a scalar tensor in the logits'
// dtype and backwards read the upstream gradient from its device tensor, so
// neither synchronizes with the host. Cross-entropy (hard and soft targets)
// runs on kernels/softmax_xent.h (f32, f16, bf16); softmax, focal loss and
// distillation have their own kernels (f32, f16, bf16, f64), accumulating in
// f32 (f64 for f64). Compiles; untested on GPU at the time of writing.
#pragma once
#include "engine/tensor.h"

namespace kestrel::gpu {

// x viewed as [outer, n, inner], softmax over n.
void softmax_forward(const Tensor& x, int64_t outer, int64_t n, int64_t inner, bool log, const Tensor& y);
void softmax_backward(const Tensor& y, const Tensor& gy, int64_t outer, int64_t n, int64_t inner, bool log,
                      const Tensor& gx);

// Class labels i64 [N] on the device -> i32 [N] on the device. Raises
// ValueError for a label outside [0, classes): the check copies the N labels
// to the host (one small synchronizing copy; the loss itself never syncs).
Tensor labels_to_i32(const Tensor& target, int64_t classes, const char* op);

// Mean over rows of cross-entropy with label smoothing; labels from labels_to_i32.
// When grad_rows is given it receives d loss_row / d logits (logits dtype, not yet
// scaled by the upstream gradient and 1/N): the fused kernel computes it in the same pass.
Tensor cross_entropy_forward(const Tensor& logits, const Tensor& labels_i32, double label_smoothing,
                             Tensor* grad_rows);
// Soft targets q (logits' dtype and shape).
Tensor cross_entropy_soft_forward(const Tensor& logits, const Tensor& q, Tensor* grad_rows);
// grad_rows * upstream / N, upstream a scalar device tensor.
Tensor scale_row_grads(const Tensor& grad_rows, const Tensor& upstream);
// d cross_entropy_soft / d q = -(upstream / N) * log_softmax(logits).
Tensor cross_entropy_soft_target_grad(const Tensor& logits, const Tensor& upstream);

// Per-row log-sum-exp state a loss keeps for its backward: f32 [N] (f64 for f64 logits).
Tensor focal_forward(const Tensor& logits, const Tensor& labels_i32, double gamma, double alpha, Tensor* lse);
Tensor focal_backward(const Tensor& logits, const Tensor& labels_i32, double gamma, double alpha, const Tensor& lse,
                      const Tensor& upstream);

// T^2 * mean over rows of KL(softmax(teacher/T) || softmax(student/T)).
Tensor kl_distill_forward(const Tensor& student, const Tensor& teacher, double temperature, Tensor* lse_student,
                          Tensor* lse_teacher);
Tensor kl_distill_backward(const Tensor& student, const Tensor& teacher, double temperature,
                           const Tensor& lse_student, const Tensor& lse_teacher, const Tensor& upstream);

}  // namespace kestrel::gpu
