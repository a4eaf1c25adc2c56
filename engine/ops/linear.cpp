#include "engine/ops/linear.h"

#include <algorithm>
#include <cstring>

#include "engine/autograd.h"
#include "engine/cpu/gemm.h"
#include "engine/ops/check.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

// A 2-D operand as BLAS sees it: row-major storage of m or of m^T, with its leading dimension.
struct BlasMatrix {
  Tensor t;
  bool trans = false;
  int64_t ld = 1;
};

BlasMatrix as_blas(const Tensor& m) {
  const int64_t rows = m.size(0), cols = m.size(1);
  const Shape& st = m.strides();
  if (rows > 1 && cols > 1) {
    if (st[1] == 1 && st[0] >= cols) return {m, false, st[0]};
    if (st[0] == 1 && st[1] >= rows) return {m, true, st[1]};
  }
  return {m.contiguous(), false, std::max<int64_t>(1, cols)};
}

template <typename T>
const T* ptr(const BlasMatrix& b) {
  return static_cast<const T*>(b.t.data_ptr());
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  const char* op = "matmul";
  check_defined(a, op, "first operand");
  check_defined(b, op, "second operand");
  check_cpu(a, op);
  check_same_device(a, b, op);
  check_same_dtype(a, b, op);
  check_dim(a, 2, op, "first operand");
  check_dim(b, 2, op, "second operand");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  KCHECK(b.size(0) == K, ShapeError, op, ": inner dimensions differ: ", shape_str(a.shape()), " x ",
         shape_str(b.shape()));
  const BlasMatrix A = as_blas(a.detach()), B = as_blas(b.detach());
  Tensor out = Tensor::empty({M, N}, a.dtype(), a.device());
  dispatch_float(a.dtype(), op, [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::gemm<scalar_t>(A.trans, B.trans, M, N, K, scalar_t(1), ptr<scalar_t>(A), A.ld, ptr<scalar_t>(B), B.ld,
                        scalar_t(0), out.data<scalar_t>(), std::max<int64_t>(1, N));
  });
  trace_op(op, {a, b}, out, M * N * K);
  if (!needs_grad({a, b})) return out;
  const BlasMatrix As = b.requires_grad() ? A : BlasMatrix{};
  const BlasMatrix Bs = a.requires_grad() ? B : BlasMatrix{};
  return record(out, op, {a, b}, [M, N, K, As, Bs](const Tensor& grad, const std::vector<bool>& needs) {
    const Tensor g = grad.contiguous();
    Tensor ga, gb;
    dispatch_float(g.dtype(), "matmul backward", [&](auto tag_) {
      using scalar_t = KESTREL_SCALAR(tag_);
      const scalar_t* pg = g.data<scalar_t>();
      if (needs[0]) {  // ga[M,K] = g[M,N] b^T
        ga = Tensor::empty({M, K}, g.dtype(), g.device());
        cpu::gemm<scalar_t>(false, !Bs.trans, M, K, N, scalar_t(1), pg, std::max<int64_t>(1, N), ptr<scalar_t>(Bs),
                            Bs.ld, scalar_t(0), ga.data<scalar_t>(), std::max<int64_t>(1, K));
      }
      if (needs[1]) {  // gb[K,N] = a^T g[M,N]
        gb = Tensor::empty({K, N}, g.dtype(), g.device());
        cpu::gemm<scalar_t>(!As.trans, false, K, N, M, scalar_t(1), ptr<scalar_t>(As), As.ld, pg,
                            std::max<int64_t>(1, N), scalar_t(0), gb.data<scalar_t>(), std::max<int64_t>(1, N));
      }
    });
    return std::vector<Tensor>{ga, gb};
  });
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const char* op = "linear";
  check_defined(x, op, "input");
  check_defined(weight, op, "weight");
  check_cpu(x, op);
  check_same_device(x, weight, op);
  check_same_dtype(x, weight, op);
  check_dim(weight, 2, op, "weight ([out, in])");
  KCHECK(x.dim() >= 1, ShapeError, op, ": input must have at least 1 dim, got ", shape_str(x.shape()));
  const int64_t in = weight.size(1), out_f = weight.size(0);
  KCHECK(x.size(-1) == in, ShapeError, op, ": input has ", x.size(-1), " features but weight ",
         shape_str(weight.shape()), " expects ", in, " (input ", shape_str(x.shape()), ")");
  if (bias.defined()) {
    check_same_device(x, bias, op);
    check_same_dtype(x, bias, op);
    KCHECK(bias.dim() == 1 && bias.size(0) == out_f, ShapeError, op, ": bias has shape ", shape_str(bias.shape()),
           " but weight ", shape_str(weight.shape()), " has ", out_f, " outputs");
  }
  const int64_t M = in > 0 ? x.numel() / in : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  const Tensor xc = x.detach().contiguous();
  const Tensor wc = weight.detach().contiguous();
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  dispatch_float(x.dtype(), op, [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    scalar_t* py = out.data<scalar_t>();
    scalar_t beta = scalar_t(0);
    if (bias.defined()) {
      const Tensor bc = bias.detach().contiguous();
      const scalar_t* pb = bc.data<scalar_t>();
      for (int64_t m = 0; m < M; ++m) std::memcpy(py + m * out_f, pb, sizeof(scalar_t) * out_f);
      beta = scalar_t(1);
    }
    cpu::gemm<scalar_t>(false, true, M, out_f, in, scalar_t(1), xc.data<scalar_t>(), std::max<int64_t>(1, in),
                        wc.data<scalar_t>(), std::max<int64_t>(1, in), beta, py, std::max<int64_t>(1, out_f));
  });
  trace_op(op, {x, weight, bias}, out, M * out_f * in, {{"bias", bias.defined() ? "true" : "false"}});
  if (!needs_grad({x, weight, bias})) return out;
  const Tensor xs = weight.requires_grad() ? xc : Tensor();
  const Tensor ws = x.requires_grad() ? wc : Tensor();
  const Shape x_shape = x.shape();
  return record(out, op, {x, weight, bias},
                [M, in, out_f, xs, ws, x_shape](const Tensor& grad, const std::vector<bool>& needs) {
                  const Tensor g = grad.contiguous();
                  Tensor gx, gw, gb;
                  dispatch_float(g.dtype(), "linear backward", [&](auto tag_) {
                    using scalar_t = KESTREL_SCALAR(tag_);
                    const scalar_t* pg = g.data<scalar_t>();
                    const int64_t ld_in = std::max<int64_t>(1, in), ld_out = std::max<int64_t>(1, out_f);
                    if (needs[0]) {  // gx[M,in] = g[M,out] W[out,in]
                      gx = Tensor::empty(x_shape, g.dtype(), g.device());
                      cpu::gemm<scalar_t>(false, false, M, in, out_f, scalar_t(1), pg, ld_out, ws.data<scalar_t>(),
                                          ld_in, scalar_t(0), gx.data<scalar_t>(), ld_in);
                    }
                    if (needs[1]) {  // gw[out,in] = g^T x
                      gw = Tensor::empty({out_f, in}, g.dtype(), g.device());
                      cpu::gemm<scalar_t>(true, false, out_f, in, M, scalar_t(1), pg, ld_out, xs.data<scalar_t>(),
                                          ld_in, scalar_t(0), gw.data<scalar_t>(), ld_in);
                    }
                    if (needs.size() > 2 && needs[2]) {
                      gb = Tensor::empty({out_f}, g.dtype(), g.device());
                      cpu::column_sums<scalar_t>(M, out_f, pg, gb.data<scalar_t>());
                    }
                  });
                  return std::vector<Tensor>{gx, gw, gb};
                });
}

}  // namespace kestrel
