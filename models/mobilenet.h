// MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Small/-Large (Howard et al.
// 2019) at any width multiplier, with torchvision's names and rounding.
#pragma once
#include "models/common.h"

namespace kestrel::models {

ModulePtr build_mobilenet_v2(const ModelOptions& o);
ModulePtr build_mobilenet_v3(bool large, const ModelOptions& o);

}  // namespace kestrel::models
