// The model zoo: name -> builder. Every builder takes ModelOptions; a bad name
// or an impossible option raises ValueError naming the valid choices.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "models/common.h"

namespace kestrel::models {

struct ModelEntry {
  std::string name;
  std::string family;
  std::string description;
  int64_t default_classes;     // 1000 (ImageNet) or 10 (CIFAR-10 nets)
  int64_t default_resolution;  // the input size the model is published at
  std::function<ModulePtr(const ModelOptions&)> build;
};

const std::vector<ModelEntry>& model_registry();
std::vector<std::string> model_names();
// Throws ValueError listing every valid name when `name` is unknown.
const ModelEntry& find_model(const std::string& name);
// Whether the model has residual branches that --drop-path (stochastic depth) drops.
bool has_stochastic_depth(const std::string& name);
// Checks the options, then builds. Throws ValueError on bad names and options.
ModulePtr build_model(const std::string& name, const ModelOptions& options = {});

}  // namespace kestrel::models
