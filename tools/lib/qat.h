// kestrel qat: int8 quantization-aware fine-tuning of a float checkpoint.
// The float model's batch norms fold into its convolutions, every Conv2d and
// Linear is fake-quantized (models/quantize.h), the activation ranges are
// calibrated on training images (post-training quantization), and then the
// usual training loop fine-tunes the quantized model (tools/lib/trainer.h).
#pragma once
#include <string>

#include "data/loader.h"
#include "engine/nn/module.h"
#include "models/quantize.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/train_config.h"

namespace kestrel::tools {

// Fills the model half of a qat run's config from its float checkpoint:
// model, width and depth multipliers, image size and classes, and the data set.
// From the float run's config.json, when it sits beside the checkpoint, the
// data folder (same data set), --skip-bad and the image augmentation: the
// fine-tune sees the images the model was trained on. Keys in `requested`
// (what the command line or a recipe set, TrainConfig::to_json keys) stay.
void configure_from_float_checkpoint(TrainConfig& c, const nlohmann::json& requested = nlohmann::json::object());

// Loads the float checkpoint's weights into `model` (built from `run`, still
// on the CPU) after checking it fits the run, then prepares quantization.
// Prints what was quantized when `verbose`.
models::QuantizationReport load_for_quantization(nn::Module& model, const ModelInfo& run,
                                                 const LoadedModel& float_checkpoint, const std::string& path,
                                                 bool verbose);

// Post-training calibration: `batches` batches (all when <= 0) in eval mode,
// without gradients, each observed by every range.
void calibrate_ranges(nn::Module& model, data::DataLoader& loader, int64_t batches, const Device& device,
                      bool progress);

}  // namespace kestrel::tools
