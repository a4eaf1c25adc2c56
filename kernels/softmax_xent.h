// Softmax cross-entropy over logits [B, K] (element type dt, row-contiguous),
// fused forward and backward in one pass per row:
//   targets t = (1 - eps) * onehot(label) + eps / K    (hard labels, label smoothing eps)
//            or t = soft_targets[b]                     (mixup / cutmix / distillation)
//   loss[b]   = sum_k t_k * (logsumexp(z) - z_k)        (f32)
//   dlogits   = (softmax(z) * sum_k t_k - t) * grad_scale  (dt; skipped when null)
// A label outside [0, K) makes that row's loss and gradient NaN (the engine
// validates labels before launching). Compiles; untested on GPU.
#pragma once
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

struct SoftmaxXentShape {
  int B = 1;
  int K = 1;
};

cudaError_t softmax_cross_entropy(KDType dt, const SoftmaxXentShape& s, const void* logits, const int32_t* labels,
                                  const float* soft_targets, float label_smoothing, float grad_scale, float* loss,
                                  void* dlogits, cudaStream_t stream);

}  // namespace kestrel::kernels
