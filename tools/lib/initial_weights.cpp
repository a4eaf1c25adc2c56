#include "tools/lib/initial_weights.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include "engine/error.h"
#include "engine/io/safetensors.h"

namespace kestrel::tools {

namespace {

// The dotted prefix ("classifier.1.") of the last Linear module, in
// registration order (the classifier of every zoo model); empty if none.
void find_last_linear(const nn::Module& m, const std::string& prefix, std::string& found) {
  if (m.type_name() == "Linear") found = prefix;
  for (const auto& [name, child] : m.named_children()) find_last_linear(*child, prefix + name + ".", found);
}

// The input channels of a file without Kestrel metadata: dim 1 of its tensor
// named as the model's first convolution weight ([O, C, kh, kw]); -1 if none.
int64_t first_conv_input_channels(const io::SafetensorsContents& file, const nn::Module& model) {
  for (const auto& [name, t] : model.state_dict()) {
    if (t.dim() != 4) continue;
    const auto it = std::find_if(file.tensors.begin(), file.tensors.end(),
                                 [&](const auto& named) { return named.first == name; });
    return it != file.tensors.end() && it->second.dim() == 4 ? it->second.size(1) : -1;
  }
  return -1;
}

// Why a tensor's shape may differ: the input channels (the file's, from its
// metadata or its first convolution's weight), or the stem.
std::string shape_mismatch_hint(const io::SafetensorsContents& file, const nn::Module& model, const ModelInfo& run,
                                const std::string& path) {
  const bool kestrel = file.metadata.count("kestrel.model_info") > 0;
  const ModelInfo saved = kestrel ? ModelInfo::from_metadata(file.metadata, path) : ModelInfo{};
  const int64_t channels = kestrel ? saved.in_channels : first_conv_input_channels(file, model);
  if (channels > 0 && channels != run.in_channels)
    return " (the checkpoint reads " + std::to_string(channels) + "-channel images, this run's data has " +
           std::to_string(run.in_channels) + ")";
  if (run.cifar_stem && (!kestrel || !saved.cifar_stem))
    return " (the model was built with its small-image stem for " + std::to_string(run.height) +
           "px inputs; --image-size 224 builds the ImageNet one)";
  return "";
}

}  // namespace

std::vector<std::string> load_initial_weights(const std::string& path, nn::Module& model, const ModelInfo& run) {
  check_checkpoint_path(path, "--initial-checkpoint");
  const io::SafetensorsContents file = io::load_safetensors(path);
  if (file.metadata.count("kestrel.model_info")) {
    const ModelInfo saved = ModelInfo::from_metadata(file.metadata, path);
    KCHECK(saved.model == run.model, ValueError, "--initial-checkpoint ", path, " holds a ", saved.model,
           ", not a ", run.model);
    KCHECK(!saved.quantized, ValueError, "--initial-checkpoint ", path,
           " is quantized (int8); start from its float checkpoint");
  }
  std::string head;
  find_last_linear(model, "", head);
  std::map<std::string, Tensor> own;
  for (auto& [name, t] : model.state_dict()) own.emplace(name, t);

  nn::NamedTensors given;
  std::vector<std::string> kept_fresh;
  int64_t shared = 0;
  for (const auto& [name, t] : file.tensors) {
    if (is_training_state_name(name)) continue;
    auto it = own.find(name);
    shared += it != own.end();
    const bool in_head = !head.empty() && name.rfind(head, 0) == 0 && name.find('.', head.size()) == std::string::npos;
    if (in_head && it != own.end() && it->second.shape() != t.shape()) {
      kept_fresh.push_back(name + " " + shape_str(it->second.shape()) + " (file: " + shape_str(t.shape()) + ")");
      given.emplace_back(name, it->second);  // the model's own value: loads as a no-op
      continue;
    }
    given.emplace_back(name, t);
  }
  KCHECK(shared > 0, ValueError, "--initial-checkpoint ", path, " shares no tensor names with ", run.model,
         " (the weights of another architecture?)");
  try {
    model.load_state_dict(given, true);
  } catch (const ValueError& e) {
    const bool shape = std::string(e.what()).find(" has shape ") != std::string::npos;
    throw ValueError("--initial-checkpoint " + path + ": " + e.what() + (shape ? shape_mismatch_hint(file, model, run, path) : ""));
  }
  return kept_fresh;
}

}  // namespace kestrel::tools
