// Batch normalization over the channel (last) dim of NHWC activations, fused
// with an activation and an optional residual add:
//   y = act(gamma * (x - mean) * invstd + beta + residual)
// x, residual, y, dy, dx, dresidual: [M, C] contiguous, M = N*H*W, element
// type dt (f32, f16, bf16); except y (forward) and dy (backward), whose rows
// may lie y_pitch elements apart: a channel slice of a wider tensor (a
// training ghost module's halves). gamma, beta, running stats, saved stats and the
// parameter gradients are f32 [C]; gamma or beta may be null (1 and 0).
//
// Training statistics are Welford in f32 per thread, merged with Chan's
// formula across threads and splits in a fixed order (deterministic).
// running_var takes the unbiased batch variance, as PyTorch does.
//
// Launchers return the launch status and do not synchronize. Compiles;
// untested on GPU at the time of writing.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

struct BatchNormShape {
  int64_t M = 1;  // rows: N*H*W
  int C = 1;
  int64_t y_pitch = 0;  // elements from one row of y / dy to the next; 0 means C
  KESTREL_HD int64_t yp() const { return y_pitch > 0 ? y_pitch : C; }
};

struct BatchNormActArgs {
  float eps = 1e-5f;
  float momentum = 0.1f;  // running = (1 - momentum) * running + momentum * batch
  KAct act = KAct::None;
};

// f32 scratch shared by every launcher below; size depends only on the shape.
size_t batch_norm_act_workspace_bytes(const BatchNormShape& s);

// Training forward. running_mean / running_var may be null (not tracked).
// save_mean / save_invstd [C] receive the batch statistics for backward.
cudaError_t batch_norm_act_forward_training(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a,
                                            const void* x, const void* residual, const float* gamma,
                                            const float* beta, float* running_mean, float* running_var,
                                            float* save_mean, float* save_invstd, void* y, void* workspace,
                                            cudaStream_t stream);

// Inference forward from the running statistics.
cudaError_t batch_norm_act_forward_inference(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a,
                                             const void* x, const void* residual, const float* gamma,
                                             const float* beta, const float* running_mean, const float* running_var,
                                             void* y, void* workspace, cudaStream_t stream);

// Fused backward of the training forward: recomputes the pre-activation from
// x (and residual), so it needs no saved output. dx, dresidual, dgamma, dbeta
// may be null. dx may alias dy.
cudaError_t batch_norm_act_backward(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a, const void* dy,
                                    const void* x, const void* residual, const float* gamma, const float* beta,
                                    const float* save_mean, const float* save_invstd, void* dx, void* dresidual,
                                    float* dgamma, float* dbeta, void* workspace, cudaStream_t stream);

// Backward of the inference forward with the statistics as constants (eval
// mode): dx = gamma * invstd * dz, no batch terms. mean / invstd [C] are the
// running mean and 1 / sqrt(running_var + eps). dx, dresidual, dgamma, dbeta
// may each be null.
cudaError_t batch_norm_act_backward_frozen(KDType dt, const BatchNormShape& s, const BatchNormActArgs& a,
                                           const void* dy, const void* x, const void* residual, const float* gamma,
                                           const float* beta, const float* mean, const float* invstd, void* dx,
                                           void* dresidual, float* dgamma, float* dbeta, void* workspace,
                                           cudaStream_t stream);

}  // namespace kestrel::kernels
