// DenseNet-BC (Huang et al. 2017) with torchvision's names: features.conv0,
// features.denseblockN.denselayerM, features.transitionN, features.norm5, classifier.
#pragma once
#include "models/common.h"

namespace kestrel::models {

// depth 121, 169, 201 or 161.
ModulePtr build_densenet(int depth, const ModelOptions& o);

}  // namespace kestrel::models
