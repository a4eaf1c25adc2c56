#include "tools/lib/qat.h"

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "data/pinned_batch.h"
#include "engine/autograd.h"
#include "engine/nn/quant.h"
#include "tools/lib/progress.h"

namespace kestrel::tools {

void configure_from_float_checkpoint(TrainConfig& c, const nlohmann::json& requested) {
  const ModelInfo info = ModelInfo::from_metadata(io::load_safetensors_metadata(c.quantize_from), c.quantize_from);
  KCHECK(!info.quantized, ValueError, c.quantize_from,
         " is already quantized; kestrel qat starts from a float checkpoint (continue a qat run with --resume)");
  c.model = info.model;
  c.width_mult = info.width_mult;
  c.depth_mult = info.depth_mult;
  c.num_classes = info.num_classes;
  c.image_size = info.height == info.width ? info.height : 0;
  c.stem = info.cifar_stem ? "cifar" : "model";
  if (!requested.contains("dataset") && !info.dataset.empty()) c.dataset = info.dataset;
  if (!requested.contains("crop_pct")) c.crop_pct = info.crop_fraction;  // evaluated as the float model was

  const nlohmann::json run = training_config_beside(c.quantize_from);
  // A random resized crop is not cropped again with padding (as kestrel
  // train's default), unless asked or inherited from a run that did both.
  if (!c.random_resized_crop.empty() && !requested.contains("random_crop") &&
      (!run.is_object() || run.value("random_resized_crop", "").empty()))
    c.random_crop = false;
  if (!run.is_object()) return;
  std::vector<std::string> kept = {"skip_bad",     "random_crop",  "random_resized_crop", "hflip",
                                   "vflip",        "auto_augment", "randaugment",         "rotation",
                                   "color_jitter", "shift_scale_rotate", "ssr_limits",    "brightness_contrast",
                                   "hsv_shift",    "cutout",       "random_erase"};
  if (run.value("dataset", "") == c.dataset) kept.push_back("data_dir");
  nlohmann::json inherited = nlohmann::json::object();
  for (const std::string& key : kept)
    if (run.contains(key) && !requested.contains(key)) inherited[key] = run[key];
  // The same images split the same way; another folder keeps its own split.
  if (inherited.contains("data_dir") && run.contains("test_split") && !requested.contains("test_split"))
    inherited["test_split"] = run["test_split"];
  c.update_from_json(inherited);
}

models::QuantizationReport load_for_quantization(nn::Module& model, const ModelInfo& run,
                                                 const LoadedModel& float_checkpoint, const std::string& path,
                                                 bool verbose) {
  KCHECK(!float_checkpoint.info.quantized, ValueError, path, " is already quantized");
  check_fits_run(float_checkpoint.info, run, path, "this run");
  load_weights(float_checkpoint.contents, model, path);
  const models::QuantizationReport r =
      models::prepare_quantization(model, {1, run.height, run.width, run.in_channels});
  if (verbose) {
    std::cerr << "quantized " << r.convs << " convolutions and " << r.linears << " linear layers to int8 ("
              << r.folded_norms << " batch norms folded)";
    if (!r.float_layers.empty()) {
      std::cerr << "; " << r.float_layers.size() << " stay float, inside fused ops: " << r.float_layers[0];
      if (r.float_layers.size() > 1) std::cerr << ", ...";
    }
    std::cerr << "\n";
  }
  return r;
}

void calibrate_ranges(nn::Module& model, data::DataLoader& loader, int64_t batches, const Device& device,
                      bool progress) {
  const int64_t total = batches > 0 ? std::min(batches, loader.num_batches()) : loader.num_batches();
  KCHECK(total > 0, ValueError, "calibration: the loader has no batches");
  const bool was_training = model.is_training();
  model.eval();
  ProgressBar bar("  calibrate", total, progress);
  {
    nn::CalibrationGuard calibrating;
    NoGradGuard no_grad;
    loader.start_epoch(0);
    data::Batch b;
    for (int64_t i = 0; i < total && loader.next(b); ++i) {
      model(data::copy_batch_to_device(b, device).images);
      bar.update(i + 1, "");
    }
  }
  bar.finish();
  model.train(was_training);
}

}  // namespace kestrel::tools
