// The convolutions and linear layers of a model's eval-mode forward pass, as
// one trace on the CPU sees them, with the batch norm that each convolution's
// output feeds when that norm can fold into it. Shared by int8 preparation
// (models/quantize.h) and inference fusion (models/fuse.h).
#pragma once
#include <string>
#include <vector>

#include "engine/nn/layers.h"

namespace kestrel::models {

struct TracedLayer {
  std::string op, scope;  // "conv2d", "conv2d_act" or "linear"; the calling module's path
  // The module, when the op was called through it (its forward); null when the
  // op ran as a function or inside another module's fused op.
  nn::Conv2d* conv = nullptr;
  nn::Linear* linear = nullptr;
  // A batch norm that alone reads this conv's output, in eval mode, with the
  // activation and residual add it applies. Null unless the conv and the norm
  // each run once per forward pass, so folding one into the other is exact.
  nn::BatchNorm2d* norm = nullptr;
  Activation norm_act = Activation::None;
  bool norm_has_residual = false;
};

// input_nhwc: [N, H, W, C] of the model's input (N is ignored). The model must
// be on the CPU; it is left in the mode it came in.
std::vector<TracedLayer> trace_layers(nn::Module& model, const Shape& input_nhwc, const char* what);

// conv.weight *= s and conv.bias = (bias - running_mean) * s + beta, s = gamma /
// sqrt(running_var + eps), in place (the conv gains a bias if it had none).
// Exact in eval mode; the norm is left as it was.
void fold_norm_into_conv(nn::Conv2d& conv, const nn::BatchNorm2d& norm);

}  // namespace kestrel::models
