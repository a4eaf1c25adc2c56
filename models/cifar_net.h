// The 200K-parameter depthwise-separable CIFAR-10 net of the seed projects
// (150,690 parameters at 10 classes): "cifar10_200k" in the registry.
#pragma once
#include "models/common.h"

namespace kestrel::models {

ModulePtr build_cifar_net(const ModelOptions& o);

}  // namespace kestrel::models
