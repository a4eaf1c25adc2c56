// CUDA ghost module (GhostNet) with its batch norms folded into the convs:
// the primary 1x1 convolution (a cuBLAS GEMM with ldc = C_out) writes the
// first C_primary channels of the output, a column kernel adds the bias and
// applies the activation in place, and kernels/ghost.h's cheap depthwise
// convolution writes the remaining channels in place: no concat copy. The
// backward runs on one gradient buffer split by channel ranges (pitched
// views, no copies between the steps). x f32, f16 or bf16; weights and biases
// in x's dtype. Compiles; untested on GPU at the time of writing.
#pragma once
#include <vector>

#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

struct GhostForward {
  Tensor y;                        // [N, H, W, C_primary + C_cheap]
  Tensor pre_primary, pre_cheap;   // pre-activations [M, C], kept when asked and act != None
};

// x [N,H,W,C_in] contiguous; w_primary [C_primary, C_in]; w_cheap
// [C_cheap, K, K, 1] with C_cheap <= C_primary and K odd; biases [C] or
// undefined.
GhostForward ghost_module_forward(const Tensor& x, const Tensor& w_primary, const Tensor& b_primary,
                                  const Tensor& w_cheap, const Tensor& b_cheap, Activation act, bool keep_for_backward);

struct GhostGrads {
  Tensor x, w_primary, b_primary, w_cheap, b_cheap;  // undefined where not requested
};

// y and the pre-activations from the forward. need: x, w_primary, b_primary,
// w_cheap, b_cheap.
GhostGrads ghost_module_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w_primary,
                                 const Tensor& w_cheap, const GhostForward& saved, Activation act,
                                 const std::vector<bool>& need);

}  // namespace kestrel::gpu
