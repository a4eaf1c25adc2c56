// ONNX export: a model's eval-mode forward pass, traced on the CPU (engine/trace.h)
// and written as an ONNX graph that onnxruntime and other runtimes load.
//
// The graph takes and gives PyTorch's layouts: input [N, C, H, W] float32,
// weights OIHW under the model's state_dict names. Kestrel's NHWC activations
// become NCHW at the boundary of every op, so no transposes are added except
// where a reshape or permute really needs NHWC order.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace kestrel::io {

struct OnnxExportOptions {
  bool dynamic_batch = true;  // input/output dim 0 is "batch"; else fixed at the traced batch
  int64_t batch = 1;          // the traced batch size (and the fixed one when !dynamic_batch)
  std::string input_name = "input";
  std::string output_name = "logits";
  std::map<std::string, std::string> metadata;  // stored as the model's metadata_props
};

struct OnnxExportSummary {
  int64_t nodes = 0;
  int64_t initializers = 0;
  int64_t weight_bytes = 0;
  int64_t file_bytes = 0;
  std::map<std::string, int64_t> op_counts;  // ONNX op type -> how many nodes
};

constexpr int64_t kOnnxOpset = 17;

// Whether this build can write ONNX (it needs libonnx and protobuf).
bool onnx_export_available();

// Traces `model` in eval mode on a [batch, H, W, C] input (input_nhwc gives
// H, W, C; its dim 0 is ignored) and writes the graph to `path` atomically.
// The model is left in the mode it came in. Throws ValueError for an op with
// no ONNX form (naming it and its module) and IOError when `path` cannot be written.
OnnxExportSummary export_onnx(nn::Module& model, const Shape& input_nhwc, const std::string& path,
                              const OnnxExportOptions& options = {});

}  // namespace kestrel::io
