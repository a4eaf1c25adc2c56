// kestrel export: a trained checkpoint as an ONNX graph (opset 17) for
// onnxruntime, TensorRT and edge runtimes. The graph takes PyTorch's input:
// [N, C, H, W] float32, normalized with the mean/std stored in its metadata.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "engine/io/onnx_export.h"
#include "engine/text.h"
#include "tools/lib/checkpoint.h"

namespace kestrel::cli {

namespace {

struct ExportArgs {
  std::string checkpoint;
  std::string out;
  int64_t batch = 0;  // 0: dynamic
  bool overwrite = false;
};

// "0.4914, 0.4822, 0.4465"
std::string channel_values(const std::vector<float>& v) {
  return join(v, ", ", [](float x) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.4g", static_cast<double>(x));
    return std::string(buf);
  });
}

void run_export(const ExportArgs& a) {
  namespace fs = std::filesystem;
  KCHECK(io::onnx_export_available(), ValueError,
         "export: this build has no ONNX support (tools/setup.sh installs libonnx-dev; then rebuild)");
  KCHECK(a.batch >= 0, ValueError, "export: --batch must be >= 1 (or 0 for a dynamic batch), got ", a.batch);
  const std::string out = a.out.empty() ? fs::path(a.checkpoint).replace_extension(".onnx").string() : a.out;
  std::error_code same_error;
  KCHECK(!fs::equivalent(out, a.checkpoint, same_error), IOError, "export: ", out,
         " is the checkpoint itself; give another -o");
  KCHECK(!fs::is_directory(out), IOError, "export: ", out, " is a folder; give -o a file path (e.g. ",
         (fs::path(out) / fs::path(a.checkpoint).filename()).replace_extension(".onnx").string(), ")");
  KCHECK(a.overwrite || !fs::exists(out), IOError, "export: ", out, " exists; pass --overwrite to replace it");
  io::check_folder_of(out, "export");

  tools::LoadedModel loaded = tools::load_checkpoint(a.checkpoint);
  const tools::ModelInfo& info = loaded.info;
  io::OnnxExportOptions o;
  o.dynamic_batch = a.batch == 0;
  o.batch = a.batch == 0 ? 1 : a.batch;
  o.metadata = info.to_metadata();
  o.metadata["input_layout"] = "NCHW float32; pixels in [0,1], minus mean, divided by std (per channel)";
  const io::OnnxExportSummary s =
      io::export_onnx(*loaded.model, {1, info.height, info.width, info.in_channels}, out, o);

  const std::string ops =
      join(s.op_counts, ", ", [](const auto& count) { return count.first + " " + std::to_string(count.second); });
  std::printf("exported %s (%lld classes) to %s\n", info.model.c_str(), static_cast<long long>(info.num_classes),
              out.c_str());
  std::printf("  opset %lld, %lld nodes (%s), %lld initializers, %.2f MB\n", static_cast<long long>(io::kOnnxOpset),
              static_cast<long long>(s.nodes), ops.c_str(), static_cast<long long>(s.initializers),
              static_cast<double>(s.file_bytes) / 1e6);
  std::printf("  input  '%s' [%s, %lld, %lld, %lld] float32, normalized with mean [%s], std [%s]\n",
              o.input_name.c_str(), o.dynamic_batch ? "batch" : std::to_string(o.batch).c_str(),
              static_cast<long long>(info.in_channels), static_cast<long long>(info.height),
              static_cast<long long>(info.width), channel_values(info.mean).c_str(), channel_values(info.std).c_str());
  std::printf("  output '%s' [%s, %lld] logits\n", o.output_name.c_str(),
              o.dynamic_batch ? "batch" : std::to_string(o.batch).c_str(), static_cast<long long>(info.num_classes));
}

}  // namespace

void register_export(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand("export", "Write a checkpoint as an ONNX graph (opset 17, NCHW input)");
  cmd->add_option("--checkpoint,-c", a->checkpoint, "model checkpoint (.safetensors from kestrel train)")->required();
  cmd->add_option("--out,-o", a->out, "the .onnx file (default: the checkpoint's path with .onnx)");
  cmd->add_option("--batch", a->batch, "a fixed batch size; 0 leaves the batch dim free")->capture_default_str();
  cmd->add_flag("--overwrite", a->overwrite, "replace an existing file");
  cmd->callback([a] { run_export(*a); });
}

}  // namespace kestrel::cli
