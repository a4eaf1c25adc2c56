#include "engine/ops/reduce.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/cpu/reduce.h"
#include "engine/gpu/reduce.h"
#include "engine/ops/check.h"
#include "engine/ops/elementwise.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

std::vector<bool> reduce_mask(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  std::vector<bool> mask(x.dim(), dims.empty());
  for (int64_t d : dims) {
    const int64_t w = wrap_dim(d, x.dim(), op);
    KCHECK(!mask[w] || dims.empty(), ShapeError, op, ": dim ", d, " repeated");
    mask[w] = true;
  }
  return mask;
}

Shape reduced_shape(const Shape& s, const std::vector<bool>& mask, bool keepdim) {
  Shape out;
  for (size_t d = 0; d < s.size(); ++d) {
    if (!mask[d])
      out.push_back(s[d]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

// The kernels of engine/cpu or engine/gpu, by the input's device.
void run_sum_rows(const Tensor& x, int64_t outer, int64_t inner, const Tensor& out) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::sum_rows(x, outer, inner, out);
  }
  cpu::sum_rows(x, outer, inner, out);
}

void run_sum_cols(const Tensor& x, int64_t rows, int64_t cols, const Tensor& out) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::sum_cols(x, rows, cols, out);
  }
  cpu::sum_cols(x, rows, cols, out);
}

// Plain sum without autograd: kept dims in order, reduced dims removed.
Tensor sum_raw(const Tensor& x_in, const std::vector<bool>& mask) {
  const Tensor x = x_in.detach();
  std::vector<int64_t> kept, reduced;
  for (int64_t d = 0; d < x.dim(); ++d) (mask[d] ? reduced : kept).push_back(d);
  Shape out_shape;
  int64_t outer = 1, inner = 1;
  for (int64_t d : kept) {
    out_shape.push_back(x.size(d));
    outer *= x.size(d);
  }
  for (int64_t d : reduced) inner *= x.size(d);
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  // Reduced dims all leading: column sums over the contiguous input.
  bool leading = true;
  for (size_t i = 0; i < reduced.size(); ++i)
    if (reduced[i] != static_cast<int64_t>(i)) leading = false;
  if (leading && !kept.empty()) {
    run_sum_cols(x.contiguous(), inner, outer, out);
    return out;
  }
  // Reduced dims consecutive, between kept ones (a broadcast gradient's sum
  // over W of [N, H, W, C]): on the CPU, sums over the middle without the
  // transposing copy below.
  const bool consecutive =
      !reduced.empty() && reduced.back() - reduced.front() + 1 == static_cast<int64_t>(reduced.size());
  if (consecutive && !kept.empty() && x.device().is_cpu()) {
    int64_t before = 1, after = 1;
    for (int64_t d = 0; d < reduced.front(); ++d) before *= x.size(d);
    for (int64_t d = reduced.back() + 1; d < x.dim(); ++d) after *= x.size(d);
    cpu::sum_mid(x.contiguous(), before, inner, after, out);
    return out;
  }
  std::vector<int64_t> order = kept;
  order.insert(order.end(), reduced.begin(), reduced.end());
  run_sum_rows(x.permute(order).contiguous(), outer, inner, out);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  check_defined(x, "sum", "input");
  const std::vector<bool> mask = reduce_mask(x, dims, "sum");
  Tensor out = sum_raw(x, mask).view(reduced_shape(x.shape(), mask, keepdim));
  trace_op("sum", {x}, out);
  const Shape in_shape = x.shape();
  const Shape kept_shape = reduced_shape(x.shape(), mask, true);
  return record(out, "sum", {x}, [in_shape, kept_shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.reshape(kept_shape).expand(in_shape).contiguous()};
  });
}

Tensor sum(const Tensor& x) { return sum(x, {}, false); }

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  const std::vector<bool> mask = reduce_mask(x, dims, "mean");
  int64_t count = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (mask[d]) count *= x.size(d);
  KCHECK(count > 0, ShapeError, "mean: reducing over an empty dimension of ", shape_str(x.shape()));
  return mul_scalar(sum(x, dims, keepdim), 1.0 / static_cast<double>(count));
}

Tensor mean(const Tensor& x) { return mean(x, {}, false); }

Tensor var(const Tensor& x, const std::vector<int64_t>& dims, bool unbiased, bool keepdim) {
  const std::vector<bool> mask = reduce_mask(x, dims, "var");
  int64_t count = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (mask[d]) count *= x.size(d);
  KCHECK(count > (unbiased ? 1 : 0), ShapeError, "var: too few elements (", count, ") to reduce in ",
         shape_str(x.shape()));
  Tensor centered = sub(x, mean(x, dims, true));
  return mul_scalar(sum(square(centered), dims, keepdim), 1.0 / static_cast<double>(count - (unbiased ? 1 : 0)));
}

namespace {

void max_impl(const Tensor& x_in, int64_t dim, Tensor& values, Tensor& indices, const char* op) {
  check_defined(x_in, op, "input");
  const int64_t d = wrap_dim(dim, x_in.dim(), op);
  KCHECK(x_in.size(d) > 0, ShapeError, op, ": dim ", dim, " is empty in ", shape_str(x_in.shape()));
  const Tensor x = x_in.detach().contiguous();
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= x.size(i);
  for (int64_t i = d + 1; i < x.dim(); ++i) inner *= x.size(i);
  Shape out_shape = x.shape();
  out_shape[d] = 1;
  values = Tensor::empty(out_shape, x.dtype(), x.device());
  indices = Tensor::empty(out_shape, DType::I64, x.device());
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::max_mid(x, outer, x.size(d), inner, values, indices);
  }
  cpu::max_mid(x, outer, x.size(d), inner, values, indices);
}

// grad_in[o, indices[o, i], i] = grad[o, i] into a zeroed grad_in.
void max_scatter(const Tensor& gk, const Tensor& indices, int64_t outer, int64_t n, int64_t inner,
                 const Tensor& gi) {
  if constexpr (kHaveCuda) {
    if (gi.device().is_cuda()) return gpu::max_backward_scatter(gk, indices, outer, n, inner, gi);
  }
  const int64_t* idx = indices.data<int64_t>();
  dispatch_float(gk.dtype(), "max backward", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    const scalar_t* pg = gk.data<scalar_t>();
    scalar_t* pi = gi.data<scalar_t>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) pi[(o * n + idx[o * inner + i]) * inner + i] = pg[o * inner + i];
  });
}

}  // namespace

Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  Tensor values, indices;
  max_impl(x, dim, values, indices, "max");
  const int64_t d = wrap_dim(dim, x.dim(), "max");
  const Shape in_shape = x.shape();
  const Shape kept = values.shape();
  Tensor out = keepdim ? values : values.squeeze(d);
  trace_op("max", {x}, out);
  return record(out, "max", {x}, [in_shape, kept, indices, d](const Tensor& g, const std::vector<bool>&) {
    Tensor gi = Tensor::zeros(in_shape, g.dtype(), g.device());
    const Tensor gk = g.reshape(kept).contiguous();
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < d; ++i) outer *= in_shape[i];
    for (int64_t i = d + 1; i < static_cast<int64_t>(in_shape.size()); ++i) inner *= in_shape[i];
    max_scatter(gk, indices, outer, in_shape[d], inner, gi);
    return std::vector<Tensor>{gi};
  });
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  Tensor values, indices;
  max_impl(x, dim, values, indices, "argmax");
  return keepdim ? indices : indices.detach().squeeze(wrap_dim(dim, x.dim(), "argmax"));
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  KCHECK(lead >= 0, ShapeError, "sum_to: cannot reduce ", shape_str(grad.shape()), " to ", shape_str(shape));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < grad.dim(); ++d) {
    if (d < lead) {
      dims.push_back(d);
    } else if (shape[d - lead] == 1 && grad.size(d) != 1) {
      dims.push_back(d);
    } else {
      KCHECK(shape[d - lead] == grad.size(d), ShapeError, "sum_to: cannot reduce ", shape_str(grad.shape()), " to ",
             shape_str(shape));
    }
  }
  if (dims.empty()) return grad.reshape(shape);
  return sum(grad, dims, false).reshape(shape);
}

}  // namespace kestrel
