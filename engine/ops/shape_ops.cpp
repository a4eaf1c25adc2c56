#include "engine/ops/shape_ops.h"

#include <string>

#include "engine/autograd.h"
#include "engine/ops/check.h"
#include "engine/text.h"
#include "engine/trace.h"

namespace kestrel {

Tensor concat(const std::vector<Tensor>& tensors, int64_t dim) {
  const char* op = "concat";
  KCHECK(!tensors.empty(), ValueError, op, ": no tensors given");
  const Tensor& first = tensors[0];
  check_defined(first, op, "tensor 0");
  const int64_t d = wrap_dim(dim, first.dim(), op);
  KCHECK(first.dim() >= 1, ShapeError, op, ": cannot concatenate 0-d tensors");
  Shape out_shape = first.shape();
  out_shape[d] = 0;
  std::vector<int64_t> offsets, lengths;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    check_defined(t, op, "a tensor");
    check_same_device_and_dtype(first, t, op);
    bool ok = t.dim() == first.dim();
    for (int64_t k = 0; ok && k < t.dim(); ++k)
      if (k != d && t.size(k) != first.size(k)) ok = false;
    KCHECK(ok, ShapeError, op, ": tensor ", i, " has shape ", shape_str(t.shape()), " but tensor 0 has ",
           shape_str(first.shape()), "; all dims except dim ", d, " must match");
    offsets.push_back(out_shape[d]);
    lengths.push_back(t.size(d));
    out_shape[d] += t.size(d);
  }
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  {
    NoGradGuard guard;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (lengths[i] > 0) out.narrow(d, offsets[i], lengths[i]).copy_(tensors[i].detach());
  }
  trace_op(op, tensors, out, 0, {{"dim", std::to_string(d)}});
  return record(out, op, tensors, [d, offsets, lengths](const Tensor& g, const std::vector<bool>& needs) {
    std::vector<Tensor> grads(needs.size());
    for (size_t i = 0; i < needs.size(); ++i)
      if (needs[i]) grads[i] = g.narrow(d, offsets[i], lengths[i]).contiguous();
    return grads;
  });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const char* op = "split";
  check_defined(x, op, "input");
  const int64_t d = wrap_dim(dim, x.dim(), op);
  int64_t total = 0;
  for (int64_t s : sizes) {
    KCHECK(s >= 0, ShapeError, op, ": negative piece size ", s);
    total += s;
  }
  KCHECK(total == x.size(d), ShapeError, op, ": sizes [",
         join(sizes, ",", [](int64_t s) { return std::to_string(s); }), "] sum to ", total, " but dim ", d, " of ",
         shape_str(x.shape()), " has size ", x.size(d));
  std::vector<Tensor> pieces;
  pieces.reserve(sizes.size());
  int64_t start = 0;
  for (int64_t s : sizes) {
    pieces.push_back(x.narrow(d, start, s));
    start += s;
  }
  return pieces;
}

Tensor pad2d(const Tensor& x, int64_t top, int64_t bottom, int64_t left, int64_t right, double value) {
  const char* op = "pad2d";
  check_defined(x, op, "input");
  check_dim(x, 4, op, "input (NHWC)");
  KCHECK(top >= 0 && bottom >= 0 && left >= 0 && right >= 0, ValueError, op,
         ": padding must be >= 0, got top ", top, ", bottom ", bottom, ", left ", left, ", right ", right);
  const int64_t h = x.size(1), w = x.size(2);
  Tensor out = Tensor::full({x.size(0), h + top + bottom, w + left + right, x.size(3)}, value, x.dtype(), x.device());
  {
    NoGradGuard guard;
    if (x.numel() > 0) out.narrow(1, top, h).narrow(2, left, w).copy_(x.detach());
  }
  trace_op(op, {x}, out, 0,
           {{"pads", std::to_string(top) + "," + std::to_string(bottom) + "," + std::to_string(left) + "," +
                         std::to_string(right)},
            {"value", exact_str(value)}});
  return record(out, op, {x}, [top, left, h, w](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.narrow(1, top, h).narrow(2, left, w).contiguous()};
  });
}

}  // namespace kestrel
