// ResNet (He et al. 2016) with torchvision's names: conv1, bn1, layer1..4, fc.
#pragma once
#include "models/common.h"

namespace kestrel::models {

// depth 18, 34 (basic blocks) or 50, 101, 152 (bottlenecks).
ModulePtr build_resnet(int depth, const ModelOptions& o);

}  // namespace kestrel::models
