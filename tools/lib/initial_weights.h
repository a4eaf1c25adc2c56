// A new run's starting weights (--initial-checkpoint): a Kestrel checkpoint,
// or a PyTorch state_dict saved as safetensors (torchvision and timm names,
// which the zoo's models share; tools/torch_weights.py writes one). Fine-tuning
// to another class count keeps the classifier's fresh initialization.
#pragma once
#include <string>
#include <vector>

#include "engine/nn/module.h"
#include "tools/lib/checkpoint.h"

namespace kestrel::tools {

// Loads every tensor of `path` into `model` by name; each must exist in the
// model with the same shape, and every model tensor must be given, except the
// final Linear layer's when its shape differs (another class count): those
// keep the model's values. A Kestrel checkpoint must hold the same model and
// quantization as `run`. Returns the names kept fresh. Throws IOError for a
// bad file and ValueError, naming the file and the first mismatches, otherwise.
std::vector<std::string> load_initial_weights(const std::string& path, nn::Module& model, const ModelInfo& run);

}  // namespace kestrel::tools
