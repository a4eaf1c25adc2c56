#include "tools/lib/checkpoint.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/fuse.h"
#include "models/quantize.h"
#include "models/registry.h"

namespace kestrel::tools {

io::Metadata ModelInfo::to_metadata() const {
  nlohmann::json j;
  j["model"] = model;
  j["num_classes"] = num_classes;
  j["in_channels"] = in_channels;
  j["height"] = height;
  j["width"] = width;
  j["cifar_stem"] = cifar_stem;
  j["width_mult"] = width_mult;
  j["depth_mult"] = depth_mult;
  if (quantized) j["quantized"] = true;
  j["dataset"] = dataset;
  j["classes"] = classes;
  j["mean"] = mean;
  j["std"] = std;
  if (crop_fraction != 1.0) j["crop_fraction"] = crop_fraction;
  return {{"kestrel.model_info", j.dump()}};
}

ModelInfo ModelInfo::from_metadata(const io::Metadata& m, const std::string& source) {
  auto it = m.find("kestrel.model_info");
  KCHECK(it != m.end(), IOError, source, ": not a Kestrel model checkpoint (no kestrel.model_info metadata)");
  ModelInfo info;
  try {
    const nlohmann::json j = nlohmann::json::parse(it->second);
    info.model = j.at("model").get<std::string>();
    info.num_classes = j.at("num_classes").get<int64_t>();
    info.in_channels = j.at("in_channels").get<int64_t>();
    info.height = j.at("height").get<int64_t>();
    info.width = j.at("width").get<int64_t>();
    info.cifar_stem = j.at("cifar_stem").get<bool>();
    info.width_mult = j.value("width_mult", 1.0);
    info.depth_mult = j.value("depth_mult", 1.0);
    info.quantized = j.value("quantized", false);
    info.dataset = j.value("dataset", "");
    info.classes = j.value("classes", std::vector<std::string>{});
    info.mean = j.value("mean", std::vector<float>{});
    info.std = j.value("std", std::vector<float>{});
    info.crop_fraction = j.value("crop_fraction", 1.0);
  } catch (const nlohmann::json::exception& e) {
    throw IOError(source + ": malformed kestrel.model_info metadata (" + e.what() + ")");
  }
  KCHECK(info.crop_fraction > 0.0 && info.crop_fraction <= 1.0, IOError, source,
         ": kestrel.model_info crop_fraction must be in (0, 1], got ", info.crop_fraction);
  return info;
}

nn::ModulePtr build_from_info(const ModelInfo& info, double dropout, double drop_path) {
  models::ModelOptions o;
  o.num_classes = info.num_classes;
  o.in_channels = info.in_channels;
  o.cifar_stem = info.cifar_stem;
  o.width_mult = info.width_mult;
  o.depth_mult = info.depth_mult;
  if (dropout >= 0) o.dropout = dropout;
  if (drop_path >= 0) o.drop_path = drop_path;
  nn::ModulePtr m = models::build_model(info.model, o);
  if (info.quantized) models::prepare_quantization(*m, {1, info.height, info.width, info.in_channels});
  return m;
}

namespace {
bool same_values(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::fabs(a[i] - b[i]) > 1e-6f) return false;
  return true;
}
}  // namespace

void check_fits_run(const ModelInfo& i, const ModelInfo& r, const std::string& what, const std::string& run) {
  KCHECK(i.num_classes == r.num_classes, ValueError, what, " has ", i.num_classes, " classes but ", run, " has ",
         r.num_classes);
  KCHECK(i.in_channels == r.in_channels && i.height == r.height && i.width == r.width, ValueError, what, " reads ",
         i.in_channels, "x", i.height, "x", i.width, " images but ", run, "'s data gives ", r.in_channels, "x",
         r.height, "x", r.width);
  KCHECK(same_values(i.mean, r.mean) && same_values(i.std, r.std), ValueError, what,
         " was trained with another input normalization (another data set?) than ", run, "'s ", r.dataset);
  // Same count, other order (folders named differently) would train on wrong targets.
  if (!i.classes.empty() && !r.classes.empty())
    for (size_t k = 0; k < i.classes.size() && k < r.classes.size(); ++k)
      KCHECK(i.classes[k] == r.classes[k], ValueError, what, "'s class ", k, " is '", i.classes[k], "' but ", run,
             "'s is '", r.classes[k], "' (the classes must be the same, in the same order)");
}

void save_checkpoint(const std::string& path, const nn::Module& model, const ModelInfo& info,
                     const nn::NamedTensors& extra, const io::Metadata& extra_metadata) {
  nn::NamedTensors all = model.state_dict();
  all.insert(all.end(), extra.begin(), extra.end());
  for (auto& entry : all)  // device tensors go through the host: the file is device-free
    if (!entry.second.device().is_cpu()) entry.second = entry.second.cpu();
  io::Metadata meta = info.to_metadata();
  meta.insert(extra_metadata.begin(), extra_metadata.end());
  io::save_safetensors(path, all, meta);
}

void load_weights(const io::SafetensorsContents& contents, nn::Module& model, const std::string& source) {
  nn::NamedTensors weights;
  for (const auto& [name, t] : contents.tensors)
    if (!is_training_state_name(name)) weights.emplace_back(name, t);
  try {
    model.load_state_dict(weights, true);
  } catch (const ValueError& e) {
    throw ValueError(source + ": " + e.what());
  }
}

void check_checkpoint_path(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  KCHECK(fs::exists(path), IOError, what, " not found: ", path);
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  KCHECK(ext != ".onnx", IOError, what, " ", path, " is an ONNX graph (kestrel export's output), not a checkpoint; "
         "give the .safetensors it was exported from");
  for (const char* image : {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tga"})
    KCHECK(ext != image, IOError, what, " ", path, " is an image, not a checkpoint (a .safetensors file)");
  if (fs::is_regular_file(path) && ext != ".json") return;
  // A run folder, or its config.json / state.json: the checkpoints lie in (or beside) it.
  const fs::path run = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  std::string suggestion = "a .safetensors file";
  for (const char* name : {"best.safetensors", "last.safetensors"})
    if (fs::is_regular_file(run / name)) {
      suggestion = (run / name).string();
      break;
    }
  KCHECK(!fs::is_directory(path), IOError, what, " ", path, " is a folder; give a checkpoint file: ", suggestion);
  throw IOError(detail::concat(what, " ", path, " is JSON, not a checkpoint; give ", suggestion));
}

LoadedModel load_checkpoint(const std::string& path) {
  check_checkpoint_path(path);
  LoadedModel out;
  out.contents = io::load_safetensors(path);
  out.info = ModelInfo::from_metadata(out.contents.metadata, path);
  out.model = build_from_info(out.info);
  load_weights(out.contents, *out.model, path);
  out.model->eval();
  return out;
}

void fold_for_inference_on(const LoadedModel& loaded, Device device) {
  if (!device.is_cpu() || loaded.info.quantized) return;
  const ModelInfo& i = loaded.info;
  models::fuse_for_inference(*loaded.model, {1, i.height, i.width, i.in_channels});
}

nlohmann::json training_config_beside(const std::string& checkpoint) {
  std::ifstream in(std::filesystem::path(checkpoint).parent_path() / "config.json");
  if (!in) return {};
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return {};
  }
}

}  // namespace kestrel::tools
