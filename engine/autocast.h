// Autocast: a thread-local scope in which the matrix ops (conv2d, linear,
// matmul) on CUDA tensors compute in f16 or bf16 while the model keeps f32
// master weights, as torch.autocast("cuda").
//
// Policy (applies only to CUDA tensors; CPU tensors are never cast):
// - conv2d, linear and matmul cast each f32 operand (input, weight, bias) to
//   the autocast dtype with the autograd-recorded Tensor::to(DType), so the
//   output is f16/bf16 and the f32 weights still receive f32 gradients
//   through the cast's backward.
// - Every other op runs in the dtype of its inputs. Batch norm takes a half
//   input with its f32 parameters and statistics; pools, activations,
//   dropout/drop_path masks, concat and the residual adds stay in the half
//   dtype the activations arrive in.
// - A binary elementwise op between a half activation (of the autocast dtype)
//   and an f32 tensor casts the f32 side to the half dtype (recorded, so its
//   gradient comes back in f32): activations stay in one dtype end to end,
//   which the fused batch norm's residual input needs.
//   autocast_binary_operands() implements the rule; add/sub/mul/div apply it.
//   No model in models/ mixes them today: their
//   only parameters are conv, batch norm and linear weights, and dropout /
//   drop_path masks take the dtype of x.
// - Losses are not autocast: the trainer casts the logits to f32 first.
// Backward closures never consult the scope: backward() turns it off for its
// whole pass (engine/autograd.cpp); only forward calls are cast.
#pragma once
#include <utility>

#include "engine/tensor.h"

namespace kestrel {

class AutocastGuard {
 public:
  // F16 or BF16 turns autocast on inside the scope; F32 turns it off (e.g.
  // for a part of the model that must stay in f32). Other dtypes are a ValueError.
  explicit AutocastGuard(DType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DType previous_;
};

// F16 or BF16 inside an active scope on this thread, else F32.
DType autocast_dtype();
bool autocast_enabled();

// t cast to the autocast dtype when autocast is on, t is an f32 CUDA tensor;
// otherwise t itself (also when undefined).
Tensor autocast_operand(const Tensor& t);

// The operands of a binary elementwise op under the policy above: when
// autocast is on and one side is a CUDA tensor of the autocast dtype while the
// other is f32, the f32 side is cast; otherwise both come back unchanged.
std::pair<Tensor, Tensor> autocast_binary_operands(const Tensor& a, const Tensor& b);

}  // namespace kestrel
