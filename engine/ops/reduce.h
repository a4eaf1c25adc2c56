// Reductions over any set of dims.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace kestrel {

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum(const Tensor& x);  // all elements -> scalar
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
// Population (unbiased=false) or sample variance.
Tensor var(const Tensor& x, const std::vector<int64_t>& dims, bool unbiased = false, bool keepdim = false);
// Max along one dim; the gradient flows to the first maximal element.
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // i64, not differentiable

// Sums a broadcast gradient back to `shape` (the reverse of broadcasting).
Tensor sum_to(const Tensor& grad, const Shape& shape);

}  // namespace kestrel
