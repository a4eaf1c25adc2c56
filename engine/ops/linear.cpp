#include "engine/ops/linear.h"

#include <algorithm>
#include <cstring>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cpu/gemm.h"
#include "engine/gpu/blas.h"
#include "engine/gpu/linear.h"
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

int64_t ld(int64_t cols) { return std::max<int64_t>(1, cols); }

// C = op(A) op(B), or C += op(A) op(B) with accumulate, on the device of
// `like` (whose dtype all three share): cuBLAS on CUDA, OpenBLAS on the CPU.
void gemm_like(const Tensor& like, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
               int64_t lda, const void* B, int64_t ldb, bool accumulate, void* C, int64_t ldc, const char* op) {
  if constexpr (kHaveCuda) {
    if (like.device().is_cuda()) {
      gpu::gemm(like.device().index, like.dtype(), trans_a, trans_b, M, N, K, 1.0, A, lda, B, ldb,
                accumulate ? 1.0 : 0.0, C, ldc, op);
      return;
    }
  }
  dispatch_float(like.dtype(), op, [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::gemm<scalar_t>(trans_a, trans_b, M, N, K, scalar_t(1), static_cast<const scalar_t*>(A), lda,
                        static_cast<const scalar_t*>(B), ldb, accumulate ? scalar_t(1) : scalar_t(0),
                        static_cast<scalar_t*>(C), ldc);
  });
}

// Every row of the contiguous `out` becomes the contiguous `row`.
void broadcast_rows(const Tensor& row, const Tensor& out, const char* op) {
  if constexpr (kHaveCuda) {
    if (out.device().is_cuda()) {
      gpu::broadcast_rows(row, out, op);
      return;
    }
  }
  const int64_t cols = row.numel(), rows = cols > 0 ? out.numel() / cols : 0;
  const size_t row_bytes = row.nbytes();
  const char* src = static_cast<const char*>(row.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t m = 0; m < rows; ++m) std::memcpy(dst + m * row_bytes, src, row_bytes);
}

// [cols] sums over the rows of the contiguous g read as [rows, cols] (bias gradients).
Tensor column_sums(const Tensor& g, int64_t rows, int64_t cols, const char* op) {
  if constexpr (kHaveCuda) {
    if (g.device().is_cuda()) return gpu::column_sums(g, cols, op);
  }
  Tensor out = Tensor::empty({cols}, g.dtype(), g.device());
  dispatch_float(g.dtype(), op, [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    cpu::column_sums<scalar_t>(rows, cols, g.data<scalar_t>(), out.data<scalar_t>());
  });
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  const char* op = "matmul";
  // Under autocast (CUDA only) f32 operands become f16/bf16 through recorded casts.
  const Tensor a = autocast_operand(a_in), b = autocast_operand(b_in);
  check_defined(a, op, "first operand");
  check_defined(b, op, "second operand");
  check_same_device_and_dtype(a, b, op);
  check_dim(a, 2, op, "first operand");
  check_dim(b, 2, op, "second operand");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  KCHECK(b.size(0) == K, ShapeError, op, ": inner dimensions differ: ", shape_str(a.shape()), " x ",
         shape_str(b.shape()));
  const BlasMatrix A = as_blas(a.detach()), B = as_blas(b.detach());
  Tensor out = Tensor::empty({M, N}, a.dtype(), a.device());
  gemm_like(out, A.trans, B.trans, M, N, K, A.t.data_ptr(), A.ld, B.t.data_ptr(), B.ld, false, out.data_ptr(), ld(N),
            op);
  trace_op(op, {a, b}, out, M * N * K);
  if (!needs_grad({a, b})) return out;
  const BlasMatrix As = b.requires_grad() ? A : BlasMatrix{};
  const BlasMatrix Bs = a.requires_grad() ? B : BlasMatrix{};
  return record(out, op, {a, b}, [M, N, K, As, Bs](const Tensor& grad, const std::vector<bool>& needs) {
    const char* bop = "matmul backward";
    const Tensor g = grad.contiguous();
    Tensor ga, gb;
    if (needs[0]) {  // ga[M,K] = g[M,N] b^T
      ga = Tensor::empty({M, K}, g.dtype(), g.device());
      gemm_like(g, false, !Bs.trans, M, K, N, g.data_ptr(), ld(N), Bs.t.data_ptr(), Bs.ld, false, ga.data_ptr(),
                ld(K), bop);
    }
    if (needs[1]) {  // gb[K,N] = a^T g[M,N]
      gb = Tensor::empty({K, N}, g.dtype(), g.device());
      gemm_like(g, !As.trans, false, K, N, M, As.t.data_ptr(), As.ld, g.data_ptr(), ld(N), false, gb.data_ptr(),
                ld(N), bop);
    }
    return std::vector<Tensor>{ga, gb};
  });
}

Tensor linear(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in) {
  const char* op = "linear";
  const Tensor x = autocast_operand(x_in), weight = autocast_operand(weight_in), bias = autocast_operand(bias_in);
  check_defined(x, op, "input");
  check_defined(weight, op, "weight");
  check_same_device_and_dtype(x, weight, op);
  check_dim(weight, 2, op, "weight ([out, in])");
  KCHECK(x.dim() >= 1, ShapeError, op, ": input must have at least 1 dim, got ", shape_str(x.shape()));
  const int64_t in = weight.size(1), out_f = weight.size(0);
  KCHECK(x.size(-1) == in, ShapeError, op, ": input has ", x.size(-1), " features but weight ",
         shape_str(weight.shape()), " expects ", in, " (input ", shape_str(x.shape()), ")");
  if (bias.defined()) {
    check_same_device_and_dtype(x, bias, op);
    KCHECK(bias.dim() == 1 && bias.size(0) == out_f, ShapeError, op, ": bias has shape ", shape_str(bias.shape()),
           " but weight ", shape_str(weight.shape()), " has ", out_f, " outputs");
  }
  const int64_t M = in > 0 ? x.numel() / in : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  const Tensor xc = x.detach().contiguous();
  const Tensor wc = weight.detach().contiguous();
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  // The bias is written first and the GEMM adds onto it (beta = 1).
  if (bias.defined()) broadcast_rows(bias.detach().contiguous(), out, op);
  gemm_like(out, false, true, M, out_f, in, xc.data_ptr(), ld(in), wc.data_ptr(), ld(in), bias.defined(),
            out.data_ptr(), ld(out_f), op);
  trace_op(op, {x, weight, bias}, out, M * out_f * in, {{"bias", bias.defined() ? "true" : "false"}});
  if (!needs_grad({x, weight, bias})) return out;
  const Tensor xs = weight.requires_grad() ? xc : Tensor();
  const Tensor ws = x.requires_grad() ? wc : Tensor();
  const Shape x_shape = x.shape();
  return record(out, op, {x, weight, bias},
                [M, in, out_f, xs, ws, x_shape](const Tensor& grad, const std::vector<bool>& needs) {
                  const char* bop = "linear backward";
                  const Tensor g = grad.contiguous();
                  Tensor gx, gw, gb;
                  if (needs[0]) {  // gx[M,in] = g[M,out] W[out,in]
                    gx = Tensor::empty(x_shape, g.dtype(), g.device());
                    gemm_like(g, false, false, M, in, out_f, g.data_ptr(), ld(out_f), ws.data_ptr(), ld(in), false,
                              gx.data_ptr(), ld(in), bop);
                  }
                  if (needs[1]) {  // gw[out,in] = g^T x
                    gw = Tensor::empty({out_f, in}, g.dtype(), g.device());
                    gemm_like(g, true, false, out_f, in, M, g.data_ptr(), ld(out_f), xs.data_ptr(), ld(in), false,
                              gw.data_ptr(), ld(in), bop);
                  }
                  if (needs.size() > 2 && needs[2]) gb = column_sums(g, M, out_f, bop);
                  return std::vector<Tensor>{gx, gw, gb};
                });
}

}  // namespace kestrel
