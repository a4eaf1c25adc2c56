// Prepares a model for int8 quantization-aware training (engine/nn/quant.h):
// each batch norm that only normalizes a convolution's output is folded into
// that convolution, and every Conv2d and Linear the forward pass calls is
// quantized. The model's eval-mode forward pass is traced once, on the CPU, to
// find them. Squeeze-and-excitation blocks switch from their fused op to
// their two conv modules first, so those are quantized too. Convolutions
// inside other fused ops (coordinate attention) and batch norms that cannot
// fold (before a convolution, as DenseNet's) stay in float.
#pragma once
#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace kestrel::models {

struct QuantizationReport {
  int64_t convs = 0, linears = 0, folded_norms = 0;
  std::vector<std::string> float_layers;  // conv/linear ops left in float: "scope (op)"
};

// input_nhwc: [N, H, W, C] of the model's input (N is ignored). The model must
// be on the CPU and not prepared already; it is left in the mode it came in.
// The folded weights are exact in eval mode (running statistics).
QuantizationReport prepare_quantization(nn::Module& model, const Shape& input_nhwc);

// Whether prepare_quantization has run on this model.
bool is_quantized(const nn::Module& model);

}  // namespace kestrel::models
