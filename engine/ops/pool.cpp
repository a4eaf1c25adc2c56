#include "engine/ops/pool.h"

#include <climits>
#include <string>

#include "engine/autograd.h"
#include "engine/cpu/pool.h"
#include "engine/gpu/pool.h"
#include "engine/ops/check.h"
#include "engine/ops/conv.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

cpu::PoolGeom input_geom(const Tensor& x, const char* op) {
  check_defined(x, op, "input");
  check_dim(x, 4, op, "input (NHWC)");
  cpu::PoolGeom g;
  g.n = x.size(0);
  g.h = x.size(1);
  g.w = x.size(2);
  g.c = x.size(3);
  return g;
}

cpu::PoolGeom window_geom(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding, const char* op) {
  cpu::PoolGeom g = input_geom(x, op);
  KCHECK(kernel >= 1 && stride >= 1, ValueError, op, ": kernel (", kernel, ") and stride (", stride,
         ") must be >= 1");
  KCHECK(padding >= 0 && 2 * padding <= kernel, ValueError, op, ": padding ", padding,
         " must be between 0 and half the kernel size ", kernel);
  g.kernel = kernel;
  g.stride = stride;
  g.pad = padding;
  g.oh = conv_output_size(g.h, kernel, stride, padding, 1);
  g.ow = conv_output_size(g.w, kernel, stride, padding, 1);
  KCHECK(g.oh > 0 && g.ow > 0, ShapeError, op, ": kernel ", kernel, " with padding ", padding,
         " does not fit the input ", shape_str(x.shape()), " NHWC");
  return g;
}

Tensor output_for(const cpu::PoolGeom& g, const Tensor& x) {
  return Tensor::empty({g.n, g.oh, g.ow, g.c}, x.dtype(), x.device());
}

Tensor input_grad_for(const cpu::PoolGeom& g, const Tensor& grad) {
  return Tensor::empty({g.n, g.h, g.w, g.c}, grad.dtype(), grad.device());
}

std::map<std::string, std::string> window_attrs(const cpu::PoolGeom& g) {
  return {{"kernel", std::to_string(g.kernel)}, {"stride", std::to_string(g.stride)}, {"padding", std::to_string(g.pad)}};
}

// Device routing: CUDA tensors go to engine/gpu/pool.h, CPU tensors to the
// f32/f64 kernels of engine/cpu/pool.h. Tensors are contiguous.

void max_pool_forward(const cpu::PoolGeom& g, const Tensor& x, const Tensor& y, const Tensor& argmax) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::max_pool2d_forward(g, x, y, argmax);
  }
  dispatch_float(x.dtype(), "max_pool2d", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::max_pool2d_forward<scalar_t>(g, x.data<scalar_t>(), y.data<scalar_t>(), argmax.data<int32_t>());
  });
}

void max_pool_backward(const cpu::PoolGeom& g, const Tensor& gy, const Tensor& argmax, const Tensor& gx) {
  if constexpr (kHaveCuda) {
    if (gy.device().is_cuda()) return gpu::max_pool2d_backward(g, gy, argmax, gx);
  }
  dispatch_float(gy.dtype(), "max_pool2d backward", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::max_pool2d_backward<scalar_t>(g, gy.data<scalar_t>(), argmax.data<int32_t>(), gx.data<scalar_t>());
  });
}

void avg_pool_forward(const cpu::PoolGeom& g, bool count_include_pad, const Tensor& x, const Tensor& y) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::avg_pool2d_forward(g, count_include_pad, x, y);
  }
  dispatch_float(x.dtype(), "avg_pool2d", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::avg_pool2d_forward<scalar_t>(g, count_include_pad, x.data<scalar_t>(), y.data<scalar_t>());
  });
}

void avg_pool_backward(const cpu::PoolGeom& g, bool count_include_pad, const Tensor& gy, const Tensor& gx) {
  if constexpr (kHaveCuda) {
    if (gy.device().is_cuda()) return gpu::avg_pool2d_backward(g, count_include_pad, gy, gx);
  }
  dispatch_float(gy.dtype(), "avg_pool2d backward", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::avg_pool2d_backward<scalar_t>(g, count_include_pad, gy.data<scalar_t>(), gx.data<scalar_t>());
  });
}

void adaptive_forward(const cpu::PoolGeom& g, const Tensor& x, const Tensor& y, const char* op) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::adaptive_avg_pool2d_forward(g, x, y);
  }
  dispatch_float(x.dtype(), op, [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::adaptive_avg_pool2d_forward<scalar_t>(g, x.data<scalar_t>(), y.data<scalar_t>());
  });
}

void adaptive_backward(const cpu::PoolGeom& g, const Tensor& gy, const Tensor& gx) {
  if constexpr (kHaveCuda) {
    if (gy.device().is_cuda()) return gpu::adaptive_avg_pool2d_backward(g, gy, gx);
  }
  dispatch_float(gy.dtype(), "adaptive_avg_pool2d backward", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::adaptive_avg_pool2d_backward<scalar_t>(g, gy.data<scalar_t>(), gx.data<scalar_t>());
  });
}

void resize_forward(const cpu::PoolGeom& g, bool align_corners, const Tensor& x, const Tensor& y) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::resize_bilinear_forward(g, align_corners, x, y);
  }
  dispatch_float(x.dtype(), "resize_bilinear", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::resize_bilinear_forward<scalar_t>(g, align_corners, x.data<scalar_t>(), y.data<scalar_t>());
  });
}

void resize_backward(const cpu::PoolGeom& g, bool align_corners, const Tensor& gy, const Tensor& gx) {
  if constexpr (kHaveCuda) {
    if (gy.device().is_cuda()) return gpu::resize_bilinear_backward(g, align_corners, gy, gx);
  }
  dispatch_float(gy.dtype(), "resize_bilinear backward", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::resize_bilinear_backward<scalar_t>(g, align_corners, gy.data<scalar_t>(), gx.data<scalar_t>());
  });
}

}  // namespace

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  const char* op = "max_pool2d";
  const cpu::PoolGeom g = window_geom(x, kernel, stride, padding, op);
  KCHECK(g.h * g.w <= INT_MAX, ShapeError, op, ": input ", shape_str(x.shape()), " has too many pixels per image");
  const Tensor xc = x.detach().contiguous();
  Tensor out = output_for(g, x);
  Tensor argmax = Tensor::empty(out.shape(), DType::I32, x.device());
  max_pool_forward(g, xc, out, argmax);
  trace_op(op, {x}, out, 0, window_attrs(g));
  if (!needs_grad({x})) return out;
  return record(out, op, {x}, [g, argmax](const Tensor& grad, const std::vector<bool>&) {
    const Tensor gy = grad.contiguous();
    Tensor gx = input_grad_for(g, gy);
    max_pool_backward(g, gy, argmax, gx);
    return std::vector<Tensor>{gx};
  });
}

Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding, bool count_include_pad) {
  const char* op = "avg_pool2d";
  const cpu::PoolGeom g = window_geom(x, kernel, stride, padding, op);
  const Tensor xc = x.detach().contiguous();
  Tensor out = output_for(g, x);
  avg_pool_forward(g, count_include_pad, xc, out);
  auto attrs = window_attrs(g);
  attrs["count_include_pad"] = count_include_pad ? "true" : "false";
  trace_op(op, {x}, out, 0, attrs);
  if (!needs_grad({x})) return out;
  return record(out, op, {x}, [g, count_include_pad](const Tensor& grad, const std::vector<bool>&) {
    const Tensor gy = grad.contiguous();
    Tensor gx = input_grad_for(g, gy);
    avg_pool_backward(g, count_include_pad, gy, gx);
    return std::vector<Tensor>{gx};
  });
}

namespace {

Tensor adaptive_impl(const Tensor& x, int64_t out_h, int64_t out_w, const char* op) {
  cpu::PoolGeom g = input_geom(x, op);
  KCHECK(out_h >= 1 && out_w >= 1, ValueError, op, ": output size must be >= 1, got ", out_h, "x", out_w);
  KCHECK(g.h >= 1 && g.w >= 1, ShapeError, op, ": input ", shape_str(x.shape()), " NHWC has no pixels");
  g.oh = out_h;
  g.ow = out_w;
  g.kernel = (g.h + out_h - 1) / out_h + 1;  // only a work estimate for threading
  const Tensor xc = x.detach().contiguous();
  Tensor out = output_for(g, x);
  adaptive_forward(g, xc, out, op);
  trace_op(op, {x}, out, 0, {{"output_size", std::to_string(out_h) + "x" + std::to_string(out_w)}});
  if (!needs_grad({x})) return out;
  return record(out, op, {x}, [g](const Tensor& grad, const std::vector<bool>&) {
    const Tensor gy = grad.contiguous();
    Tensor gx = input_grad_for(g, gy);
    adaptive_backward(g, gy, gx);
    return std::vector<Tensor>{gx};
  });
}

}  // namespace

Tensor global_avg_pool(const Tensor& x) { return adaptive_impl(x, 1, 1, "global_avg_pool"); }

Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w) {
  return adaptive_impl(x, out_h, out_w, "adaptive_avg_pool2d");
}

namespace {

void coord_pool_forward_on(const cpu::PoolGeom& g, const Tensor& x, const Tensor& y) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::coord_pool_forward(g, x, y);
  }
  dispatch_float(x.dtype(), "coord_pool", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::coord_pool_forward<scalar_t>(x.data<scalar_t>(), g.n, g.h, g.w, g.c, y.data<scalar_t>());
  });
}

void coord_pool_backward_on(const cpu::PoolGeom& g, const Tensor& gy, const Tensor& gx) {
  if constexpr (kHaveCuda) {
    if (gy.device().is_cuda()) return gpu::coord_pool_backward(g, gy, gx);
  }
  dispatch_float(gy.dtype(), "coord_pool backward", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::coord_pool_backward<scalar_t>(gy.data<scalar_t>(), g.n, g.h, g.w, g.c, gx.data<scalar_t>());
  });
}

}  // namespace

Tensor coord_pool(const Tensor& x) {
  const char* op = "coord_pool";
  const cpu::PoolGeom g = input_geom(x, op);
  if (layers_are_traced()) {
    Tensor along_h = adaptive_avg_pool2d(x, g.h, 1);                        // [N,H,1,C]
    Tensor along_w = adaptive_avg_pool2d(x, 1, g.w).permute({0, 2, 1, 3});  // [N,W,1,C]
    return concat({along_h, along_w}, 1);
  }
  KCHECK(g.h >= 1 && g.w >= 1, ShapeError, op, ": input ", shape_str(x.shape()), " NHWC has no pixels");
  const Tensor xc = x.detach().contiguous();
  Tensor out = Tensor::empty({g.n, g.h + g.w, 1, g.c}, x.dtype(), x.device());
  coord_pool_forward_on(g, xc, out);
  trace_op(op, {x}, out, 0);
  if (!needs_grad({x})) return out;
  return record(out, op, {x}, [g](const Tensor& grad, const std::vector<bool>&) {
    const Tensor gy = grad.contiguous();
    Tensor gx = input_grad_for(g, gy);
    coord_pool_backward_on(g, gy, gx);
    return std::vector<Tensor>{gx};
  });
}

Tensor resize_bilinear(const Tensor& x, int64_t out_h, int64_t out_w, bool align_corners) {
  const char* op = "resize_bilinear";
  cpu::PoolGeom g = input_geom(x, op);
  KCHECK(out_h >= 1 && out_w >= 1, ValueError, op, ": output size must be >= 1, got ", out_h, "x", out_w);
  KCHECK(g.h >= 1 && g.w >= 1, ShapeError, op, ": input ", shape_str(x.shape()), " NHWC has no pixels");
  g.oh = out_h;
  g.ow = out_w;
  const Tensor xc = x.detach().contiguous();
  Tensor out = output_for(g, x);
  resize_forward(g, align_corners, xc, out);
  trace_op(op, {x}, out, 0,
           {{"output_size", std::to_string(out_h) + "x" + std::to_string(out_w)},
            {"align_corners", align_corners ? "true" : "false"}});
  if (!needs_grad({x})) return out;
  return record(out, op, {x}, [g, align_corners](const Tensor& grad, const std::vector<bool>&) {
    const Tensor gy = grad.contiguous();
    Tensor gx = input_grad_for(g, gy);
    resize_backward(g, align_corners, gy, gx);
    return std::vector<Tensor>{gx};
  });
}

}  // namespace kestrel
