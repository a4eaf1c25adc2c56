// Model checkpoints: weights in PyTorch's names and layouts (safetensors), with
// what is needed to rebuild the model and read its inputs kept in the metadata.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/io/safetensors.h"
#include "engine/nn/module.h"

namespace kestrel::tools {

struct ModelInfo {
  std::string model;
  int64_t num_classes = 0;
  int64_t in_channels = 3;
  int64_t height = 32, width = 32;
  bool cifar_stem = false;
  double width_mult = 1.0;
  double depth_mult = 1.0;  // EfficientNet-style block repeats multiplier
  bool quantized = false;   // int8 quantization-aware (models/quantize.h): BNs folded, ranges observed
  std::string dataset;
  std::vector<std::string> classes;
  std::vector<float> mean, std;  // per-channel normalization of [0,1] pixels
  // Evaluation framing: 1 resizes the whole image to height x width; below 1
  // the image is scaled to cover (height, width) / crop_fraction and its centre
  // cropped, as torchvision and timm evaluate ImageNet models (224 of 256: 0.875).
  double crop_fraction = 1.0;

  io::Metadata to_metadata() const;
  static ModelInfo from_metadata(const io::Metadata& m, const std::string& source);
};

// dropout / drop_path < 0: the model's defaults (they change no parameters).
// A quantized model comes prepared for its quantized weights.
nn::ModulePtr build_from_info(const ModelInfo& info, double dropout = -1.0, double drop_path = -1.0);

// Checks that a checkpoint's model reads a run's inputs and gives its classes:
// same classes, image size, channels and normalization. `what` names the
// checkpoint ("--teacher a.safetensors") and `run` the other side ("the student").
void check_fits_run(const ModelInfo& checkpoint, const ModelInfo& run_info, const std::string& what,
                    const std::string& run);

// Tensors whose names start with "__" are training state, not model weights.
inline bool is_training_state_name(const std::string& n) { return n.rfind("__", 0) == 0; }

// Writes atomically (temporary file, then rename).
void save_checkpoint(const std::string& path, const nn::Module& model, const ModelInfo& info,
                     const nn::NamedTensors& extra = {}, const io::Metadata& extra_metadata = {});

struct LoadedModel {
  nn::ModulePtr model;
  ModelInfo info;
  io::SafetensorsContents contents;
};
// IOError unless `path` is a file: "<what> not found: <path>", or for a run
// folder or its JSON files, which checkpoint beside them was meant.
void check_checkpoint_path(const std::string& path, const std::string& what = "checkpoint");
// Rebuilds the model the checkpoint names and loads its weights (strict).
LoadedModel load_checkpoint(const std::string& path);
// The training run's config.json beside a checkpoint (TrainConfig::to_json:
// the data it was trained on, how it was augmented); null when there is none.
nlohmann::json training_config_beside(const std::string& checkpoint);
// Loads a checkpoint's weights into an existing model; mismatches are listed.
void load_weights(const io::SafetensorsContents& contents, nn::Module& model, const std::string& source);

// A loaded model that will only infer on `device`: on the CPU, and unless it
// is quantized (its norms are folded already), its batch norms are folded
// into their convolutions (models/fuse.h). On CUDA the model is left as built.
void fold_for_inference_on(const LoadedModel& loaded, Device device);

}  // namespace kestrel::tools
