// CUDA paths of engine/optim: fused multi-tensor SGD, AdamW and RMSprop updates
// (kernels/fused_optim.h), the global gradient norm and in-place scaling for
// clip_grad_norm_, and the EMA blend. Tensors are grouped into as few launches
// as their hyperparameters allow; every launch goes on the current stream of
// the tensors' device. Included by engine/optim in every build (no CUDA
// header here); defined only when the CUDA backend is compiled.
// Compiles; untested on a GPU at the time of writing.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace kestrel::gpu {

// One parameter's share of an SGD step. param: contiguous f32 on a CUDA
// device; grad: contiguous f32/f16/bf16, same device and shape; momentum_buffer:
// f32 like param, or undefined when momentum is 0. first: the buffer is set to
// the gradient (PyTorch's first momentum step).
struct SgdParamUpdate {
  Tensor param, grad, momentum_buffer;
  bool first = false;
  double lr = 0.0;
  double weight_decay = 0.0;
};
void sgd_step(const std::vector<SgdParamUpdate>& updates, double momentum, double dampening, bool nesterov);

// One parameter's share of an AdamW step; step is this update's 1-based count.
struct AdamWParamUpdate {
  Tensor param, grad, exp_avg, exp_avg_sq;
  int64_t step = 1;
  double lr = 0.0;
  double weight_decay = 0.0;
};
void adamw_step(const std::vector<AdamWParamUpdate>& updates, double beta1, double beta2, double eps);

// One parameter's share of an RMSprop step; momentum_buffer is undefined when
// momentum is 0.
struct RMSpropParamUpdate {
  Tensor param, grad, square_avg, momentum_buffer;
  double lr = 0.0;
  double weight_decay = 0.0;
};
void rmsprop_step(const std::vector<RMSpropParamUpdate>& updates, double alpha, double eps, double momentum);

// Sum of x*x over every element of every tensor (contiguous, floating, on
// CUDA devices), accumulated in f64 on the device; one synchronization per device.
double sum_of_squares(const std::vector<Tensor>& tensors);
// x *= factor in place (factor rounded to the tensor's precision once, as the CPU path).
void scale_(const std::vector<Tensor>& tensors, double factor);
// clip_grad_norm_ with no host wait: the global L2 norm of `tensors` (all on
// one CUDA device) is reduced, and the clip factor applied, on the device, in
// the rounding of the CPU path. Returns the norm as a one-element f64 tensor
// on that device.
Tensor clip_by_norm_(const std::vector<Tensor>& tensors, double max_norm);
// dst = dst + weight * (src - dst) in place, pairwise; floating, contiguous,
// same shape, dtype and device. Rounded as the CPU loop (no fused multiply-add);
// f16/bf16 are blended in f32 and rounded back.
void lerp_(const std::vector<Tensor>& dst, const std::vector<Tensor>& src, double weight);

}  // namespace kestrel::gpu
