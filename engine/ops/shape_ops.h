// Joining, splitting and padding tensors.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace kestrel {

Tensor concat(const std::vector<Tensor>& tensors, int64_t dim);
// Views of consecutive pieces of `sizes` along dim (sizes must sum to the dim's size).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// Constant padding of the spatial dims of an NHWC tensor.
Tensor pad2d(const Tensor& x, int64_t top, int64_t bottom, int64_t left, int64_t right, double value = 0.0);

}  // namespace kestrel
