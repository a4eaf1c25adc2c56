#include "engine/gpu/ghost.h"

#include <climits>
#include <string>
#include <type_traits>

#include "engine/cuda/runtime.h"
#include "engine/gpu/blas.h"
#include "kernels/common.cuh"
#include "kernels/ghost.h"

namespace kestrel::gpu {

namespace {

using kernels::KAct;
using kernels::KDType;

constexpr int kThreadsPerBlock = 256;

// In place over a [rows, cols] block of a matrix with row pitch `pitch`:
// v = data + bias; pre = v (when not null, [rows, cols] dense); data = act(v).
template <typename T>
__global__ void bias_act_columns(T* data, int64_t rows, int cols, int64_t pitch, const T* bias, KAct act, T* pre) {
  const int64_t total = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols;
    const int c = static_cast<int>(i - r * cols);
    T* p = data + r * pitch + c;
    float v = kernels::to_f32(*p);
    if (bias) v = kernels::to_f32(kernels::from_f32<T>(v + kernels::to_f32(bias[c])));
    if (pre) pre[i] = kernels::from_f32<T>(v);
    *p = kernels::from_f32<T>(kernels::act_forward(act, v));
  }
}

// dst = src * act'(pre) over a [rows, cols] block (pitches in elements, pre
// dense [rows, cols]); a plain copy when pre is null. dst may be src.
template <typename T>
__global__ void act_grad_columns(const T* src, int64_t src_pitch, T* dst, int64_t dst_pitch, int64_t rows, int cols,
                                 const T* pre, KAct act) {
  const int64_t total = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols;
    const int c = static_cast<int>(i - r * cols);
    const T g = src[r * src_pitch + c];
    dst[r * dst_pitch + c] =
        pre ? kernels::from_f32<T>(kernels::to_f32(g) * kernels::act_derivative(act, kernels::to_f32(pre[i]))) : g;
  }
}

unsigned blocks_for(int64_t items) {
  const int64_t b = (items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

KDType kernel_dtype(DType t, const Tensor& x, const char* op) {
  switch (t) {
    case DType::F32: return KDType::F32;
    case DType::F16: return KDType::F16;
    case DType::BF16: return KDType::BF16;
    default: break;
  }
  throw DTypeError(detail::concat(op, ": the fused CUDA ghost module supports f32, f16 and bf16, got ",
                                  dtype_name(t), " (input ", shape_str(x.shape()), ")"));
}

template <typename F>
void dispatch(KDType dt, F&& f) {
  switch (dt) {
    case KDType::F32: f(static_cast<float*>(nullptr)); return;
    case KDType::F16: f(static_cast<__half*>(nullptr)); return;
    case KDType::BF16: f(static_cast<__nv_bfloat16*>(nullptr)); return;
  }
}

KAct kernel_act(Activation a) { return static_cast<KAct>(static_cast<int>(a)); }

int as_int(int64_t v, const Tensor& x, const char* op) {
  KCHECK(v <= INT_MAX, ShapeError, op, ": input ", shape_str(x.shape()), " is too large for the fused kernel");
  return static_cast<int>(v);
}

kernels::GhostShape ghost_shape(const Tensor& x, const Tensor& w_primary, const Tensor& w_cheap, const char* op) {
  kernels::GhostShape g;
  g.N = as_int(x.size(0), x, op);
  g.H = as_int(x.size(1), x, op);
  g.W = as_int(x.size(2), x, op);
  g.C_primary = as_int(w_primary.size(0), x, op);
  g.C_out = as_int(w_primary.size(0) + w_cheap.size(0), x, op);
  g.K = as_int(w_cheap.size(1), x, op);
  return g;
}

std::string describe(const Tensor& x, const kernels::GhostShape& g) {
  return detail::concat("input ", shape_str(x.shape()), " ", dtype_name(x.dtype()), ", C_primary ", g.C_primary,
                        ", C_out ", g.C_out, ", cheap kernel ", g.K);
}

void check_launch(const char* what, const Tensor& x, const kernels::GhostShape& g) {
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), what, " ", describe(x, g));
}

const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* ptr_or_null_mut(Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// Runs the bias + activation column kernel on channels [first, first + cols) of out.
void bias_act(KDType dt, Tensor& out, int64_t first, int cols, const Tensor& bias, KAct act, Tensor& pre,
              cudaStream_t st) {
  const int64_t rows = out.numel() / out.size(3);
  const int64_t pitch = out.size(3);
  dispatch(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    bias_act_columns<T><<<blocks_for(rows * cols), kThreadsPerBlock, 0, st>>>(
        static_cast<T*>(out.data_ptr()) + first, rows, cols, pitch, static_cast<const T*>(ptr_or_null(bias)), act,
        static_cast<T*>(ptr_or_null_mut(pre)));
  });
}

// dst[:, dst_first:+cols] = src[:, src_first:+cols] * act'(pre) (a copy when pre is undefined).
void act_grad(KDType dt, const Tensor& src, int64_t src_first, Tensor& dst, int64_t dst_first, int cols,
              const Tensor& pre, KAct act, cudaStream_t st) {
  const int64_t rows = src.numel() / src.size(3);
  dispatch(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    act_grad_columns<T><<<blocks_for(rows * cols), kThreadsPerBlock, 0, st>>>(
        static_cast<const T*>(src.data_ptr()) + src_first, src.size(3), static_cast<T*>(dst.data_ptr()) + dst_first,
        dst.size(3), rows, cols, static_cast<const T*>(ptr_or_null(pre)), act);
  });
}

}  // namespace

GhostForward ghost_module_forward(const Tensor& x, const Tensor& w_primary, const Tensor& b_primary,
                                  const Tensor& w_cheap, const Tensor& b_cheap, Activation act,
                                  bool keep_for_backward) {
  const char* op = "ghost_module";
  const KDType dt = kernel_dtype(x.dtype(), x, op);
  const kernels::GhostShape g = ghost_shape(x, w_primary, w_cheap, op);
  const Device d = x.device();
  cuda::DeviceGuard guard(d.index);
  const cudaStream_t st = cuda::current_stream(d.index);
  const int64_t rows = x.numel() / x.size(3), c_in = x.size(3);
  GhostForward f;
  f.y = Tensor::empty({x.size(0), x.size(1), x.size(2), g.C_out}, x.dtype(), d);
  const bool keep_pre = keep_for_backward && act != Activation::None;
  if (keep_pre) {
    f.pre_primary = Tensor::empty({rows, g.C_primary}, x.dtype(), d);
    f.pre_cheap = Tensor::empty({rows, g.C_cheap()}, x.dtype(), d);
  }
  // Primary 1x1: y[:, :C_primary] = x @ w_primary^T, then bias and activation in place.
  gemm(d.index, x.dtype(), false, true, rows, g.C_primary, c_in, 1.0, x.data_ptr(), c_in, w_primary.data_ptr(), c_in,
       0.0, f.y.data_ptr(), g.C_out, op);
  bias_act(dt, f.y, 0, g.C_primary, b_primary, kernel_act(act), f.pre_primary, st);
  check_launch("ghost_module (primary bias and activation)", x, g);
  // Cheap depthwise: y[:, C_primary:] = act(dw(y[:, :C_cheap]) + b_cheap). Without a
  // pre-activation to keep, the activation is the depthwise kernel's epilogue
  // (one pass over the cheap half instead of two).
  kernels::GhostShape cheap = g;
  if (!keep_pre) cheap.act = kernel_act(act);
  KESTREL_CUDA_CHECK_CTX(kernels::ghost_cheap_forward(dt, cheap, f.y.data_ptr(), w_cheap.data_ptr(),
                                                      ptr_or_null(b_cheap), st),
                         op, " ", describe(x, g));
  if (keep_pre) {
    bias_act(dt, f.y, g.C_primary, g.C_cheap(), Tensor(), kernel_act(act), f.pre_cheap, st);
    check_launch("ghost_module (cheap activation)", x, g);
  }
  return f;
}

GhostGrads ghost_module_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w_primary,
                                 const Tensor& w_cheap, const GhostForward& saved, Activation act,
                                 const std::vector<bool>& need) {
  const char* op = "ghost_module backward";
  const KDType dt = kernel_dtype(x.dtype(), x, op);
  const kernels::GhostShape g = ghost_shape(x, w_primary, w_cheap, op);
  const Device d = x.device();
  cuda::DeviceGuard guard(d.index);
  const cudaStream_t st = cuda::current_stream(d.index);
  const int64_t rows = x.numel() / x.size(3), c_in = x.size(3);
  const KAct ka = kernel_act(act);
  // One working gradient: channels [C_primary, C_out) take act' of the cheap
  // pre-activation, [0, C_primary) start as grad_y's and then gather the cheap
  // op's data gradient in place.
  Tensor work = Tensor::empty(grad_y.shape(), grad_y.dtype(), d);
  act_grad(dt, grad_y, 0, work, 0, g.C_primary, Tensor(), ka, st);
  act_grad(dt, grad_y, g.C_primary, work, g.C_primary, g.C_cheap(), saved.pre_cheap, ka, st);
  check_launch("ghost_module backward (cheap activation)", x, g);
  GhostGrads out;
  out.w_cheap = Tensor::empty(w_cheap.shape(), w_cheap.dtype(), d);  // the kernel always writes it
  if (need[4]) out.b_cheap = Tensor::empty({g.C_cheap()}, x.dtype(), d);
  const Tensor ws = Tensor::empty(
      {static_cast<int64_t>((kernels::ghost_cheap_backward_workspace_bytes(g) + sizeof(float) - 1) / sizeof(float)) +
       1},
      DType::F32, d);
  KESTREL_CUDA_CHECK_CTX(kernels::ghost_cheap_backward(dt, g, saved.y.data_ptr(), work.data_ptr(),
                                                       w_cheap.data_ptr(), out.w_cheap.data_ptr(),
                                                       ptr_or_null_mut(out.b_cheap), ws.data_ptr(), st),
                         op, " ", describe(x, g));
  if (!need[3]) out.w_cheap = Tensor();
  // work[:, :C_primary] is now d(primary output); through the activation in place.
  if (act != Activation::None) {
    act_grad(dt, work, 0, work, 0, g.C_primary, saved.pre_primary, ka, st);
    check_launch("ghost_module backward (primary activation)", x, g);
  }
  // The primary 1x1's gradients read work[:, :C_primary] with leading dimension C_out.
  if (need[0]) {
    out.x = Tensor::empty(x.shape(), x.dtype(), d);
    gemm(d.index, x.dtype(), false, false, rows, c_in, g.C_primary, 1.0, work.data_ptr(), g.C_out,
         w_primary.data_ptr(), c_in, 0.0, out.x.data_ptr(), c_in, op);
  }
  if (need[1]) {
    out.w_primary = Tensor::empty(w_primary.shape(), w_primary.dtype(), d);
    gemm(d.index, x.dtype(), true, false, g.C_primary, c_in, rows, 1.0, work.data_ptr(), g.C_out, x.data_ptr(), c_in,
         0.0, out.w_primary.data_ptr(), c_in, op);
  }
  if (need[2]) {
    // Column sums as ones[1, rows] @ work[:, :C_primary].
    const Tensor ones = Tensor::ones({rows}, x.dtype(), d);
    out.b_primary = Tensor::empty({g.C_primary}, x.dtype(), d);
    gemm(d.index, x.dtype(), false, false, 1, g.C_primary, rows, 1.0, ones.data_ptr(), rows, work.data_ptr(),
         g.C_out, 0.0, out.b_primary.data_ptr(), g.C_primary, op);
  }
  return out;
}

}  // namespace kestrel::gpu
