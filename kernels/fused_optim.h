// Fused optimizer updates over many parameter tensors in few launches
// (multi-tensor: each launch carries up to kOptimTensorsPerLaunch tensors and
// a block table by value in its kernel arguments). Parameters and optimizer
// state are f32 (master weights); gradients are f32, f16 or bf16 and are
// multiplied by grad_scale (1 / loss scale) before use. When skip_flag (device
// int) is non-null and non-zero, the update is skipped entirely (the dynamic
// loss scaler found an inf/nan). Semantics follow torch.optim.SGD, AdamW and RMSprop.
// Pointer arrays and sizes are host arrays. Compiles; untested on GPU.
#pragma once
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

constexpr int kOptimTensorsPerLaunch = 36;

struct SgdArgs {
  float lr = 0.1f;
  float momentum = 0.9f;
  float dampening = 0.f;
  float weight_decay = 0.f;
  bool nesterov = false;
  bool first_step = false;  // momentum buffer is initialised to the gradient, as PyTorch
  float grad_scale = 1.f;
};

struct AdamWArgs {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;
  int step = 1;  // 1-based step count after this update, for bias correction
  float grad_scale = 1.f;
};

cudaError_t sgd_momentum_multi(KDType grad_dt, int count, float* const* params, const void* const* grads,
                               float* const* momentum_bufs, const int64_t* sizes, const SgdArgs& a,
                               const int* skip_flag, cudaStream_t stream);

struct RMSpropArgs {
  float lr = 1e-2f;
  float alpha = 0.99f;
  float eps = 1e-8f;
  float weight_decay = 0.f;
  float momentum = 0.f;  // 0: no momentum buffer (its pointers may be null)
  float grad_scale = 1.f;
};

cudaError_t rmsprop_multi(KDType grad_dt, int count, float* const* params, const void* const* grads,
                          float* const* square_avg, float* const* momentum_bufs, const int64_t* sizes,
                          const RMSpropArgs& a, const int* skip_flag, cudaStream_t stream);

cudaError_t adamw_multi(KDType grad_dt, int count, float* const* params, const void* const* grads,
                        float* const* exp_avg, float* const* exp_avg_sq, const int64_t* sizes, const AdamWArgs& a,
                        const int* skip_flag, cudaStream_t stream);

}  // namespace kestrel::kernels
