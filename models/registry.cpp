#include "models/registry.h"

#include "engine/text.h"
#include "models/cifar_net.h"
#include "models/densenet.h"
#include "models/efficientnet.h"
#include "models/emn.h"
#include "models/ghostnet.h"
#include "models/mobilenet.h"
#include "models/resnet.h"

namespace kestrel::models {

const std::vector<ModelEntry>& model_registry() {
  static const std::vector<ModelEntry> entries = [] {
    std::vector<ModelEntry> e;
    for (const EMNVariant& v : emn_variants()) {
      const std::string name = v.name;
      e.push_back({name, "emn", "EfficientMicroNet (ghost + coordinate-attention blocks)", 10, 32,
                   [name](const ModelOptions& o) { return build_emn(name, o); }});
    }
    const auto& effnets = efficientnet_variants();
    for (size_t i = 0; i < effnets.size(); ++i)
      e.push_back({effnets[i].name, "efficientnet", "EfficientNet (compound-scaled MBConv + SE)", 1000,
                   effnets[i].resolution,
                   [i](const ModelOptions& o) { return build_efficientnet(static_cast<int>(i), o); }});
    e.push_back({"mobilenet_v2", "mobilenet", "MobileNetV2 (inverted residuals, linear bottlenecks)", 1000, 224,
                 build_mobilenet_v2});
    e.push_back({"mobilenet_v3_small", "mobilenet", "MobileNetV3-Small (hard-swish, SE)", 1000, 224,
                 [](const ModelOptions& o) { return build_mobilenet_v3(false, o); }});
    e.push_back({"mobilenet_v3_large", "mobilenet", "MobileNetV3-Large (hard-swish, SE)", 1000, 224,
                 [](const ModelOptions& o) { return build_mobilenet_v3(true, o); }});
    e.push_back({"ghostnet_100", "ghostnet", "GhostNet 1.0x (timm ghostnet_100)", 1000, 224, build_ghostnet});
    for (int depth : {18, 50, 152})
      e.push_back({"resnet" + std::to_string(depth), "resnet", "ResNet-" + std::to_string(depth), 1000, 224,
                   [depth](const ModelOptions& o) { return build_resnet(depth, o); }});
    for (int depth : {121, 201})
      e.push_back({"densenet" + std::to_string(depth), "densenet", "DenseNet-BC-" + std::to_string(depth), 1000, 224,
                   [depth](const ModelOptions& o) { return build_densenet(depth, o); }});
    e.push_back({"cifar10_200k", "cifar", "depthwise-separable CIFAR-10 net under 200K parameters (150,690)", 10, 32,
                 build_cifar_net});
    return e;
  }();
  return entries;
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const ModelEntry& e : model_registry()) names.push_back(e.name);
  return names;
}

const ModelEntry& find_model(const std::string& name) {
  for (const ModelEntry& e : model_registry())
    if (e.name == name) return e;
  throw ValueError("unknown model '" + name + "'; valid models: " +
                   join(model_registry(), ", ", [](const ModelEntry& e) { return e.name; }));
}

bool has_stochastic_depth(const std::string& name) {
  const std::string& family = find_model(name).family;
  return family == "emn" || family == "efficientnet";
}

ModulePtr build_model(const std::string& name, const ModelOptions& options) {
  const ModelEntry& entry = find_model(name);
  check_common_options(name, options);
  return entry.build(options);
}

}  // namespace kestrel::models
