// Classify images with a trained checkpoint: the library side of
// `kestrel predict` (docs/predict.md).
//
//   tools::Predictor p("runs/fmnist/best.safetensors");   // loads once
//   for (const tools::Prediction& c : p.predict("boot.png", 3))
//     std::printf("%-12s %.3f\n", c.class_name.c_str(), c.probability);
//   auto many = p.predict_batch(paths, 5);                 // batched forward passes
//
// Any image goes in: it is converted to the model's channels (grey <-> RGB,
// alpha dropped), resized to the model's input size and normalized with the
// mean/std stored in the checkpoint, the same steps `kestrel eval` applies.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/transforms.h"
#include "engine/nn/module.h"
#include "tools/lib/checkpoint.h"

namespace kestrel::tools {

struct Prediction {
  int64_t class_index = 0;
  std::string class_name;
  double probability = 0.0;
};
using TopK = std::vector<Prediction>;  // most probable first

// ---- preprocessing shared with kestrel eval
// Channel conversion on [0,1] float images: 1 -> 3 replicates the grey level,
// 3/4 -> 1 takes the luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), an
// alpha channel (2 or 4) is dropped.
data::FImage convert_channels(const data::FImage& img, int channels);
// The model's input pipeline as a transform of [0,1] float images: channels,
// size (data::resize with the metadata's crop_fraction: a plain resize, or
// the centre crop of data::resize_center_crop below 1), then normalization
// from the checkpoint metadata.
data::Transform model_input_transform(const ModelInfo& info);

class Predictor {
 public:
  // Throws IOError for a missing or unreadable checkpoint and ValueError when
  // its weights do not fit the model its metadata names. The model runs on
  // `device` (inputs are copied there, probabilities back). On the CPU its
  // batch norms are folded into their convolutions (models/fuse.h) unless
  // fuse is false, e.g. for Grad-CAM, which differentiates the model as built.
  explicit Predictor(const std::string& checkpoint_path, Device device = Device::cpu(), bool fuse = true);

  TopK predict(const data::Image& image, int64_t k = 5);
  TopK predict(const std::string& image_path, int64_t k = 5);
  // Forward passes of up to batch_size images; results in input order.
  std::vector<TopK> predict_batch(const std::vector<data::Image>& images, int64_t k = 5, int64_t batch_size = 64);
  std::vector<TopK> predict_batch(const std::vector<std::string>& image_paths, int64_t k = 5,
                                  int64_t batch_size = 64);
  // Softmax probabilities [N][num_classes] for preprocessed images (one forward
  // pass per test-time view: the softmax of the views' mean logits, as kestrel eval --tta).
  std::vector<std::vector<float>> probabilities(const std::vector<data::Image>& images);
  // Test-time augmentation for every later prediction (data::tta_views); nullopt: none.
  void set_tta(const std::optional<data::TTAOptions>& tta) { tta_ = tta; }
  // Reads the centre crop_fraction of each image (data::resize_center_crop;
  // 1: the whole image resized) in place of the checkpoint's.
  void set_crop_fraction(double crop_fraction);

  // [1, H, W, C] normalized model input for one image.
  Tensor preprocess(const data::Image& image) const;
  // Decodes with the model's channel count; IOError names the file.
  data::Image load_image(const std::string& path) const;

  const ModelInfo& info() const { return info_; }
  nn::Module& model() { return *model_; }
  // The checkpoint's parameter count (before any folding).
  int64_t num_parameters() const { return parameters_; }
  const std::string& checkpoint_path() const { return path_; }
  Device device() const { return device_; }
  std::string class_name(int64_t index) const;

 private:
  TopK top_k(const std::vector<float>& probs, int64_t k) const;
  std::string path_;
  Device device_;
  ModelInfo info_;
  nn::ModulePtr model_;
  int64_t parameters_ = 0;
  data::Transform input_;
  std::optional<data::TTAOptions> tta_;
};

// --tta (the mirror) and --tta-shift N as views to average, nullopt when both
// are off; shifted-in pixels are black (-mean/std), as training's crop padding.
// ValueError when the shift does not fit the model's input.
std::optional<data::TTAOptions> tta_options(bool flip, int64_t shift, const ModelInfo& info);
// The model's logits for each image of the NHWC batch, averaged over its
// test-time views (made on the host, run on `device`): f32, on the host.
Tensor mean_view_logits(nn::Module& model, const Tensor& images, const data::TTAOptions& tta, Device device);

// data::list_image_files: the image files training takes, in `path` and below
// it (symlinked folders too), sorted; `path` itself when it is a file.
std::vector<std::string> list_images(const std::string& path);

}  // namespace kestrel::tools
