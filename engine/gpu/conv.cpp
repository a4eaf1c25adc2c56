#include "engine/gpu/conv.h"

#if defined(KESTREL_HAVE_CUDNN)
#include <cudnn.h>
#endif

#include <array>
#include <atomic>
#include <climits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "engine/gpu/blas.h"
#include "engine/gpu/kernel_dtype.h"
#include "engine/gpu/linear.h"
#include "kernels/depthwise_conv.h"

namespace kestrel::gpu {

namespace {

std::string geom_str(const cpu::ConvGeom& g) {
  return detail::concat("input [", g.n, ", ", g.h, ", ", g.w, ", ", g.c_in, "] NHWC, weight [", g.c_out, ", ", g.kh,
                        ", ", g.kw, ", ", g.cin_g(), "] OHWI, output [", g.n, ", ", g.oh, ", ", g.ow, ", ", g.c_out,
                        "], stride ", g.sh, "x", g.sw, ", padding ", g.ph, "x", g.pw, ", dilation ", g.dh, "x", g.dw,
                        ", groups ", g.groups);
}

bool fits_int(const cpu::ConvGeom& g) {
  for (int64_t v : {g.n, g.h, g.w, g.c_in, g.c_out, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw})
    if (v > INT_MAX) return false;
  return true;
}

bool is_half_or_float(DType dtype) { return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16; }

void check_operands(const cpu::ConvGeom& g, const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor& first = **tensors.begin();
  KCHECK(is_floating(first.dtype()), DTypeError, op, ": CUDA convolution supports f32, f16, bf16 and f64, not ",
         dtype_name(first.dtype()), " (", geom_str(g), ")");
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    KCHECK(t->device().is_cuda() && t->device() == first.device() && t->dtype() == first.dtype() &&
               t->is_contiguous(),
           ValueError, op, ": CUDA convolution operands must be contiguous ", dtype_name(first.dtype()),
           " tensors on ", first.device().str(), " (", geom_str(g), ")");
  }
}

// ---------------------------------------------------------------- depthwise kernels

// Only f32, f16 and bf16 take the depthwise path (conv2d_path).
kernels::KDType kdtype(DType dtype) { return kernel_dtype(dtype, "conv2d depthwise", "tensors"); }

kernels::DepthwiseConvShape depthwise_shape(const cpu::ConvGeom& g) {
  kernels::DepthwiseConvShape s;
  s.N = static_cast<int>(g.n);
  s.H = static_cast<int>(g.h);
  s.W = static_cast<int>(g.w);
  s.C = static_cast<int>(g.c_in);
  s.KH = static_cast<int>(g.kh);
  s.KW = static_cast<int>(g.kw);
  s.stride_h = static_cast<int>(g.sh);
  s.stride_w = static_cast<int>(g.sw);
  s.pad_h = static_cast<int>(g.ph);
  s.pad_w = static_cast<int>(g.pw);
  s.dil_h = static_cast<int>(g.dh);
  s.dil_w = static_cast<int>(g.dw);
  const char* invalid = kernels::depthwise_conv_check(s);
  KCHECK(invalid == nullptr, ShapeError, "conv2d: depthwise kernel rejects the shape: ", invalid, " (", geom_str(g),
         ")");
  return s;
}

void depthwise_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, const Tensor& bias,
                       const Tensor& y) {
  KESTREL_CUDA_CHECK_CTX(kernels::depthwise_conv2d_forward(kdtype(x.dtype()), depthwise_shape(g), x.data_ptr(),
                                                           w.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr,
                                                           y.data_ptr(), cuda::current_stream()),
                         "conv2d depthwise forward ", dtype_name(x.dtype()), ", ", geom_str(g));
}

void depthwise_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  KESTREL_CUDA_CHECK_CTX(kernels::depthwise_conv2d_backward_data(kdtype(gy.dtype()), depthwise_shape(g),
                                                                 gy.data_ptr(), w.data_ptr(), gx.data_ptr(),
                                                                 /*accumulate=*/false, cuda::current_stream()),
                         "conv2d depthwise backward input ", dtype_name(gy.dtype()), ", ", geom_str(g));
}

// Weight and (optionally) bias gradients in one pass over x and gy.
void depthwise_backward_weight(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, const Tensor& gw,
                               const Tensor& gb) {
  const kernels::DepthwiseConvShape s = depthwise_shape(g);
  const size_t bytes = kernels::depthwise_conv2d_backward_weight_workspace_bytes(s);
  const Tensor workspace = Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, x.device());
  KESTREL_CUDA_CHECK_CTX(kernels::depthwise_conv2d_backward_weight(kdtype(x.dtype()), s, x.data_ptr(), gy.data_ptr(),
                                                                   gw.data_ptr(),
                                                                   gb.defined() ? gb.data_ptr() : nullptr,
                                                                   workspace.data_ptr(), cuda::current_stream()),
                         "conv2d depthwise backward weight ", dtype_name(x.dtype()), ", ", geom_str(g));
}

// ---------------------------------------------------------------- 1x1 as a GEMM over [N*H*W, C]

void gemm_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, bool accumulate, const Tensor& y) {
  const int64_t P = g.n * g.h * g.w;  // stride 1, no padding: OH = H, OW = W
  gemm(x.device().index, x.dtype(), false, true, P, g.c_out, g.c_in, 1.0, x.data_ptr(), g.c_in, w.data_ptr(), g.c_in,
       accumulate ? 1.0 : 0.0, y.data_ptr(), g.c_out, "conv2d 1x1 forward");
}

void gemm_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  const int64_t P = g.n * g.h * g.w;
  gemm(gy.device().index, gy.dtype(), false, false, P, g.c_in, g.c_out, 1.0, gy.data_ptr(), g.c_out, w.data_ptr(),
       g.c_in, 0.0, gx.data_ptr(), g.c_in, "conv2d 1x1 backward input");
}

void gemm_backward_weight(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, const Tensor& gw) {
  const int64_t P = g.n * g.h * g.w;
  gemm(x.device().index, x.dtype(), true, false, g.c_out, g.c_in, P, 1.0, gy.data_ptr(), g.c_out, x.data_ptr(),
       g.c_in, 0.0, gw.data_ptr(), g.c_in, "conv2d 1x1 backward weight");
}

// ---------------------------------------------------------------- cuDNN

std::atomic<uint64_t> g_algo_hits{0};
std::atomic<uint64_t> g_algo_misses{0};

#if defined(KESTREL_HAVE_CUDNN)

[[noreturn]] void throw_cudnn_error(cudnnStatus_t status, const char* call, const std::string& context) {
  throw DeviceError(detail::concat(context, ": ", call, " failed: ", cudnnGetErrorString(status), " (status ",
                                   static_cast<int>(status), ")"));
}

#define KESTREL_CUDNN_CHECK(call, context)                                  \
  do {                                                                      \
    const cudnnStatus_t kestrel_status_ = (call);                           \
    if (kestrel_status_ != CUDNN_STATUS_SUCCESS)                            \
      throw_cudnn_error(kestrel_status_, #call, (context));                 \
  } while (0)

// One handle per thread and device, bound to the current stream on each use;
// kept until the process exits (see engine/gpu/blas.cpp).
cudnnHandle_t cudnn_handle() {
  thread_local std::vector<cudnnHandle_t> handles;
  const int device = cuda::current_device();
  if (static_cast<int>(handles.size()) <= device) handles.resize(device + 1, nullptr);
  if (handles[device] == nullptr)
    KESTREL_CUDNN_CHECK(cudnnCreate(&handles[device]), "cuDNN handle for cuda:" + std::to_string(device));
  KESTREL_CUDNN_CHECK(cudnnSetStream(handles[device], cuda::current_stream(device)),
                      "binding the cuDNN handle to the current stream");
  return handles[device];
}

cudnnDataType_t cudnn_dtype(DType dtype) {
  switch (dtype) {
    case DType::F16: return CUDNN_DATA_HALF;
    case DType::BF16: return CUDNN_DATA_BFLOAT16;
    case DType::F64: return CUDNN_DATA_DOUBLE;
    default: return CUDNN_DATA_FLOAT;
  }
}

// f32 without TF32 runs on FMA kernels only, so results match the CPU.
bool strict_f32(DType dtype) { return dtype == DType::F32 && !tf32_enabled(); }

cudnnMathType_t requested_math(DType dtype) {
  if (dtype == DType::F16 || dtype == DType::BF16) return CUDNN_TENSOR_OP_MATH;
  if (strict_f32(dtype)) return CUDNN_FMA_MATH;
  return CUDNN_DEFAULT_MATH;
}

// Owning descriptor wrappers: created empty, configured by the caller.
struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  explicit TensorDesc(const std::string& context) {
    KESTREL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d), context);
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
};
struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  explicit FilterDesc(const std::string& context) {
    KESTREL_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d), context);
  }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
};
struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  explicit ConvDesc(const std::string& context) {
    KESTREL_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d), context);
  }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
};

// The descriptors of one convolution: x, y NHWC; w as an NHWC filter
// [c_out, c_in/groups, kh, kw] in cuDNN's terms, which is OHWI in memory.
struct CudnnConv {
  std::string context;
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  cudnnDataType_t dtype;

  CudnnConv(const cpu::ConvGeom& g, DType dt, const std::string& ctx)
      : context(ctx), x(ctx), y(ctx), w(ctx), conv(ctx), dtype(cudnn_dtype(dt)) {
    KCHECK(fits_int(g) && g.n * g.h * g.w * g.c_in <= INT_MAX && g.n * g.oh * g.ow * g.c_out <= INT_MAX, ValueError,
           context, ": tensors beyond 2^31 elements are not supported by the cuDNN path");
    const auto i = [](int64_t v) { return static_cast<int>(v); };
    KESTREL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x.d, CUDNN_TENSOR_NHWC, dtype, i(g.n), i(g.c_in), i(g.h), i(g.w)),
                        context);
    KESTREL_CUDNN_CHECK(
        cudnnSetTensor4dDescriptor(y.d, CUDNN_TENSOR_NHWC, dtype, i(g.n), i(g.c_out), i(g.oh), i(g.ow)), context);
    KESTREL_CUDNN_CHECK(
        cudnnSetFilter4dDescriptor(w.d, dtype, CUDNN_TENSOR_NHWC, i(g.c_out), i(g.cin_g()), i(g.kh), i(g.kw)),
        context);
    const cudnnDataType_t compute = dt == DType::F64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    KESTREL_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv.d, i(g.ph), i(g.pw), i(g.sh), i(g.sw), i(g.dh), i(g.dw),
                                                        CUDNN_CROSS_CORRELATION, compute),
                        context);
    KESTREL_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv.d, i(g.groups)), context);
    set_math(requested_math(dt));
  }

  void set_math(cudnnMathType_t math) { KESTREL_CUDNN_CHECK(cudnnSetConvolutionMathType(conv.d, math), context); }
};

enum class Direction : int64_t { Forward, BackwardData, BackwardFilter };

struct AlgoChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};

// Algorithms needing more scratch than this are passed over.
constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;

using AlgoKey = std::array<int64_t, 18>;

AlgoKey algo_key(const cpu::ConvGeom& g, DType dtype, Direction dir, int device) {
  return {device, static_cast<int64_t>(dtype), static_cast<int64_t>(dir), tf32_enabled() ? 1 : 0, g.n, g.h, g.w,
          g.c_in, g.c_out, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups};
}

// The cached choice for `key`, or choose() run once and cached.
template <typename Choose>
AlgoChoice cached_algo(const AlgoKey& key, Choose&& choose) {
  static std::mutex mu;
  static std::map<AlgoKey, AlgoChoice> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = cache.find(key);
    if (it != cache.end()) {
      ++g_algo_hits;
      return it->second;
    }
  }
  const AlgoChoice choice = choose();
  std::lock_guard<std::mutex> lock(mu);
  ++g_algo_misses;
  cache.emplace(key, choice);
  return choice;
}

// First usable entry of cuDNN's ranked heuristic list, deterministic ones
// first (the CPU backend is deterministic and so are reruns here). Usable:
// supported, the math mode allowed for the dtype, workspace within bounds.
// workspace_of(algo) asks cuDNN for the exact size under the entry's math mode.
template <typename Perf, typename WorkspaceOf>
AlgoChoice pick_algo(CudnnConv& d, const Perf* perf, int count, DType dtype, WorkspaceOf&& workspace_of) {
  for (const bool need_deterministic : {true, false}) {
    for (int i = 0; i < count; ++i) {
      const Perf& p = perf[i];
      if (p.status != CUDNN_STATUS_SUCCESS) continue;
      if (need_deterministic && p.determinism != CUDNN_DETERMINISTIC) continue;
      if (strict_f32(dtype) && p.mathType != CUDNN_FMA_MATH) continue;
      d.set_math(p.mathType);
      size_t bytes = 0;
      if (workspace_of(p.algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > kMaxWorkspaceBytes) continue;
      return {static_cast<int>(p.algo), p.mathType, bytes};
    }
  }
  throw DeviceError(detail::concat(d.context, ": cuDNN offers no usable algorithm (", count, " candidates)"));
}

AlgoChoice forward_algo(CudnnConv& d, cudnnHandle_t h, const AlgoKey& key, DType dtype) {
  return cached_algo(key, [&] {
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int count = 0;
    KESTREL_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x.d, d.w.d, d.conv.d, d.y.d,
                                                               CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf),
                        d.context);
    return pick_algo(d, perf, count, dtype, [&](cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionForwardWorkspaceSize(h, d.x.d, d.w.d, d.conv.d, d.y.d, algo, bytes);
    });
  });
}

AlgoChoice backward_data_algo(CudnnConv& d, cudnnHandle_t h, const AlgoKey& key, DType dtype) {
  return cached_algo(key, [&] {
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int count = 0;
    KESTREL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w.d, d.y.d, d.conv.d, d.x.d,
                                                                    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count,
                                                                    perf),
                        d.context);
    return pick_algo(d, perf, count, dtype, [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w.d, d.y.d, d.conv.d, d.x.d, algo, bytes);
    });
  });
}

AlgoChoice backward_filter_algo(CudnnConv& d, cudnnHandle_t h, const AlgoKey& key, DType dtype) {
  return cached_algo(key, [&] {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int count = 0;
    KESTREL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x.d, d.y.d, d.conv.d, d.w.d,
                                                                      CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count,
                                                                      perf),
                        d.context);
    return pick_algo(d, perf, count, dtype, [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x.d, d.y.d, d.conv.d, d.w.d, algo, bytes);
    });
  });
}

// alpha and beta for cuDNN: double for f64 data, float otherwise.
struct Scale {
  float f;
  double d;
  const void* get(DType dtype) const { return dtype == DType::F64 ? static_cast<const void*>(&d) : &f; }
};
constexpr Scale kOne{1.f, 1.0};
constexpr Scale kZero{0.f, 0.0};

Tensor workspace_tensor(size_t bytes, Device device) {
  return Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, device);
}

void cudnn_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, bool accumulate, const Tensor& y) {
  const DType dt = x.dtype();
  CudnnConv d(g, dt, detail::concat("conv2d forward (cuDNN) ", dtype_name(dt), ", ", geom_str(g)));
  cudnnHandle_t h = cudnn_handle();
  const AlgoChoice c = forward_algo(d, h, algo_key(g, dt, Direction::Forward, x.device().index), dt);
  d.set_math(c.math);
  const Tensor ws = workspace_tensor(c.workspace, x.device());
  KESTREL_CUDNN_CHECK(cudnnConvolutionForward(h, kOne.get(dt), d.x.d, x.data_ptr(), d.w.d, w.data_ptr(), d.conv.d,
                                              static_cast<cudnnConvolutionFwdAlgo_t>(c.algo), ws.data_ptr(),
                                              c.workspace, (accumulate ? kOne : kZero).get(dt), d.y.d, y.data_ptr()),
                      d.context);
}

void cudnn_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  const DType dt = gy.dtype();
  CudnnConv d(g, dt, detail::concat("conv2d backward input (cuDNN) ", dtype_name(dt), ", ", geom_str(g)));
  cudnnHandle_t h = cudnn_handle();
  const AlgoChoice c = backward_data_algo(d, h, algo_key(g, dt, Direction::BackwardData, gy.device().index), dt);
  d.set_math(c.math);
  const Tensor ws = workspace_tensor(c.workspace, gy.device());
  KESTREL_CUDNN_CHECK(cudnnConvolutionBackwardData(h, kOne.get(dt), d.w.d, w.data_ptr(), d.y.d, gy.data_ptr(),
                                                   d.conv.d, static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo),
                                                   ws.data_ptr(), c.workspace, kZero.get(dt), d.x.d, gx.data_ptr()),
                      d.context);
}

void cudnn_backward_weight(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, const Tensor& gw) {
  const DType dt = x.dtype();
  CudnnConv d(g, dt, detail::concat("conv2d backward weight (cuDNN) ", dtype_name(dt), ", ", geom_str(g)));
  cudnnHandle_t h = cudnn_handle();
  const AlgoChoice c = backward_filter_algo(d, h, algo_key(g, dt, Direction::BackwardFilter, x.device().index), dt);
  d.set_math(c.math);
  const Tensor ws = workspace_tensor(c.workspace, x.device());
  KESTREL_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, kOne.get(dt), d.x.d, x.data_ptr(), d.y.d, gy.data_ptr(),
                                                     d.conv.d, static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo),
                                                     ws.data_ptr(), c.workspace, kZero.get(dt), d.w.d, gw.data_ptr()),
                      d.context);
}

#else  // no cuDNN at build time

[[noreturn]] void no_cudnn(const cpu::ConvGeom& g, DType dtype) {
  throw DeviceError(detail::concat("conv2d: this CUDA convolution (", dtype_name(dtype), ", ", geom_str(g),
                                   ") needs cuDNN, which was not found when Kestrel was built; without it only "
                                   "depthwise (kernel <= 7) and 1x1 stride-1 unpadded convolutions run on CUDA"));
}
void cudnn_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor&, bool, const Tensor&) {
  no_cudnn(g, x.dtype());
}
void cudnn_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor&, const Tensor&) {
  no_cudnn(g, gy.dtype());
}
void cudnn_backward_weight(const cpu::ConvGeom& g, const Tensor& x, const Tensor&, const Tensor&) {
  no_cudnn(g, x.dtype());
}

#endif

}  // namespace

ConvPath conv2d_path(const cpu::ConvGeom& g, DType dtype) {
  if (g.depthwise() && g.kh <= kernels::kDepthwiseMaxKernel && g.kw <= kernels::kDepthwiseMaxKernel &&
      is_half_or_float(dtype) && fits_int(g))
    return ConvPath::Depthwise;
  if (g.pointwise() && g.groups == 1) return ConvPath::Gemm;
  return ConvPath::Cudnn;
}

Tensor conv2d_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_operands(g, "conv2d", {&x, &w, &bias});
  cuda::DeviceGuard guard(x.device().index);
  Tensor y = Tensor::empty({g.n, g.oh, g.ow, g.c_out}, x.dtype(), x.device());
  const ConvPath path = conv2d_path(g, x.dtype());
  if (path == ConvPath::Depthwise) {
    depthwise_forward(g, x, w, bias, y);
    return y;
  }
  // The bias is written first and the convolution adds onto it.
  if (bias.defined()) broadcast_rows(bias, y, "conv2d");
  if (path == ConvPath::Gemm)
    gemm_forward(g, x, w, bias.defined(), y);
  else
    cudnn_forward(g, x, w, bias.defined(), y);
  return y;
}

Tensor conv2d_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w) {
  check_operands(g, "conv2d backward", {&gy, &w});
  cuda::DeviceGuard guard(gy.device().index);
  Tensor gx = Tensor::empty({g.n, g.h, g.w, g.c_in}, gy.dtype(), gy.device());
  switch (conv2d_path(g, gy.dtype())) {
    case ConvPath::Depthwise: depthwise_backward_input(g, gy, w, gx); break;
    case ConvPath::Gemm: gemm_backward_input(g, gy, w, gx); break;
    case ConvPath::Cudnn: cudnn_backward_input(g, gy, w, gx); break;
  }
  return gx;
}

ConvParamGrads conv2d_backward_params(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, bool want_weight,
                                      bool want_bias) {
  check_operands(g, "conv2d backward", {&gy, want_weight ? &x : &gy});
  cuda::DeviceGuard guard(gy.device().index);
  ConvParamGrads out;
  const ConvPath path = conv2d_path(g, gy.dtype());
  if (want_weight) {
    out.weight = Tensor::empty({g.c_out, g.kh, g.kw, g.cin_g()}, gy.dtype(), gy.device());
    if (path == ConvPath::Depthwise) {
      // The depthwise kernel sums the bias gradient in the same pass.
      if (want_bias) out.bias = Tensor::empty({g.c_out}, gy.dtype(), gy.device());
      depthwise_backward_weight(g, x, gy, out.weight, out.bias);
      return out;
    }
    if (path == ConvPath::Gemm)
      gemm_backward_weight(g, x, gy, out.weight);
    else
      cudnn_backward_weight(g, x, gy, out.weight);
  }
  if (want_bias) out.bias = column_sums(gy, g.c_out, "conv2d backward bias");
  return out;
}

ConvAlgoCacheStats conv_algo_cache_stats() { return {g_algo_hits.load(), g_algo_misses.load()}; }

}  // namespace kestrel::gpu
