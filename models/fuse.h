// Inference fusion: each batch norm that alone reads a convolution's output is
// folded into that convolution's weights and bias, and the activation after it
// moves into the convolution's epilogue (conv2d_act), so an eval forward pass
// runs one op and one pass over memory where it ran two or three. The result
// equals the eval-mode model up to float rounding. For the CPU: on CUDA the
// zoo's fused kernels (depthwise + BN, ghost, coordinate attention) fold
// their norms themselves, and need them unfolded.
#pragma once
#include "engine/nn/module.h"

namespace kestrel::models {

struct InferenceFusion {
  int64_t folded_norms = 0;       // batch norms folded into a convolution
  int64_t fused_activations = 0;  // of those, activations moved into the convolution
};

// input_nhwc: [N, H, W, C] of the model's input (N is ignored). The model must
// be on the CPU, neither quantized nor fused already; it is left in eval mode,
// and training it afterwards is an error (its norms' statistics are gone).
InferenceFusion fuse_for_inference(nn::Module& model, const Shape& input_nhwc);

// Whether fuse_for_inference has folded a norm of this model.
bool is_fused_for_inference(const nn::Module& model);

}  // namespace kestrel::models
