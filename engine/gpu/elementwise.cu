// Elementwise CUDA kernels; see elementwise.h. Binary ops and the in-place
// updates index their operands through a coalesced StridedIndex (dense
// operands take a flat loop); unary ops read and write contiguous buffers.
// Values are loaded into the math type (f32, or f64 for f64) and rounded back
// on store.
#include "engine/gpu/elementwise.h"

#include <cmath>

#include "engine/gpu/device_scalar.cuh"
#include "engine/gpu/strided_index.h"

namespace kestrel::gpu {
namespace {

// ---- libm by math type (precise versions, never the __expf-style intrinsics)
__device__ __forceinline__ float m_exp(float x) { return ::expf(x); }
__device__ __forceinline__ double m_exp(double x) { return ::exp(x); }
__device__ __forceinline__ float m_log(float x) { return ::logf(x); }
__device__ __forceinline__ double m_log(double x) { return ::log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return ::sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float m_pow(float x, float e) { return ::powf(x, e); }
__device__ __forceinline__ double m_pow(double x, double e) { return ::pow(x, e); }
__device__ __forceinline__ float m_abs(float x) { return ::fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return ::fabs(x); }
__device__ __forceinline__ float m_tanh(float x) { return ::tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return ::tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return ::erff(x); }
__device__ __forceinline__ double m_erf(double x) { return ::erf(x); }

// As quant_level / fake_quant in engine/cpu/elementwise.cpp: f32, round half to even.
__device__ __forceinline__ float quant_level(float x, const UnaryParams& p) {
  return ::nearbyintf(__fdiv_rn(x, static_cast<float>(p.a))) + static_cast<float>(p.b);
}
__device__ __forceinline__ float fake_quant(float x, const UnaryParams& p) {
  const float q = fminf(fmaxf(quant_level(x, p), static_cast<float>(p.qmin)), static_cast<float>(p.qmax));
  return __fmul_rn(q - static_cast<float>(p.b), static_cast<float>(p.a));
}

template <typename M>
__device__ __forceinline__ M sigmoid_of(M x) {
  return M(1) / (M(1) + m_exp(-x));
}

// Term for term as forward_value in engine/cpu/elementwise.cpp.
template <typename M>
__device__ __forceinline__ M forward_value(UnaryOp op, M x, const UnaryParams& p) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return m_exp(x);
    case UnaryOp::Log: return m_log(x);
    case UnaryOp::Sqrt: return m_sqrt(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Pow: return m_pow(x, static_cast<M>(p.a));
    case UnaryOp::Abs: return m_abs(x);
    case UnaryOp::Clamp: return std_min(std_max(x, static_cast<M>(p.a)), static_cast<M>(p.b));
    case UnaryOp::AddScalar: return x + static_cast<M>(p.a);
    case UnaryOp::MulScalar: return x * static_cast<M>(p.a);
    case UnaryOp::ReLU: return x > M(0) ? x : M(0);
    case UnaryOp::ReLU6: return std_min(std_max(x, M(0)), M(6));
    case UnaryOp::Sigmoid: return sigmoid_of(x);
    case UnaryOp::Tanh: return m_tanh(x);
    case UnaryOp::SiLU: return x * sigmoid_of(x);
    case UnaryOp::HardSwish: return x * std_min(std_max(x + M(3), M(0)), M(6)) / M(6);
    case UnaryOp::HardSigmoid: return std_min(std_max(x + M(3), M(0)), M(6)) / M(6);
    case UnaryOp::GELU: return M(0.5) * x * (M(1) + m_erf(x * static_cast<M>(M_SQRT1_2)));
    case UnaryOp::FakeQuant: return static_cast<M>(fake_quant(static_cast<float>(x), p));
  }
  return x;
}

// Term for term as derivative in engine/cpu/elementwise.cpp.
template <typename M>
__device__ __forceinline__ M derivative(UnaryOp op, M x, M y, const UnaryParams& p) {
  switch (op) {
    case UnaryOp::Neg: return M(-1);
    case UnaryOp::Exp: return y;
    case UnaryOp::Log: return M(1) / x;
    case UnaryOp::Sqrt: return M(0.5) / y;
    case UnaryOp::Square: return M(2) * x;
    case UnaryOp::Pow: return static_cast<M>(p.a) * m_pow(x, static_cast<M>(p.a - 1.0));
    case UnaryOp::Abs: return x > M(0) ? M(1) : (x < M(0) ? M(-1) : M(0));
    case UnaryOp::Clamp: return (x >= static_cast<M>(p.a) && x <= static_cast<M>(p.b)) ? M(1) : M(0);
    case UnaryOp::AddScalar: return M(1);
    case UnaryOp::MulScalar: return static_cast<M>(p.a);
    case UnaryOp::ReLU: return x > M(0) ? M(1) : M(0);
    case UnaryOp::ReLU6: return (x > M(0) && x < M(6)) ? M(1) : M(0);
    case UnaryOp::Sigmoid: return y * (M(1) - y);
    case UnaryOp::Tanh: return M(1) - mul_rn(y, y);
    case UnaryOp::SiLU: {
      const M s = sigmoid_of(x);
      return s * (M(1) + mul_rn(x, M(1) - s));
    }
    case UnaryOp::HardSwish: return x < M(-3) ? M(0) : (x <= M(3) ? x / M(3) + M(0.5) : M(1));
    case UnaryOp::HardSigmoid: return (x > M(-3) && x < M(3)) ? M(1) / M(6) : M(0);
    case UnaryOp::GELU: {
      const M cdf = M(0.5) * (M(1) + m_erf(x * static_cast<M>(M_SQRT1_2)));
      const M pdf = m_exp(M(-0.5) * x * x) * static_cast<M>(0.3989422804014327);
      return cdf + mul_rn(x, pdf);
    }
    case UnaryOp::FakeQuant: {
      const float q = quant_level(static_cast<float>(x), p);
      return (q >= static_cast<float>(p.qmin) && q <= static_cast<float>(p.qmax)) ? M(1) : M(0);
    }
  }
  return M(1);
}

// ---- binary functors on the math type M
struct AddFn {
  template <typename M> __device__ M operator()(M x, M y) const { return x + y; }
};
struct SubFn {
  template <typename M> __device__ M operator()(M x, M y) const { return x - y; }
};
struct MulFn {
  template <typename M> __device__ M operator()(M x, M y) const { return x * y; }
};
struct DivFn {
  template <typename M> __device__ M operator()(M x, M y) const { return x / y; }
};
template <typename M>
struct AxpyFn {
  M alpha;
  __device__ M operator()(M x, M y) const { return x + mul_rn(alpha, y); }
};
template <typename M>
struct ScaleFn {
  M s;
  __device__ M operator()(M x, M) const { return x * s; }
};

// out may alias a or b (in-place updates), so no __restrict__ here.
template <typename T, typename F>
__global__ void __launch_bounds__(kThreads) binary_flat_kernel(T* out, const T* a, const T* b, int64_t n, F f) {
  KESTREL_GRID_LOOP(i, n) out[i] = from_math<T>(f(to_math(a[i]), to_math(b[i])));
}

template <typename T, typename F, typename I>
__global__ void __launch_bounds__(kThreads) binary_strided_kernel(T* out, const T* a, const T* b,
                                                                  StridedIndex<3> index, int64_t n, F f) {
  KESTREL_GRID_LOOP(i, n) {
    int64_t off[3];
    index.offsets<I>(i, off);
    out[off[0]] = from_math<T>(f(to_math(a[off[1]]), to_math(b[off[2]])));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) unary_kernel(UnaryOp op, const T* __restrict__ x, T* __restrict__ out,
                                                         int64_t n, UnaryParams p) {
  KESTREL_GRID_LOOP(i, n) out[i] = from_math<T>(forward_value(op, to_math(x[i]), p));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) unary_backward_kernel(UnaryOp op, const T* __restrict__ x,
                                                                  const T* __restrict__ y, const T* __restrict__ g,
                                                                  T* __restrict__ gi, int64_t n, UnaryParams p) {
  using M = MathT<T>;
  KESTREL_GRID_LOOP(i, n) {
    const M yv = y != nullptr ? to_math(y[i]) : M(0);
    gi[i] = from_math<T>(to_math(g[i]) * derivative(op, to_math(x[i]), yv, p));
  }
}

std::string describe(const Tensor& t) {
  return detail::concat(dtype_name(t.dtype()), " ", shape_str(t.shape()));
}

// out[i] = f(a[i], b[i]) over out's shape, a and b broadcast to it.
template <typename T, typename F>
void launch_binary(const Tensor& out, const Tensor& a, const Tensor& b, F f, cudaStream_t stream) {
  T* po = static_cast<T*>(out.data_ptr());
  const T* pa = static_cast<const T*>(a.data_ptr());
  const T* pb = static_cast<const T*>(b.data_ptr());
  const auto layout = cpu::coalesce<3>(out.shape(), {out.strides(), cpu::broadcast_strides(a, out.shape()),
                                                     cpu::broadcast_strides(b, out.shape())});
  if (is_flat(layout)) {
    const int64_t n = layout.shape[0];
    binary_flat_kernel<T, F><<<grid_for(n), kThreads, 0, stream>>>(po, pa, pb, n, f);
    return;
  }
  for_each_slice<3>(layout, [&](const StridedIndex<3>& index, const std::array<int64_t, 3>& base, int64_t n) {
    if (fits_u32(n))
      binary_strided_kernel<T, F, uint32_t>
          <<<grid_for(n), kThreads, 0, stream>>>(po + base[0], pa + base[1], pb + base[2], index, n, f);
    else
      binary_strided_kernel<T, F, uint64_t>
          <<<grid_for(n), kThreads, 0, stream>>>(po + base[0], pa + base[1], pb + base[2], index, n, f);
  });
}

void check_cuda_operands(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor& first = **ts.begin();
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    KCHECK(t->device().is_cuda() && t->device() == first.device(), DeviceError, op, ": expected tensors on ",
           first.device().str(), ", got one on ", t->device().str());
    KCHECK(t->dtype() == first.dtype(), DTypeError, op, ": dtype mismatch (", describe(first), " vs ", describe(*t),
           ")");
  }
}

}  // namespace

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  check_cuda_operands("binary op", {&out, &a, &b});
  if (out.numel() == 0) return;
  OnDevice on(out);
  dispatch_float_dev(out.dtype(), "binary op", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    switch (op) {
      case BinaryOp::Add: launch_binary<T>(out, a, b, AddFn{}, on.stream); break;
      case BinaryOp::Sub: launch_binary<T>(out, a, b, SubFn{}, on.stream); break;
      case BinaryOp::Mul: launch_binary<T>(out, a, b, MulFn{}, on.stream); break;
      case BinaryOp::Div: launch_binary<T>(out, a, b, DivFn{}, on.stream); break;
    }
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "binary op ", static_cast<int>(op), " on ", describe(a), " and ",
                         describe(b));
}

void unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p) {
  check_cuda_operands("unary op", {&out, &x});
  KCHECK(x.is_contiguous() && out.is_contiguous() && x.numel() == out.numel(), ShapeError,
         "unary op: needs contiguous tensors of equal size, got ", describe(x), " -> ", describe(out));
  const int64_t n = x.numel();
  if (n == 0) return;
  OnDevice on(out);
  dispatch_float_dev(x.dtype(), "unary op", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    unary_kernel<T><<<grid_for(n), kThreads, 0, on.stream>>>(op, static_cast<const T*>(x.data_ptr()),
                                                             static_cast<T*>(out.data_ptr()), n, p);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "unary op ", static_cast<int>(op), " on ", describe(x));
}

void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& grad_out, const Tensor& grad_in,
                    UnaryParams p) {
  check_cuda_operands("unary backward", {&grad_in, &x, &y, &grad_out});
  const int64_t n = x.numel();
  for (const Tensor* t : {&x, &y, &grad_out, &grad_in})
    KCHECK(!t->defined() || (t->is_contiguous() && t->numel() == n), ShapeError,
           "unary backward: needs contiguous tensors of ", n, " elements, got ", describe(*t));
  if (n == 0) return;
  OnDevice on(grad_in);
  dispatch_float_dev(x.dtype(), "unary backward", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    const T* py = y.defined() ? static_cast<const T*>(y.data_ptr()) : nullptr;
    unary_backward_kernel<T><<<grid_for(n), kThreads, 0, on.stream>>>(
        op, static_cast<const T*>(x.data_ptr()), py, static_cast<const T*>(grad_out.data_ptr()),
        static_cast<T*>(grad_in.data_ptr()), n, p);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "unary backward ", static_cast<int>(op), " on ", describe(x));
}

void axpy_inplace(const Tensor& self, const Tensor& other, double alpha) {
  check_cuda_operands("add_", {&self, &other});
  if (self.numel() == 0) return;
  OnDevice on(self);
  dispatch_float_dev(self.dtype(), "add_", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    using M = MathT<T>;
    launch_binary<T>(self, self, other, AxpyFn<M>{static_cast<M>(alpha)}, on.stream);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "add_ ", describe(other), " into ", describe(self));
}

void scale_inplace(const Tensor& self, double s) {
  KCHECK(self.device().is_cuda(), DeviceError, "mul_: expected a CUDA tensor, got ", self.device().str());
  if (self.numel() == 0) return;
  OnDevice on(self);
  dispatch_float_dev(self.dtype(), "mul_", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    using M = MathT<T>;
    launch_binary<T>(self, self, self, ScaleFn<M>{static_cast<M>(s)}, on.stream);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "mul_ ", describe(self), " by ", s);
}

}  // namespace kestrel::gpu
