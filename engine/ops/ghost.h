// Ghost module (GhostNet, Han et al., 2020) as one op, with its batch norms
// already folded into the convolutions (eval mode):
//   p = act(conv1x1(x, w_primary) + b_primary)                        [N,H,W,C_primary]
//   q = act(depthwise_KxK(p[..., :C_cheap], w_cheap) + b_cheap)        [N,H,W,C_cheap]
//   y = concat(p, q, channels)                                          [N,H,W,C_primary+C_cheap]
// w_primary [C_primary,1,1,C_in] (OHWI) or [C_primary,C_in]; w_cheap
// [C_cheap,K,K,1] with 1 <= C_cheap <= C_primary, K odd ("same" padding,
// stride 1); biases [C] or undefined; all in x's dtype. On CUDA the primary
// GEMM and the cheap depthwise kernel (kernels/ghost.h) write straight into
// y's channel ranges (no concat) when K <= 7 and x is f32/f16/bf16; on the
// CPU a model fused for inference does the same (ghost_in_place,
// engine/ops/conv.h), and training with batch norms does it with
// ghost_norms (engine/ops/ghost_norms.h); otherwise it is the composition
// above.
#pragma once
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel {

Tensor ghost_module(const Tensor& x, const Tensor& w_primary, const Tensor& b_primary, const Tensor& w_cheap,
                    const Tensor& b_cheap, Activation act);

}  // namespace kestrel
