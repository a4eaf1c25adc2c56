#include "engine/gpu/conv.h"

#if defined(KESTREL_HAVE_CUDNN)
#include <cudnn.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <map>
#include <mutex>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/gpu/blas.h"
#include "engine/gpu/kernel_dtype.h"
#include "engine/gpu/library_handle.h"
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

// x: the operand that may be a channel slice (g.x_pixel_stride, as
// ghost_norms passes the first half of a ghost module's output), which only
// the depthwise kernels take.
void check_operands(const cpu::ConvGeom& g, const char* op, std::initializer_list<const Tensor*> tensors,
                    const Tensor* x = nullptr) {
  const Tensor& first = **tensors.begin();
  KCHECK(is_floating(first.dtype()), DTypeError, op, ": CUDA convolution supports f32, f16, bf16 and f64, not ",
         dtype_name(first.dtype()), " (", geom_str(g), ")");
  KCHECK(g.ys() == g.c_out && (g.xs() == g.c_in || (x != nullptr && even_row_stride(*x) == g.xs())), ValueError, op,
         ": a pixel stride of ", g.xs(), " for the input does not fit it (", geom_str(g), ")");
  const bool sliced = g.xs() != g.c_in;
  KCHECK(!sliced || conv2d_path(g, first.dtype()) == ConvPath::Depthwise, ValueError, op,
         ": only the depthwise kernels read a channel slice (", geom_str(g), ")");
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    KCHECK(t->device().is_cuda() && t->device() == first.device() && t->dtype() == first.dtype() &&
               (t->is_contiguous() || (sliced && t == x)),
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
  s.x_pitch = static_cast<int>(g.xs());
  const char* invalid = kernels::depthwise_conv_check(s);
  KCHECK(invalid == nullptr, ShapeError, "conv2d: depthwise kernel rejects the shape: ", invalid, " (", geom_str(g),
         ")");
  return s;
}

void depthwise_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                       Activation act = Activation::None) {
  kernels::DepthwiseConvShape s = depthwise_shape(g);
  s.act = static_cast<kernels::KAct>(act);  // same order (test_cuda_kernels.cpp asserts it)
  KESTREL_CUDA_CHECK_CTX(kernels::depthwise_conv2d_forward(kdtype(x.dtype()), s, x.data_ptr(),
                                                           w.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr,
                                                           y.data_ptr(), cuda::current_stream(x.device().index)),
                         "conv2d depthwise forward ", dtype_name(x.dtype()), ", ", geom_str(g), ", activation ",
                         activation_name(act));
}

void depthwise_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  KESTREL_CUDA_CHECK_CTX(kernels::depthwise_conv2d_backward_data(
                             kdtype(gy.dtype()), depthwise_shape(g), gy.data_ptr(), w.data_ptr(), gx.data_ptr(),
                             /*accumulate=*/false, cuda::current_stream(gy.device().index)),
                         "conv2d depthwise backward input ", dtype_name(gy.dtype()), ", ", geom_str(g));
}

// Weight and (optionally) bias gradients in one pass over x and gy.
void depthwise_backward_weight(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, const Tensor& gw,
                               const Tensor& gb) {
  const kernels::DepthwiseConvShape s = depthwise_shape(g);
  const size_t bytes = kernels::depthwise_conv2d_backward_weight_workspace_bytes(s);
  const Tensor workspace = Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, x.device());
  KESTREL_CUDA_CHECK_CTX(
      kernels::depthwise_conv2d_backward_weight(kdtype(x.dtype()), s, x.data_ptr(), gy.data_ptr(), gw.data_ptr(),
                                                gb.defined() ? gb.data_ptr() : nullptr, workspace.data_ptr(),
                                                cuda::current_stream(x.device().index)),
      "conv2d depthwise backward weight ", dtype_name(x.dtype()), ", ", geom_str(g));
}

// ---------------------------------------------------------------- 1x1 as a GEMM over [N*H*W, C]

// cuBLAS sizes are int: the [P, C] matrices go in blocks of at most kGemmRows rows.
constexpr int64_t kGemmRows = int64_t{1} << 30;

// Element `offset` of a contiguous tensor.
void* element_at(const Tensor& t, int64_t offset) {
  return static_cast<char*>(t.data_ptr()) + offset * static_cast<int64_t>(dtype_size(t.dtype()));
}

void gemm_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, bool accumulate, const Tensor& y) {
  const int64_t P = g.n * g.h * g.w;  // stride 1, no padding: OH = H, OW = W
  for (int64_t r = 0; r < P; r += kGemmRows) {
    gemm(x.device().index, x.dtype(), false, true, std::min(kGemmRows, P - r), g.c_out, g.c_in, 1.0,
         element_at(x, r * g.c_in), g.c_in, w.data_ptr(), g.c_in, accumulate ? 1.0 : 0.0, element_at(y, r * g.c_out),
         g.c_out, "conv2d 1x1 forward");
  }
}

void gemm_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  const int64_t P = g.n * g.h * g.w;
  for (int64_t r = 0; r < P; r += kGemmRows) {
    gemm(gy.device().index, gy.dtype(), false, false, std::min(kGemmRows, P - r), g.c_in, g.c_out, 1.0,
         element_at(gy, r * g.c_out), g.c_out, w.data_ptr(), g.c_in, 0.0, element_at(gx, r * g.c_in), g.c_in,
         "conv2d 1x1 backward input");
  }
}

// gw = gy^T x summed over the row blocks (the first block overwrites).
void gemm_backward_weight(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, const Tensor& gw) {
  const int64_t P = g.n * g.h * g.w;
  for (int64_t r = 0; r < P; r += kGemmRows) {
    gemm(x.device().index, x.dtype(), true, false, g.c_out, g.c_in, std::min(kGemmRows, P - r), 1.0,
         element_at(gy, r * g.c_out), g.c_out, element_at(x, r * g.c_in), g.c_in, r == 0 ? 0.0 : 1.0, gw.data_ptr(),
         g.c_in, "conv2d 1x1 backward weight");
  }
}

// ---------------------------------------------------------------- cuDNN

std::atomic<uint64_t> g_algo_hits{0};
std::atomic<uint64_t> g_algo_misses{0};
std::atomic<uint64_t> g_algo_fallbacks{0};
// -1: not decided yet (read KESTREL_CUDNN_BENCHMARK on first use), 0 off, 1 on.
std::atomic<int> g_cudnn_benchmark{-1};

#if defined(KESTREL_HAVE_CUDNN)

void check_cudnn(cudnnStatus_t status, const char* call, const std::string& context) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  throw DeviceError(detail::concat(context, ": ", call, " failed: ", cudnnGetErrorString(status), " (status ",
                                   static_cast<int>(status), ")"));
}

#define KESTREL_CUDNN_CHECK(call, context) check_cudnn((call), #call, (context))

// The current device's handle, bound to its current stream (library_handle.h).
cudnnHandle_t cudnn_handle() {
  thread_local LibraryHandles<cudnnHandle_t> handles;
  return handles.get(
      [](int device) {
        cudnnHandle_t h = nullptr;
        KESTREL_CUDNN_CHECK(cudnnCreate(&h), "cuDNN handle for cuda:" + std::to_string(device));
        return h;
      },
      [](cudnnHandle_t h, cudaStream_t stream) {
        KESTREL_CUDNN_CHECK(cudnnSetStream(h, stream), "binding the cuDNN handle to the current stream");
      });
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

// Owning descriptor: created empty, configured by the caller.
template <typename Desc, cudnnStatus_t (*Create)(Desc*), cudnnStatus_t (*Destroy)(Desc)>
struct Descriptor {
  Desc d = nullptr;
  explicit Descriptor(const std::string& context) { check_cudnn(Create(&d), "creating a cuDNN descriptor", context); }
  ~Descriptor() { Destroy(d); }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
};
using TensorDesc = Descriptor<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor>;
using FilterDesc = Descriptor<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor>;
using ConvDesc =
    Descriptor<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor, cudnnDestroyConvolutionDescriptor>;

// cuDNN's double-precision kernels take channels-first data (PyTorch turns
// channels-last off for f64 for this reason): f64 operands are copied to NCHW
// (filters to OIHW) around the call; f64 is for checking, not for speed.
bool cudnn_channels_first(DType dtype) { return dtype == DType::F64; }

// The descriptors of one convolution: x, y NHWC; w as an NHWC filter
// [c_out, c_in/groups, kh, kw] in cuDNN's terms, which is OHWI in memory.
// Channels first (cudnn_channels_first): x, y NCHW and w OIHW.
struct CudnnConv {
  std::string context;
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  cudnnDataType_t dtype;

  CudnnConv(const cpu::ConvGeom& g, DType dt, const std::string& ctx)
      : context(ctx), x(ctx), y(ctx), w(ctx), conv(ctx), dtype(cudnn_dtype(dt)) {
    const cudnnTensorFormat_t format = cudnn_channels_first(dt) ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC;
    KCHECK(fits_int(g) && g.n * g.h * g.w * g.c_in <= INT_MAX && g.n * g.oh * g.ow * g.c_out <= INT_MAX, ValueError,
           context, ": tensors beyond 2^31 elements are not supported by the cuDNN path");
    const auto i = [](int64_t v) { return static_cast<int>(v); };
    KESTREL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x.d, format, dtype, i(g.n), i(g.c_in), i(g.h), i(g.w)), context);
    KESTREL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y.d, format, dtype, i(g.n), i(g.c_out), i(g.oh), i(g.ow)), context);
    KESTREL_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w.d, dtype, format, i(g.c_out), i(g.cin_g()), i(g.kh), i(g.kw)),
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

// cuDNN's three convolution directions behind one interface: the algorithm
// list (ranked by heuristics, or by running each: `timed`), the workspace
// size of an algorithm, and the call itself, which reads
// `a` and `b` and writes `out` (forward: x, w -> y; backward data: w, gy -> gx;
// backward filter: x, gy -> gw).
struct ForwardCall {
  using Perf = cudnnConvolutionFwdAlgoPerf_t;
  using Algo = cudnnConvolutionFwdAlgo_t;
  static constexpr int kCount = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  static constexpr Direction kDirection = Direction::Forward;
  static constexpr const char* kName = "forward";
  static constexpr const char* kCall = "cudnnConvolutionForward";
  static cudnnStatus_t algorithms(cudnnHandle_t h, const CudnnConv& d, int* count, Perf* perf) {
    return cudnnGetConvolutionForwardAlgorithm_v7(h, d.x.d, d.w.d, d.conv.d, d.y.d, kCount, count, perf);
  }
  static cudnnStatus_t timed(cudnnHandle_t h, const CudnnConv& d, const void* a, const void* b, void* out,
                             int* count, Perf* perf, void* ws, size_t ws_bytes) {
    return cudnnFindConvolutionForwardAlgorithmEx(h, d.x.d, a, d.w.d, b, d.conv.d, d.y.d, out, kCount, count, perf,
                                                  ws, ws_bytes);
  }
  static cudnnStatus_t workspace(cudnnHandle_t h, const CudnnConv& d, Algo algo, size_t* bytes) {
    return cudnnGetConvolutionForwardWorkspaceSize(h, d.x.d, d.w.d, d.conv.d, d.y.d, algo, bytes);
  }
  static cudnnStatus_t run(cudnnHandle_t h, const CudnnConv& d, const void* alpha, const void* a, const void* b,
                           Algo algo, void* ws, size_t ws_bytes, const void* beta, void* out) {
    return cudnnConvolutionForward(h, alpha, d.x.d, a, d.w.d, b, d.conv.d, algo, ws, ws_bytes, beta, d.y.d, out);
  }
};

struct BackwardDataCall {
  using Perf = cudnnConvolutionBwdDataAlgoPerf_t;
  using Algo = cudnnConvolutionBwdDataAlgo_t;
  static constexpr int kCount = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  static constexpr Direction kDirection = Direction::BackwardData;
  static constexpr const char* kName = "backward input";
  static constexpr const char* kCall = "cudnnConvolutionBackwardData";
  static cudnnStatus_t algorithms(cudnnHandle_t h, const CudnnConv& d, int* count, Perf* perf) {
    return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w.d, d.y.d, d.conv.d, d.x.d, kCount, count, perf);
  }
  static cudnnStatus_t timed(cudnnHandle_t h, const CudnnConv& d, const void* a, const void* b, void* out,
                             int* count, Perf* perf, void* ws, size_t ws_bytes) {
    return cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w.d, a, d.y.d, b, d.conv.d, d.x.d, out, kCount, count,
                                                       perf, ws, ws_bytes);
  }
  static cudnnStatus_t workspace(cudnnHandle_t h, const CudnnConv& d, Algo algo, size_t* bytes) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w.d, d.y.d, d.conv.d, d.x.d, algo, bytes);
  }
  static cudnnStatus_t run(cudnnHandle_t h, const CudnnConv& d, const void* alpha, const void* a, const void* b,
                           Algo algo, void* ws, size_t ws_bytes, const void* beta, void* out) {
    return cudnnConvolutionBackwardData(h, alpha, d.w.d, a, d.y.d, b, d.conv.d, algo, ws, ws_bytes, beta, d.x.d, out);
  }
};

struct BackwardFilterCall {
  using Perf = cudnnConvolutionBwdFilterAlgoPerf_t;
  using Algo = cudnnConvolutionBwdFilterAlgo_t;
  static constexpr int kCount = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
  static constexpr Direction kDirection = Direction::BackwardFilter;
  static constexpr const char* kName = "backward weight";
  static constexpr const char* kCall = "cudnnConvolutionBackwardFilter";
  static cudnnStatus_t algorithms(cudnnHandle_t h, const CudnnConv& d, int* count, Perf* perf) {
    return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x.d, d.y.d, d.conv.d, d.w.d, kCount, count, perf);
  }
  static cudnnStatus_t timed(cudnnHandle_t h, const CudnnConv& d, const void* a, const void* b, void* out,
                             int* count, Perf* perf, void* ws, size_t ws_bytes) {
    return cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x.d, a, d.y.d, b, d.conv.d, d.w.d, out, kCount, count,
                                                         perf, ws, ws_bytes);
  }
  static cudnnStatus_t workspace(cudnnHandle_t h, const CudnnConv& d, Algo algo, size_t* bytes) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x.d, d.y.d, d.conv.d, d.w.d, algo, bytes);
  }
  static cudnnStatus_t run(cudnnHandle_t h, const CudnnConv& d, const void* alpha, const void* a, const void* b,
                           Algo algo, void* ws, size_t ws_bytes, const void* beta, void* out) {
    return cudnnConvolutionBackwardFilter(h, alpha, d.x.d, a, d.y.d, b, d.conv.d, algo, ws, ws_bytes, beta, d.w.d,
                                          out);
  }
};

struct AlgoChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};

// Algorithms needing more scratch than this are passed over.
constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;

using AlgoKey = std::array<int64_t, 19>;

AlgoKey algo_key(const cpu::ConvGeom& g, DType dtype, Direction dir, int device) {
  return {device, static_cast<int64_t>(dtype), static_cast<int64_t>(dir), tf32_enabled() ? 1 : 0,
          cudnn_benchmark_enabled() ? 1 : 0, g.n, g.h, g.w,
          g.c_in, g.c_out, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups};
}

// Every usable algorithm of a shape, best first.
using AlgoChoices = std::vector<AlgoChoice>;

std::mutex g_algo_mu;
std::map<AlgoKey, AlgoChoices>& algo_cache() {
  static std::map<AlgoKey, AlgoChoices> cache;
  return cache;
}

// The cached choices for `key`, or choose() run once and cached.
template <typename Choose>
AlgoChoices cached_algos(const AlgoKey& key, Choose&& choose) {
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    const auto it = algo_cache().find(key);
    if (it != algo_cache().end()) {
      ++g_algo_hits;
      return it->second;
    }
  }
  AlgoChoices choices = choose();
  std::lock_guard<std::mutex> lock(g_algo_mu);
  ++g_algo_misses;
  algo_cache().emplace(key, choices);
  return choices;
}

// The first `refused` of `choices` failed when run: later lookups start past them.
void drop_refused(const AlgoKey& key, const AlgoChoices& choices, size_t refused) {
  std::lock_guard<std::mutex> lock(g_algo_mu);
  algo_cache()[key] = AlgoChoices(choices.begin() + static_cast<std::ptrdiff_t>(refused), choices.end());
  g_algo_fallbacks += refused;
}

// cuDNN 9 numbers its "not supported" statuses 3000-3999 (older versions had one).
bool not_supported(cudnnStatus_t s) {
#if CUDNN_MAJOR >= 9
  return s / 1000 == CUDNN_STATUS_NOT_SUPPORTED / 1000;
#else
  return s == CUDNN_STATUS_NOT_SUPPORTED;
#endif
}

// The workspace cuDNN asks for `p`'s algorithm under its math type, if it
// answers and the size is within kMaxWorkspaceBytes (leaves d in that math type).
template <typename Call>
bool workspace_within_bounds(CudnnConv& d, cudnnHandle_t h, const typename Call::Perf& p, size_t* bytes) {
  d.set_math(p.mathType);
  return Call::workspace(h, d, p.algo, bytes) == CUDNN_STATUS_SUCCESS && *bytes <= kMaxWorkspaceBytes;
}

// The operands cuDNN times the algorithms on (KESTREL_CUDNN_BENCHMARK=1):
// the call's inputs, a scratch output (the real one may hold a bias to add
// to) and a workspace from the caching allocator, as large as the largest the
// heuristics' candidates ask for, halved while it does not fit. (The variant
// without operands allocates its own memory, outside the cache, and fails
// once the cache holds most of the device.)
template <typename Call>
void time_algos(CudnnConv& d, cudnnHandle_t h, const Tensor& a, const Tensor& b, const Tensor& out, int* count,
                typename Call::Perf* perf) {
  KESTREL_CUDNN_CHECK(Call::algorithms(h, d, count, perf), d.context);
  size_t bytes = 0;
  for (int i = 0; i < *count; ++i) {
    size_t need = 0;
    if (perf[i].status == CUDNN_STATUS_SUCCESS && workspace_within_bounds<Call>(d, h, perf[i], &need))
      bytes = std::max(bytes, need);
  }
  Tensor ws;
  for (;; bytes /= 2) {
    try {
      ws = Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, out.device());
      break;
    } catch (const DeviceError&) {
      if (bytes == 0) throw;
    }
  }
  const Tensor scratch_out = Tensor::empty(out.shape(), out.dtype(), out.device());
  d.set_math(requested_math(out.dtype()));
  KESTREL_CUDNN_CHECK(Call::timed(h, d, a.data_ptr(), b.data_ptr(), scratch_out.data_ptr(), count, perf,
                                  ws.data_ptr(), bytes),
                      d.context);
}

// The usable entries of cuDNN's ranked list (heuristic, or measured with
// KESTREL_CUDNN_BENCHMARK=1), deterministic ones first (the CPU backend is
// deterministic and so are reruns here). Usable:
// supported, the math mode allowed for the dtype, workspace within bounds
// (asked of cuDNN for the exact size under the entry's math mode).
template <typename Call>
AlgoChoices usable_algos(CudnnConv& d, cudnnHandle_t h, DType dtype, const Tensor& a, const Tensor& b,
                         const Tensor& out) {
  typename Call::Perf perf[Call::kCount];
  int count = 0;
  if (cudnn_benchmark_enabled())
    time_algos<Call>(d, h, a, b, out, &count, perf);
  else
    KESTREL_CUDNN_CHECK(Call::algorithms(h, d, &count, perf), d.context);
  AlgoChoices usable;
  for (const bool deterministic : {true, false}) {
    for (int i = 0; i < count; ++i) {
      const typename Call::Perf& p = perf[i];
      if (p.status != CUDNN_STATUS_SUCCESS) continue;
      if ((p.determinism == CUDNN_DETERMINISTIC) != deterministic) continue;
      if (strict_f32(dtype) && p.mathType != CUDNN_FMA_MATH) continue;
      size_t bytes = 0;
      if (!workspace_within_bounds<Call>(d, h, p, &bytes)) continue;
      usable.push_back({static_cast<int>(p.algo), p.mathType, bytes});
    }
  }
  KCHECK(!usable.empty(), DeviceError, d.context, ": cuDNN offers no usable algorithm (", count, " candidates)");
  return usable;
}

// alpha and beta for cuDNN: double for f64 data, float otherwise.
struct Scale {
  float f;
  double d;
  const void* get(DType dtype) const { return dtype == DType::F64 ? static_cast<const void*>(&d) : &f; }
};
constexpr Scale kOne{1.f, 1.0};
constexpr Scale kZero{0.f, 0.0};

// out (+)= the convolution of a and b in direction Call, with the first cached
// algorithm that runs: a heuristic's favourite can still be refused at run
// time (not supported for this layout or shape), or its workspace may not fit
// in memory; the next one then takes its place, for later calls too. (A
// refusal happens before any output is written, so accumulation is safe.)
template <typename Call>
void cudnn_convolve_as_laid_out(const cpu::ConvGeom& g, DType dt, Device device, const Tensor& a, const Tensor& b,
                                bool accumulate, const Tensor& out) {
  CudnnConv d(g, dt, detail::concat("conv2d ", Call::kName, " (cuDNN) ", dtype_name(dt), ", ", geom_str(g)));
  cudnnHandle_t h = cudnn_handle();
  const AlgoKey key = algo_key(g, dt, Call::kDirection, device.index);
  const AlgoChoices choices = cached_algos(key, [&] { return usable_algos<Call>(d, h, dt, a, b, out); });
  std::string refusals;
  for (size_t i = 0; i < choices.size(); ++i) {
    const AlgoChoice& c = choices[i];
    d.set_math(c.math);
    Tensor ws;
    try {
      ws = Tensor::empty({static_cast<int64_t>(c.workspace)}, DType::U8, device);
    } catch (const DeviceError& e) {  // out of memory for this one's workspace
      refusals += detail::concat("; algorithm ", c.algo, ": ", c.workspace, " bytes of workspace: ", e.what());
      continue;
    }
    const cudnnStatus_t status =
        Call::run(h, d, kOne.get(dt), a.data_ptr(), b.data_ptr(), static_cast<typename Call::Algo>(c.algo),
                  ws.data_ptr(), c.workspace, (accumulate ? kOne : kZero).get(dt), out.data_ptr());
    if (not_supported(status)) {
      refusals += detail::concat("; algorithm ", c.algo, ": ", cudnnGetErrorString(status));
      continue;
    }
    check_cudnn(status, Call::kCall, d.context);
    if (i > 0) drop_refused(key, choices, i);
    return;
  }
  throw DeviceError(detail::concat(d.context, ": every usable cuDNN algorithm was refused", refusals));
}

Tensor channels_first_copy(const Tensor& t) { return t.permute({0, 3, 1, 2}).contiguous(); }

// Every operand (activations NHWC, filters OHWI) is 4-d with its channels last.
template <typename Call>
void cudnn_convolve(const cpu::ConvGeom& g, DType dt, Device device, const Tensor& a, const Tensor& b,
                    bool accumulate, const Tensor& out) {
  if (!cudnn_channels_first(dt)) return cudnn_convolve_as_laid_out<Call>(g, dt, device, a, b, accumulate, out);
  NoGradGuard no_grad;
  const Tensor out_first = channels_first_copy(out);  // holds what to accumulate onto
  cudnn_convolve_as_laid_out<Call>(g, dt, device, channels_first_copy(a), channels_first_copy(b), accumulate,
                                   out_first);
  Tensor(out).copy_(out_first.permute({0, 2, 3, 1}));
}

void cudnn_forward(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, bool accumulate, const Tensor& y) {
  cudnn_convolve<ForwardCall>(g, x.dtype(), x.device(), x, w, accumulate, y);
}

void cudnn_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  cudnn_convolve<BackwardDataCall>(g, gy.dtype(), gy.device(), w, gy, false, gx);
}

void cudnn_backward_weight(const cpu::ConvGeom& g, const Tensor& x, const Tensor& gy, const Tensor& gw) {
  cudnn_convolve<BackwardFilterCall>(g, x.dtype(), x.device(), x, gy, false, gw);
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
  check_operands(g, "conv2d", {&x, &w, &bias}, &x);
  cuda::DeviceGuard guard(x.device().index);
  Tensor y = Tensor::empty({g.n, g.oh, g.ow, g.c_out}, x.dtype(), x.device());
  if (y.numel() == 0) return y;  // an empty batch: the kernels and cuDNN reject zero sizes
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

Tensor depthwise_forward_act(const cpu::ConvGeom& g, const Tensor& x, const Tensor& w, const Tensor& bias,
                             Activation act) {
  check_operands(g, "conv2d_act", {&x, &w, &bias});
  KCHECK(conv2d_path(g, x.dtype()) == ConvPath::Depthwise, ValueError,
         "conv2d_act: the fused epilogue exists for depthwise convolutions only (", geom_str(g), ")");
  cuda::DeviceGuard guard(x.device().index);
  Tensor y = Tensor::empty({g.n, g.oh, g.ow, g.c_out}, x.dtype(), x.device());
  if (y.numel() > 0) depthwise_forward(g, x, w, bias, y, act);
  return y;
}

Tensor conv2d_backward_input(const cpu::ConvGeom& g, const Tensor& gy, const Tensor& w) {
  check_operands(g, "conv2d backward", {&gy, &w});
  cuda::DeviceGuard guard(gy.device().index);
  if (gy.numel() == 0) return Tensor::zeros({g.n, g.h, g.w, g.c_in}, gy.dtype(), gy.device());
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
  check_operands(g, "conv2d backward", {&gy, want_weight ? &x : &gy}, &x);
  cuda::DeviceGuard guard(gy.device().index);
  ConvParamGrads out;
  if (gy.numel() == 0) {  // an empty batch contributes nothing
    if (want_weight) out.weight = Tensor::zeros({g.c_out, g.kh, g.kw, g.cin_g()}, gy.dtype(), gy.device());
    if (want_bias) out.bias = Tensor::zeros({g.c_out}, gy.dtype(), gy.device());
    return out;
  }
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

ConvAlgoCacheStats conv_algo_cache_stats() {
  return {g_algo_hits.load(), g_algo_misses.load(), g_algo_fallbacks.load()};
}

bool cudnn_benchmark_enabled() {
  int state = g_cudnn_benchmark.load();
  if (state < 0) {
    const char* env = std::getenv("KESTREL_CUDNN_BENCHMARK");
    const int from_env = (env != nullptr && std::string(env) == "1") ? 1 : 0;
    g_cudnn_benchmark.compare_exchange_strong(state, from_env);
    state = g_cudnn_benchmark.load();
  }
  return state == 1;
}

void set_cudnn_benchmark(bool on) { g_cudnn_benchmark.store(on ? 1 : 0); }

}  // namespace kestrel::gpu
