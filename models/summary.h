// Model summary from the op trace: a layer table (name, type, output shape,
// parameters, multiply-adds), totals, and the receptive field.
//
// Multiply-adds follow fvcore's convention: one per weight use in conv, linear
// and matmul (a 3x3 conv producing an HxWxC map from C' channels counts
// H*W*C*9*C'/groups), one per element for batch norm (fvcore counts 2 in eval
// with affine; either way under 1% of a network's total), zero for activations,
// pooling and elementwise ops. Each op records its own count in the trace. Published "FLOPs" of EfficientNet-B0 (0.39B), ResNet18 (1.82B) and
// MobileNetV2 (0.30B) are multiply-adds in this sense.
#pragma once
#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace kestrel::models {

struct SummaryRow {
  std::string name;  // dotted module path, "(model)" for ops run by the root
  std::string type;  // module type, or the op for ops outside any leaf module
  Shape output_shape;
  int64_t params = 0;  // parameters owned directly by this module
  int64_t macs = 0;
};

struct ModelSummary {
  std::vector<SummaryRow> rows;
  int64_t total_params = 0;      // trainable
  int64_t total_macs = 0;        // multiply-adds for one forward at batch 1
  int64_t receptive_field = 0;   // pixels, along the deepest conv/pool path
  int64_t effective_stride = 0;  // input pixels per step of the last feature map
  Shape input_shape;             // NHWC
  Shape output_shape;
};

// Runs one eval-mode, no-grad forward on zeros of input_nhwc ([1,H,W,C]) under a
// TraceRecorder and reads the trace. The receptive field follows the data along
// every path (storages recorded in the trace) and takes the largest; global
// context (SE and coordinate-attention pooling, the final global pool) is not
// counted, as RF calculators conventionally do.
ModelSummary summarize(nn::Module& model, const Shape& input_nhwc);

// The table as text, with totals and the receptive field.
std::string format_summary(const std::string& model_name, const ModelSummary& s);

}  // namespace kestrel::models
