// A training ghost module (GhostNet, Han et al., 2020) after its primary 1x1
// conv, as one op, with batch statistics:
//   a = act(bn_primary(z))                            [N,H,W,C]
//   b = act(bn_cheap(depthwise_KxK(a, w_cheap)))      [N,H,W,C]
//   y = concat(a, b, channels)                        [N,H,W,2C]
// Composed, a and b are written, then copied into y, and the backward copies
// y's gradient apart again (10% of an EMN training step). Here the norms
// write into y's halves, the depthwise conv reads a there, and the backward
// reads the gradient's halves in place; on the CPU outputs, gradients and
// running statistics equal the composition's bit for bit
// (tests/test_ghost_norms.cpp). On CUDA the same steps run on the norm and
// depthwise kernels, which take row pitches (tests/test_cuda_fused_modules.cpp,
// against the CPU; emulator-tested, never run on a GPU yet).
#pragma once
#include "engine/ops/elementwise.h"
#include "engine/ops/norm.h"
#include "engine/tensor.h"

namespace kestrel {

// One batch norm's tensors ([C]; weight and bias may be undefined) and settings.
struct GhostNorm {
  Tensor weight, bias, running_mean, running_var;
  BatchNormParams params;
};

// Whether ghost_norms takes these: both norms in training mode, w_cheap a
// [C,K,K,1] depthwise weight with K odd, no trace that names each layer
// (summary, ONNX export); on the CPU f32 or f64 tensors; on CUDA f32, f16 or
// bf16 activations, f32 norm tensors, w_cheap in f32 or z's dtype, K <= 7.
bool ghost_norms_apply(const Tensor& z, const GhostNorm& primary, const Tensor& w_cheap, const GhostNorm& cheap);

// z: the primary conv's output [N,H,W,C]; "same" padding, stride 1, no bias
// on the cheap conv. The running statistics are updated in place.
Tensor ghost_norms(const Tensor& z, const GhostNorm& primary, const Tensor& w_cheap, const GhostNorm& cheap,
                   Activation act);

}  // namespace kestrel
