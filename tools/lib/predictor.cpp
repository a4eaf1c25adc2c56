#include "tools/lib/predictor.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "data/readers.h"
#include "engine/autograd.h"
#include "engine/ops/loss.h"
#include "tools/lib/report.h"

namespace fs = std::filesystem;

namespace kestrel::tools {

data::FImage convert_channels(const data::FImage& img, int channels) {
  KCHECK(channels == 1 || channels == 3, ValueError, "convert_channels: target must be 1 or 3 channels, got ", channels);
  KCHECK(img.c >= 1 && img.c <= 4, ValueError, "convert_channels: image has ", img.c, " channels (expected 1 to 4)");
  if (img.c == channels) return img;
  data::FImage out(img.h, img.w, channels);
  const size_t n = static_cast<size_t>(img.h) * img.w;
  const bool colour = img.c >= 3;  // 1/2: grey (+alpha), 3/4: RGB (+alpha)
  for (size_t p = 0; p < n; ++p) {
    const float* s = img.data.data() + p * img.c;
    float* d = out.data.data() + p * channels;
    if (channels == 1) {
      d[0] = colour ? 0.299f * s[0] + 0.587f * s[1] + 0.114f * s[2] : s[0];
    } else if (colour) {
      d[0] = s[0], d[1] = s[1], d[2] = s[2];
    } else {
      d[0] = d[1] = d[2] = s[0];
    }
  }
  return out;
}

data::Transform model_input_transform(const ModelInfo& info) {
  const int c = static_cast<int>(info.in_channels), h = static_cast<int>(info.height), w = static_cast<int>(info.width);
  std::vector<float> mean = info.mean, std = info.std;
  if (mean.empty()) mean.assign(static_cast<size_t>(c), 0.0f);
  if (std.empty()) std.assign(static_cast<size_t>(c), 1.0f);
  KCHECK(mean.size() == static_cast<size_t>(c) && std.size() == static_cast<size_t>(c), ValueError,
         "checkpoint metadata: normalization has ", mean.size(), " means and ", std.size(), " stds for a ", c,
         "-channel model");
  return [c, mean, std, resize = data::resize(h, w, info.crop_fraction)](data::FImage& img, Generator& gen) {
    if (img.c != c) img = convert_channels(img, c);
    resize(img, gen);
    data::normalize(img, mean, std);
  };
}

Predictor::Predictor(const std::string& checkpoint_path, Device device, bool fuse)
    : path_(checkpoint_path), device_(device) {
  LoadedModel loaded;
  try {
    loaded = load_checkpoint(checkpoint_path);
  } catch (const ValueError& e) {
    // load_weights names the mismatching tensors; say which model the metadata asked for.
    const ModelInfo meta = ModelInfo::from_metadata(io::load_safetensors_metadata(checkpoint_path), checkpoint_path);
    throw ValueError(std::string(e.what()) + " (the checkpoint's metadata asks for model '" + meta.model + "' with " +
                     std::to_string(meta.num_classes) + " classes and " + std::to_string(meta.in_channels) +
                     " input channels)");
  }
  info_ = loaded.info;
  model_ = loaded.model;
  parameters_ = model_->num_parameters();
  model_->eval();
  if (fuse) fold_for_inference_on(loaded, device_);
  if (!device_.is_cpu()) model_->to(device_);
  input_ = model_input_transform(info_);
}

void Predictor::set_crop_fraction(double crop_fraction) {
  KCHECK(crop_fraction > 0.0 && crop_fraction <= 1.0, ValueError,
         "the crop fraction (--crop-pct) must be in (0, 1] (1: the whole image resized), got ", crop_fraction);
  info_.crop_fraction = crop_fraction;
  input_ = model_input_transform(info_);
}

std::string Predictor::class_name(int64_t index) const {
  if (index >= 0 && index < static_cast<int64_t>(info_.classes.size())) return info_.classes[static_cast<size_t>(index)];
  return unnamed_class_name(index);
}

data::Image Predictor::load_image(const std::string& path) const {
  return data::decode_image_file(path, static_cast<int>(info_.in_channels));
}

Tensor Predictor::preprocess(const data::Image& image) const {
  KCHECK(image.h > 0 && image.w > 0 && image.c > 0 &&
             image.pixels.size() == static_cast<size_t>(image.h) * image.w * image.c,
         ValueError, "predict: image is ", image.h, "x", image.w, "x", image.c, " but holds ", image.pixels.size(),
         " bytes");
  data::FImage f = data::to_float(image);
  Generator unused(0);
  input_(f, unused);
  return Tensor::from_vector(f.data, {1, f.h, f.w, f.c});
}

std::vector<std::vector<float>> Predictor::probabilities(const std::vector<data::Image>& images) {
  if (images.empty()) return {};
  const int64_t n = static_cast<int64_t>(images.size());
  const int64_t h = info_.height, w = info_.width, c = info_.in_channels;
  Tensor batch = Tensor::empty({n, h, w, c});
  float* dst = batch.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const Tensor one = preprocess(images[static_cast<size_t>(i)]);
    std::copy_n(one.data<float>(), h * w * c, dst + i * h * w * c);
  }
  NoGradGuard no_grad;
  const Tensor logits = tta_ ? mean_view_logits(*model_, batch, *tta_, device_) : (*model_)(batch.to(device_));
  const std::vector<float> p = softmax(logits, 1).to_vector();
  const size_t k = static_cast<size_t>(info_.num_classes);
  std::vector<std::vector<float>> out(static_cast<size_t>(n));
  for (size_t i = 0; i < out.size(); ++i) out[i].assign(p.begin() + i * k, p.begin() + (i + 1) * k);
  return out;
}

TopK Predictor::top_k(const std::vector<float>& probs, int64_t k) const {
  KCHECK(k >= 1, ValueError, "predict: top-k must be at least 1, got ", k);
  std::vector<int64_t> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t keep = std::min(order.size(), static_cast<size_t>(k));
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  });
  TopK out;
  for (size_t i = 0; i < keep; ++i) out.push_back({order[i], class_name(order[i]), probs[order[i]]});
  return out;
}

TopK Predictor::predict(const data::Image& image, int64_t k) { return top_k(probabilities({image})[0], k); }

TopK Predictor::predict(const std::string& image_path, int64_t k) { return predict(load_image(image_path), k); }

std::vector<TopK> Predictor::predict_batch(const std::vector<data::Image>& images, int64_t k, int64_t batch_size) {
  KCHECK(batch_size >= 1, ValueError, "predict: batch size must be at least 1, got ", batch_size);
  std::vector<TopK> out;
  out.reserve(images.size());
  for (size_t begin = 0; begin < images.size(); begin += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(images.size(), begin + static_cast<size_t>(batch_size));
    const std::vector<data::Image> chunk(images.begin() + begin, images.begin() + end);
    for (const auto& p : probabilities(chunk)) out.push_back(top_k(p, k));
  }
  return out;
}

std::vector<TopK> Predictor::predict_batch(const std::vector<std::string>& image_paths, int64_t k,
                                           int64_t batch_size) {
  KCHECK(batch_size >= 1, ValueError, "predict: batch size must be at least 1, got ", batch_size);
  std::vector<TopK> out;
  out.reserve(image_paths.size());
  // Decode one batch at a time so a large folder never sits in memory whole.
  for (size_t begin = 0; begin < image_paths.size(); begin += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(image_paths.size(), begin + static_cast<size_t>(batch_size));
    std::vector<data::Image> chunk;
    for (size_t i = begin; i < end; ++i) chunk.push_back(load_image(image_paths[i]));
    for (const auto& p : probabilities(chunk)) out.push_back(top_k(p, k));
  }
  return out;
}

std::vector<std::string> list_images(const std::string& path) { return data::list_image_files(path); }

std::optional<data::TTAOptions> tta_options(bool flip, int64_t shift, const ModelInfo& info) {
  const int64_t smaller_side = std::min(info.height, info.width);
  KCHECK(shift >= 0 && shift < smaller_side, ValueError, "--tta-shift must be in [0, ", smaller_side, ") pixels for ",
         info.height, "x", info.width, " inputs, got ", shift);
  if (!flip && shift == 0) return std::nullopt;
  data::TTAOptions o{flip, static_cast<int>(shift), {}};
  // Shifted-in pixels are black, as the zero padding of training's random crop: -mean/std once normalized.
  for (size_t c = 0; c < info.mean.size() && c < info.std.size(); ++c) o.fill.push_back(-info.mean[c] / info.std[c]);
  return o;
}

Tensor mean_view_logits(nn::Module& model, const Tensor& images, const data::TTAOptions& tta, Device device) {
  std::vector<Tensor> outs;
  for (const Tensor& v : data::tta_views(images.cpu(), tta)) {
    const Tensor logits = model(v.to(device));  // f16/bf16 under autocast
    outs.push_back((logits.dtype() == DType::F32 ? logits : logits.to(DType::F32)).cpu());
  }
  return data::tta_average(outs);
}

}  // namespace kestrel::tools
