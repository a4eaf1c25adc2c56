// EfficientNet B0-B7 (Tan & Le 2019) with torchvision's names and rounding:
// features.0 stem, features.1..7 MBConv stages, features.8 head conv, classifier.1.
#pragma once
#include <vector>

#include "models/common.h"

namespace kestrel::models {

// The released compound-scaled variants (paper Table / torchvision).
struct EfficientNetVariant {
  const char* name;
  double width;   // channel multiplier
  double depth;   // layer-count multiplier
  int resolution; // input size the paper trains at
  double dropout; // before the classifier
  bool tf_bn;     // BN eps 1e-3, momentum 0.01 (B5-B7 in torchvision); else 1e-5 / 0.1
};
const std::vector<EfficientNetVariant>& efficientnet_variants();

// index 0..7 -> B0..B7. options.width_mult / depth_mult multiply the variant's.
ModulePtr build_efficientnet(int index, const ModelOptions& o);

}  // namespace kestrel::models
