#pragma once
#include "engine/random.h"
#include "engine/tensor.h"

namespace kestrel {

// Inverted dropout: kept elements scaled by 1/(1-p). Identity when !training or p == 0.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);
// Stochastic depth: drops whole samples (dim 0) of a residual branch with probability p.
Tensor drop_path(const Tensor& x, double p, bool training, Generator& gen);

}  // namespace kestrel
