// Hand-written kernels beside cuDNN's way of doing the same thing, at the
// layer shapes of EMN-Small, EfficientNet-B0, MobileNetV2 and MobileNetV3
// (batch 256 at 32x32 and batch 64 at 224x224), f16 NHWC.
//
//   depthwise fwd / bwd-data / bwd-weight  vs  grouped convolution (groups = C),
//                                               algorithm chosen by cudnnFind*
//   batch norm + ReLU fwd (training)       vs  cudnnBatchNormalizationForwardTraining
//                                               + cudnnActivationForward
//   batch norm + ReLU bwd                  vs  cudnnActivationBackward
//                                               + cudnnBatchNormalizationBackward
//   ghost module's cheap half, in place    vs  grouped convolution + two copies
//                                               into the concatenation
//   squeeze-excite fwd / bwd               vs  cudnnReduceTensor + cuBLAS GEMMs +
//                                               cuDNN add/activation/op-tensor
//   coordinate attention fwd / bwd         vs  the same composition
//
// Napkin math for the counters: bytes = every tensor the op must touch, read
// once or written once (depthwise fwd: x + y; bwd data: dy + dx; bwd weight:
// x + dy; BN fwd: x + y; BN bwd: x + dy + dx; SE and CA fwd: x + y; bwd:
// dy + x + dx; cuDNN's activation reads and writes y again but is charged the
// same minimal bytes). GB/s = bytes / time, and pct_copy_bw = GB/s over the
// device-to-device cudaMemcpy bandwidth measured at start-up (2 x bytes copied
// / time). Times are CUDA-event times per launch (manual time).
//
//   bench_kernels [benchmark flags]   time every comparison
//   bench_kernels --verify            launch both sides of each comparison once
//                                     at a small batch and size (N 2, H and W
//                                     at most 12) and check their outputs agree;
//                                     exit 1 when any does not
// Both run on the CPU emulator too (its cuDNN and cuBLAS are loops), where
// only --verify means anything.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/kernel_case.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "kernels/batch_norm_act.h"
#include "kernels/coord_attention.h"
#include "kernels/depthwise_conv.h"
#include "kernels/ghost.h"
#include "kernels/squeeze_excite.h"

namespace {

using kestrel::bench::Buffer;
using kestrel::bench::Case;
using kestrel::bench::Elem;
using kestrel::kernels::KAct;
using kestrel::kernels::KDType;

#define CUDNN_CHECK(call)                                                                           \
  do {                                                                                              \
    const cudnnStatus_t st_ = (call);                                                               \
    if (st_ != CUDNN_STATUS_SUCCESS)                                                                \
      throw kestrel::DeviceError(std::string("cuDNN call failed: ") + #call + ": " + cudnnGetErrorString(st_)); \
  } while (0)

#define CUBLAS_CHECK(call)                                                                                   \
  do {                                                                                                       \
    const cublasStatus_t st_ = (call);                                                                       \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                        \
      throw kestrel::DeviceError(std::string("cuBLAS call failed: ") + #call + ": " + cublasGetStatusString(st_)); \
  } while (0)

double g_copy_gbps = 0.0;
cudnnHandle_t g_cudnn = nullptr;
cublasHandle_t g_cublas = nullptr;

enum class Impl { Kestrel, Baseline };

double measure_copy_bandwidth() {
  const size_t bytes = size_t{1} << 30;
  Buffer a(bytes / 4, Elem::F32), b(bytes / 4, Elem::F32);
  KESTREL_CUDA_CHECK(cudaMemset(a.p, 1, bytes));
  kestrel::cuda::Event start, stop;
  KESTREL_CUDA_CHECK(cudaMemcpy(b.p, a.p, bytes, cudaMemcpyDeviceToDevice));  // warm-up
  const int reps = 10;
  start.record(nullptr);
  for (int i = 0; i < reps; ++i) KESTREL_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, nullptr));
  stop.record(nullptr);
  stop.synchronize();
  const double s = start.elapsed_ms(stop) / 1e3;
  return 2.0 * static_cast<double>(bytes) * reps / s / 1e9;
}

// Times the case's launch per iteration with CUDA events; sets the counters.
void run_timed(benchmark::State& state, const Case& c) {
  kestrel::cuda::Event start, stop;
  c.launch();  // warm-up (and lazy library set-up)
  KESTREL_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    start.record(nullptr);
    c.launch();
    stop.record(nullptr);
    stop.synchronize();
    state.SetIterationTime(start.elapsed_ms(stop) / 1e3);
  }
  KESTREL_CUDA_CHECK(cudaGetLastError());
  state.counters["GB/s"] = benchmark::Counter(c.bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes"] = c.bytes;
  state.SetLabel("copy " + std::to_string(static_cast<int>(g_copy_gbps)) + " GB/s");
}

// Owns cuDNN descriptors for one case; f16 NHWC tensors of logical shape [n, c, h, w].
struct Descs {
  std::vector<cudnnTensorDescriptor_t> tensors;
  cudnnReduceTensorDescriptor_t mean = nullptr, sum = nullptr;
  cudnnOpTensorDescriptor_t mul = nullptr;
  cudnnActivationDescriptor_t relu = nullptr, sigmoid = nullptr;
  Descs() {
    CUDNN_CHECK(cudnnCreateReduceTensorDescriptor(&mean));
    CUDNN_CHECK(cudnnSetReduceTensorDescriptor(mean, CUDNN_REDUCE_TENSOR_AVG, CUDNN_DATA_FLOAT, CUDNN_NOT_PROPAGATE_NAN,
                                               CUDNN_REDUCE_TENSOR_NO_INDICES, CUDNN_32BIT_INDICES));
    CUDNN_CHECK(cudnnCreateReduceTensorDescriptor(&sum));
    CUDNN_CHECK(cudnnSetReduceTensorDescriptor(sum, CUDNN_REDUCE_TENSOR_ADD, CUDNN_DATA_FLOAT, CUDNN_NOT_PROPAGATE_NAN,
                                               CUDNN_REDUCE_TENSOR_NO_INDICES, CUDNN_32BIT_INDICES));
    CUDNN_CHECK(cudnnCreateOpTensorDescriptor(&mul));
    CUDNN_CHECK(cudnnSetOpTensorDescriptor(mul, CUDNN_OP_TENSOR_MUL, CUDNN_DATA_FLOAT, CUDNN_NOT_PROPAGATE_NAN));
    CUDNN_CHECK(cudnnCreateActivationDescriptor(&relu));
    CUDNN_CHECK(cudnnSetActivationDescriptor(relu, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
    CUDNN_CHECK(cudnnCreateActivationDescriptor(&sigmoid));
    CUDNN_CHECK(cudnnSetActivationDescriptor(sigmoid, CUDNN_ACTIVATION_SIGMOID, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  }
  ~Descs() {
    for (auto t : tensors) cudnnDestroyTensorDescriptor(t);
    cudnnDestroyReduceTensorDescriptor(mean);
    cudnnDestroyReduceTensorDescriptor(sum);
    cudnnDestroyOpTensorDescriptor(mul);
    cudnnDestroyActivationDescriptor(relu);
    cudnnDestroyActivationDescriptor(sigmoid);
  }
  Descs(const Descs&) = delete;
  Descs& operator=(const Descs&) = delete;
  cudnnTensorDescriptor_t nhwc(int n, int c, int h, int w) {
    cudnnTensorDescriptor_t t;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&t));
    tensors.push_back(t);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(t, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, c, h, w));
    return t;
  }

  // Reductions share one workspace, sized for every (input, output) pair the
  // case reduces, under either reduction descriptor; then allocated by the case.
  size_t reduce_bytes = 0;
  void* reduce_ws = nullptr;
  void size_reduction(cudnnTensorDescriptor_t a, cudnnTensorDescriptor_t o) {
    for (cudnnReduceTensorDescriptor_t r : {mean, sum}) {
      size_t bytes = 0;
      CUDNN_CHECK(cudnnGetReductionWorkspaceSize(g_cudnn, r, a, o, &bytes));
      reduce_bytes = std::max(reduce_bytes, bytes);
    }
  }
  // o = reduce(a) + beta * o over the dims where o has size 1.
  void reduce(cudnnReduceTensorDescriptor_t r, cudnnTensorDescriptor_t a, const void* ap, cudnnTensorDescriptor_t o,
              void* op, float beta = 0.f) const {
    const float one = 1.f;
    CUDNN_CHECK(cudnnReduceTensor(g_cudnn, r, nullptr, 0, reduce_ws, reduce_bytes, &one, a, ap, &beta, o, op));
  }
};

// C[m x n] = op(A) * op(B), column-major, f16 storage, f32 compute.
void gemm_f16(bool ta, bool tb, int m, int n, int k, const void* A, int lda, const void* B, int ldb, void* C, int ldc,
              float beta = 0.f) {
  const float one = 1.f;
  CUBLAS_CHECK(cublasGemmEx(g_cublas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &one, A,
                            CUDA_R_16F, lda, B, CUDA_R_16F, ldb, &beta, C, CUDA_R_16F, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

// ---------------------------------------------------------------- depthwise convolution

struct Layer {
  const char* model;
  int N, H, W, C, K, stride;
  int dil = 1;
};

// Depthwise layers (input side). EMN-Small from models/emn.cpp with the CIFAR
// stem (resolutions 32-32-32-16-8-8-4; channels = block input x expansion),
// its multi-scale aggregation's dilated 3x3 branches at the end;
// EfficientNet-B0 and MobileNetV2 from their papers' stage tables.
const Layer kLayers[] = {
    // batch 256 at 32x32
    {"EMN-Small", 256, 32, 32, 64, 3, 1},
    {"EMN-Small", 256, 32, 32, 96, 5, 2},
    {"EMN-Small", 256, 16, 16, 192, 5, 1},
    {"EMN-Small", 256, 16, 16, 288, 3, 2},
    {"EMN-Small", 256, 8, 8, 576, 3, 1},
    {"EMN-Small", 256, 8, 8, 816, 5, 1},
    {"EMN-Small", 256, 4, 4, 1344, 5, 1},
    {"EMN-Small-MSFA", 256, 4, 4, 224, 3, 1, 2},
    {"EMN-Small-MSFA", 256, 4, 4, 224, 3, 1, 3},
    {"MobileNetV2-32", 256, 32, 32, 96, 3, 1},
    {"MobileNetV2-32", 256, 16, 16, 192, 3, 1},
    {"EfficientNet-B0-32", 256, 16, 16, 144, 5, 2},
    {"EfficientNet-B0-32", 256, 8, 8, 480, 5, 1},
    // batch 64 at 224x224
    {"EfficientNet-B0", 64, 112, 112, 32, 3, 1},
    {"EfficientNet-B0", 64, 112, 112, 96, 3, 2},
    {"EfficientNet-B0", 64, 56, 56, 144, 5, 2},
    {"EfficientNet-B0", 64, 28, 28, 240, 3, 2},
    {"EfficientNet-B0", 64, 14, 14, 480, 5, 1},
    {"EfficientNet-B0", 64, 7, 7, 1152, 3, 1},
    {"MobileNetV2", 64, 56, 56, 144, 3, 1},
    {"MobileNetV2", 64, 14, 14, 576, 3, 1},
};

// A smaller layer of the same kind for --verify: N 2, H and W at most 12.
template <typename L>
L verify_size(L l) {
  l.N = 2;
  l.H = std::min(l.H, 12);
  l.W = std::min(l.W, 12);
  return l;
}

std::string layer_name(const Layer& l) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s/N%d_%dx%d_C%d_k%d_s%d", l.model, l.N, l.H, l.W, l.C, l.K, l.stride);
  return l.dil == 1 ? std::string(buf) : buf + std::string("_d") + std::to_string(l.dil);
}

kestrel::kernels::DepthwiseConvShape shape_of(const Layer& l) {
  kestrel::kernels::DepthwiseConvShape s;
  s.N = l.N; s.H = l.H; s.W = l.W; s.C = l.C;
  s.KH = s.KW = l.K;
  s.stride_h = s.stride_w = l.stride;
  s.dil_h = s.dil_w = l.dil;
  s.pad_h = s.pad_w = l.dil * (l.K / 2);  // "same" padding
  return s;
}

// cuDNN grouped convolution equivalent to one depthwise layer, NHWC f16,
// f32 compute; the fastest algorithm of cudnnFind* for each direction.
struct CudnnDepthwise {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  // cudnnFind* times each algorithm under both math types and reports the
  // winner's; the descriptor must carry it when that algorithm runs.
  cudnnMathType_t fwd_math{}, bwd_data_math{}, bwd_filter_math{};
  size_t ws_bytes = 0;

  explicit CudnnDepthwise(const kestrel::kernels::DepthwiseConvShape& s) {
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, s.N, s.C, s.H, s.W));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, s.N, s.C, s.OH(), s.OW()));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, s.C, 1, s.KH, s.KW));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, s.pad_h, s.pad_w, s.stride_h, s.stride_w, s.dil_h, s.dil_w,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, s.C));
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv, CUDNN_TENSOR_OP_MATH));
    int n = 0;
    cudnnConvolutionFwdAlgoPerf_t pf[8];
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(g_cudnn, x, w, conv, y, 8, &n, pf));
    fwd = fastest(pf, n, "forward").algo;
    fwd_math = fastest(pf, n, "forward").mathType;
    cudnnConvolutionBwdDataAlgoPerf_t pd[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(g_cudnn, w, y, conv, x, 8, &n, pd));
    bwd_data = fastest(pd, n, "backward data").algo;
    bwd_data_math = fastest(pd, n, "backward data").mathType;
    cudnnConvolutionBwdFilterAlgoPerf_t pw[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(g_cudnn, x, y, conv, w, 8, &n, pw));
    bwd_filter = fastest(pw, n, "backward filter").algo;
    bwd_filter_math = fastest(pw, n, "backward filter").mathType;
    // Each direction's workspace under the math type it will run with.
    size_t bytes = 0;
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv, fwd_math));
    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(g_cudnn, x, w, conv, y, fwd, &bytes));
    ws_bytes = std::max(ws_bytes, bytes);
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv, bwd_data_math));
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(g_cudnn, w, y, conv, x, bwd_data, &bytes));
    ws_bytes = std::max(ws_bytes, bytes);
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv, bwd_filter_math));
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(g_cudnn, x, y, conv, w, bwd_filter, &bytes));
    ws_bytes = std::max(ws_bytes, bytes);
  }
  // cudnnFind* lists by time; entries that failed to run carry a bad status.
  template <typename Perf>
  static const Perf& fastest(const Perf* perf, int n, const char* what) {
    for (int i = 0; i < n; ++i)
      if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf[i];
    throw kestrel::DeviceError(std::string("cuDNN grouped convolution ") + what + ": no algorithm ran");
  }
  CudnnDepthwise(const CudnnDepthwise&) = delete;
  CudnnDepthwise& operator=(const CudnnDepthwise&) = delete;
  ~CudnnDepthwise() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
};

enum class Dir { Fwd, BwdData, BwdWeight };
const char* dir_name(Dir d) { return d == Dir::Fwd ? "fwd" : (d == Dir::BwdData ? "bwd_data" : "bwd_weight"); }

// fwd: y = dw(x, w); bwd_data: dx = dw^T(dy, w); bwd_weight: dw = x (*) dy.
Case depthwise_case(const Layer& l, Dir dir, Impl impl) {
  const auto s = shape_of(l);
  const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.OH() * s.OW() * s.C;
  const size_t nw = size_t(s.C) * s.KH * s.KW;
  Case c;
  Buffer& x = dir == Dir::BwdData ? c.scratch(nx, Elem::F16) : c.input(nx, Elem::F16, 1);
  Buffer& y = dir == Dir::Fwd ? c.scratch(ny, Elem::F16) : c.input(ny, Elem::F16, 2);
  Buffer& w = dir == Dir::BwdWeight ? c.scratch(nw, Elem::F16) : c.input(nw, Elem::F16, 3, -0.5f, 0.5f);
  c.output(dir == Dir::Fwd ? "y" : (dir == Dir::BwdData ? "dx" : "dw"), dir == Dir::Fwd ? y : (dir == Dir::BwdData ? x : w));
  c.bytes = 2.0 * static_cast<double>(nx + ny);
  if (impl == Impl::Kestrel) {
    void* ws = c.workspace(kestrel::kernels::depthwise_conv2d_backward_weight_workspace_bytes(s));
    c.launch = [s, dir, x = x.p, y = y.p, w = w.p, ws] {
      namespace k = kestrel::kernels;
      if (dir == Dir::Fwd) KESTREL_CUDA_CHECK(k::depthwise_conv2d_forward(KDType::F16, s, x, w, nullptr, y, nullptr));
      if (dir == Dir::BwdData) KESTREL_CUDA_CHECK(k::depthwise_conv2d_backward_data(KDType::F16, s, y, w, x, false, nullptr));
      if (dir == Dir::BwdWeight)
        KESTREL_CUDA_CHECK(k::depthwise_conv2d_backward_weight(KDType::F16, s, x, y, w, nullptr, ws, nullptr));
    };
    return c;
  }
  auto d = std::make_shared<CudnnDepthwise>(s);
  void* ws = c.workspace(d->ws_bytes);
  c.launch = [d, dir, x = x.p, y = y.p, w = w.p, ws] {
    const float one = 1.f, zero = 0.f;
    CUDNN_CHECK(cudnnSetConvolutionMathType(
        d->conv, dir == Dir::Fwd ? d->fwd_math : (dir == Dir::BwdData ? d->bwd_data_math : d->bwd_filter_math)));
    if (dir == Dir::Fwd)
      CUDNN_CHECK(cudnnConvolutionForward(g_cudnn, &one, d->x, x, d->w, w, d->conv, d->fwd, ws, d->ws_bytes, &zero,
                                          d->y, y));
    if (dir == Dir::BwdData)
      CUDNN_CHECK(cudnnConvolutionBackwardData(g_cudnn, &one, d->w, w, d->y, y, d->conv, d->bwd_data, ws, d->ws_bytes,
                                               &zero, d->x, x));
    if (dir == Dir::BwdWeight)
      CUDNN_CHECK(cudnnConvolutionBackwardFilter(g_cudnn, &one, d->x, x, d->y, y, d->conv, d->bwd_filter, ws,
                                                 d->ws_bytes, &zero, d->w, w));
  };
  return c;
}

// ---------------------------------------------------------------- ghost module's cheap half

// Ghost modules (GhostNet, ratio 2, 3x3 cheap op): C_out = the module's output
// channels, the primary 1x1 conv writes ceil(C_out / 2) of them. Layers:
// GhostNet-1.0's expanding ghost modules at 224x224 and EMN-Small's ghost
// expansions (models/emn.cpp) at 32x32. Even C_out only, so the cheap op
// reads all primary channels (cuDNN then needs no strided view).
struct GhostLayer {
  const char* model;
  int N, H, W, C_out;
};
const GhostLayer kGhostLayers[] = {
    {"EMN-Small", 256, 32, 32, 64},   {"EMN-Small", 256, 32, 32, 96}, {"EMN-Small", 256, 16, 16, 288},
    {"EMN-Small", 256, 8, 8, 576},    {"EMN-Small", 256, 4, 4, 1344}, {"GhostNet", 64, 112, 112, 48},
    {"GhostNet", 64, 56, 56, 72},     {"GhostNet", 64, 28, 28, 120},  {"GhostNet", 64, 14, 14, 480},
    {"GhostNet", 64, 7, 7, 960},
};

std::string ghost_layer_name(const GhostLayer& l) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s/N%d_%dx%d_C%d", l.model, l.N, l.H, l.W, l.C_out);
  return buf;
}

// Given the primary half p [M, C_p], out [M, C_out] = concat(p, depthwise3x3(p)).
// Kestrel: the primary conv already wrote p into out's first channels (done
// here, untimed); the cheap kernel writes the second half in place. cuDNN's
// way: grouped convolution into its own tensor, then both halves copied into
// the concatenation (cudaMemcpy2DAsync, the cheapest concat there is).
// Minimal bytes: read p once, write the cheap half once.
Case ghost_cheap_case(const GhostLayer& l, Impl impl) {
  const int Cp = (l.C_out + 1) / 2, Cc = l.C_out - Cp;
  const size_t M = size_t(l.N) * l.H * l.W;
  Case c;
  const Buffer& primary = c.input(M * Cp, Elem::F16, 1);
  const Buffer& w = c.input(size_t(Cc) * 9, Elem::F16, 3, -0.5f, 0.5f);
  Buffer& out = c.scratch(M * l.C_out, Elem::F16);
  c.output("out", out);
  c.bytes = 2.0 * 2.0 * static_cast<double>(M * Cc);
  void *o = out.p, *wp = w.p, *pp = primary.p;
  const size_t row = size_t(l.C_out) * 2;
  if (impl == Impl::Kestrel) {
    KESTREL_CUDA_CHECK(cudaMemcpy2DAsync(o, row, pp, size_t(Cp) * 2, size_t(Cp) * 2, M, cudaMemcpyDeviceToDevice, nullptr));
    const kestrel::kernels::GhostShape g{l.N, l.H, l.W, Cp, l.C_out, 3};
    c.launch = [=] { KESTREL_CUDA_CHECK(kestrel::kernels::ghost_cheap_forward(KDType::F16, g, o, wp, nullptr, nullptr)); };
    return c;
  }
  const auto d = std::make_shared<CudnnDepthwise>(shape_of(Layer{l.model, l.N, l.H, l.W, Cc, 3, 1}));
  void* ws = c.workspace(d->ws_bytes);
  void* cheap = c.scratch(M * Cc, Elem::F16).p;
  c.launch = [=] {
    const float one = 1.f, zero = 0.f;
    CUDNN_CHECK(cudnnConvolutionForward(g_cudnn, &one, d->x, pp, d->w, wp, d->conv, d->fwd, ws, d->ws_bytes, &zero,
                                        d->y, cheap));
    KESTREL_CUDA_CHECK(
        cudaMemcpy2DAsync(o, row, pp, size_t(Cp) * 2, size_t(Cp) * 2, M, cudaMemcpyDeviceToDevice, nullptr));
    KESTREL_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(o) + size_t(Cp) * 2, row, cheap, size_t(Cc) * 2,
                                         size_t(Cc) * 2, M, cudaMemcpyDeviceToDevice, nullptr));
  };
  return c;
}

// ---------------------------------------------------------------- batch norm + ReLU

// Training-mode BN + ReLU on the activations of the same layers (the tensors a
// depthwise layer reads are what BN normalizes beside it). The backward case
// runs the forward once when built, for the saved statistics (and, for
// cuDNN, the activation output its ReLU backward reads).
Case bn_relu_case(const Layer& l, bool backward, Impl impl) {
  const int64_t M = int64_t(l.N) * l.H * l.W;
  const int C = l.C;
  const size_t n = size_t(M) * C;
  Case c;
  Buffer& x = c.input(n, Elem::F16, 1);
  Buffer& dy = c.input(backward ? n : 0, Elem::F16, 2);
  Buffer& gamma = c.input(C, Elem::F32, 4, 0.5f, 1.5f);
  Buffer& beta = c.input(C, Elem::F32, 5, -0.5f, 0.5f);
  Buffer& running_mean = c.input(C, Elem::F32, 6, -0.1f, 0.1f);
  Buffer& running_var = c.input(C, Elem::F32, 7, 0.5f, 1.5f);
  Buffer& save_mean = c.scratch(C, Elem::F32);
  Buffer& save_invstd = c.scratch(C, Elem::F32);
  Buffer& y = c.scratch(n, Elem::F16);
  Buffer& dx = c.scratch(backward ? n : 0, Elem::F16);
  // cuDNN's side: the ReLU-masked dy, apart from dx (BN's backward is not documented in place).
  Buffer& masked_dy = c.scratch(backward && impl != Impl::Kestrel ? n : 0, Elem::F16);
  Buffer& dgamma = c.scratch(C, Elem::F32);
  Buffer& dbeta = c.scratch(C, Elem::F32);
  c.bytes = 2.0 * static_cast<double>(backward ? 3 * n : 2 * n);
  if (backward) {
    c.output("dx", dx);
    c.output("dgamma", dgamma);
    c.output("dbeta", dbeta);
  } else {
    for (auto [name, b] : {std::pair{"y", &y}, {"save_mean", &save_mean}, {"save_invstd", &save_invstd},
                           {"running_mean", &running_mean}, {"running_var", &running_var}})
      c.output(name, *b);
  }
  // Raw pointers for the launches (the buffers outlive them: the case owns both).
  auto f32 = [](const Buffer& b) { return static_cast<float*>(b.p); };
  void *xp = x.p, *dyp = dy.p, *yp = y.p, *dxp = dx.p, *mdyp = masked_dy.p;
  float *g = f32(gamma), *b = f32(beta), *rm = f32(running_mean), *rv = f32(running_var);
  float *sm = f32(save_mean), *si = f32(save_invstd), *dg = f32(dgamma), *db = f32(dbeta);
  std::function<void()> forward, backward_pass;
  if (impl == Impl::Kestrel) {
    const kestrel::kernels::BatchNormShape s{M, C};
    const kestrel::kernels::BatchNormActArgs a{1e-5f, 0.1f, KAct::ReLU};
    void* ws = c.workspace(kestrel::kernels::batch_norm_act_workspace_bytes(s));
    forward = [=] {
      KESTREL_CUDA_CHECK(kestrel::kernels::batch_norm_act_forward_training(KDType::F16, s, a, xp, nullptr, g, b, rm,
                                                                           rv, sm, si, yp, ws, nullptr));
    };
    backward_pass = [=] {
      KESTREL_CUDA_CHECK(kestrel::kernels::batch_norm_act_backward(KDType::F16, s, a, dyp, xp, nullptr, g, b, sm, si,
                                                                   dxp, nullptr, dg, db, ws, nullptr));
    };
  } else {
    auto d = std::make_shared<Descs>();
    const auto td = d->nhwc(l.N, C, l.H, l.W);
    cudnnTensorDescriptor_t pd;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&pd));
    d->tensors.push_back(pd);
    CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, td, CUDNN_BATCHNORM_SPATIAL_PERSISTENT));
    forward = [=] {
      const float one = 1.f, zero = 0.f;
      CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(g_cudnn, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, &one, &zero, td,
                                                         xp, td, yp, pd, g, b, 0.1, rm, rv, 1e-5, sm, si));
      CUDNN_CHECK(cudnnActivationForward(g_cudnn, d->relu, &one, td, yp, &zero, td, yp));
    };
    // ReLU backward needs the sign of the pre-activation: cuDNN's way keeps the
    // ReLU output y (same sign) and writes the masked dy, which BN's backward reads.
    backward_pass = [=] {
      const float one = 1.f, zero = 0.f;
      CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d->relu, &one, td, yp, td, dyp, td, yp, &zero, td, mdyp));
      CUDNN_CHECK(cudnnBatchNormalizationBackward(g_cudnn, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, &one, &zero, &one,
                                                  &zero, td, xp, td, mdyp, td, dxp, pd, g, dg, db, 1e-5, sm, si));
    };
  }
  if (backward) forward();
  c.launch = backward ? backward_pass : forward;
  return c;
}

// ---------------------------------------------------------------- squeeze-excite, coordinate attention
//
// Fused kernels vs the unfused composition a framework would launch: cuDNN
// reductions (cudnnReduceTensor) for the pooling and the channel sums,
// cuBLAS GEMMs (f16 in, f32 compute) for the 1x1 transforms, cuDNN
// add/activation/op-tensor (broadcast multiply) for the rest. f16 NHWC, f32
// weights for the fused kernels (master weights), f16 weights for cuBLAS
// (the same values: they are filled from the same seeds, exact in f16).
// Minimal bytes: forward x + y; backward dy + x + dx.

struct GateLayer {
  const char* model;
  int N, H, W, C, Cr;  // Cr: SE reduced width, or CA's mip
};

// SE blocks (EfficientNet-B0: Cr = block input / 4; MobileNetV3-Large:
// Cr = make_divisible(C / 4, 8)). EMN has no SE (its blocks use coordinate attention).
const GateLayer kSeLayers[] = {
    {"EfficientNet-B0-32", 256, 16, 16, 144, 6}, {"EfficientNet-B0-32", 256, 8, 8, 480, 20},
    {"EfficientNet-B0", 64, 112, 112, 32, 8},    {"EfficientNet-B0", 64, 56, 56, 144, 6},
    {"EfficientNet-B0", 64, 28, 28, 240, 10},    {"EfficientNet-B0", 64, 14, 14, 672, 28},
    {"EfficientNet-B0", 64, 7, 7, 1152, 48},     {"MobileNetV3", 64, 56, 56, 72, 24},
    {"MobileNetV3", 64, 28, 28, 120, 32},        {"MobileNetV3", 64, 14, 14, 672, 168},
    {"MobileNetV3", 64, 7, 7, 960, 240},
};
// Coordinate attention, mip = max(8, C / 32): EMN-Small's blocks (after their
// depthwise layer, so at its output resolution) and MobileNetV2 with CA added
// at the same stages, as in the coordinate-attention paper.
const GateLayer kCaLayers[] = {
    {"EMN-Small", 256, 32, 32, 64, 8},     {"EMN-Small", 256, 16, 16, 192, 8},   {"EMN-Small", 256, 8, 8, 576, 18},
    {"EMN-Small", 256, 4, 4, 1344, 42},    {"MobileNetV2-32", 256, 16, 16, 192, 8}, {"MobileNetV2", 64, 56, 56, 144, 8},
    {"MobileNetV2", 64, 28, 28, 192, 8},   {"MobileNetV2", 64, 14, 14, 576, 18}, {"MobileNetV2", 64, 7, 7, 960, 30},
};

std::string gate_layer_name(const GateLayer& l, const char* width) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s/N%d_%dx%d_C%d_%s%d", l.model, l.N, l.H, l.W, l.C, width, l.Cr);
  return buf;
}

// Gate weights and biases, on both sides from the same seeds: f32 for the
// fused kernels, f16 for the unfused composition.
struct GateParams {
  const Buffer &w1, &b1, &w2, &b2;  // SE: w1 [Cr, C], w2 [C, Cr]
};
GateParams gate_params(Case& c, int C, int Cr, Elem e, uint32_t seed) {
  const size_t nw = size_t(C) * Cr;
  return {c.input(nw, e, seed, -0.5f, 0.5f), c.input(Cr, e, seed + 1, -0.1f, 0.1f),
          c.input(nw, e, seed + 2, -0.5f, 0.5f), c.input(C, e, seed + 3, -0.1f, 0.1f)};
}

Case squeeze_excite_case(const GateLayer& l, bool backward, Impl impl) {
  const int N = l.N, HW = l.H * l.W, C = l.C, Cr = l.Cr;
  const size_t n = size_t(N) * HW * C, nw = size_t(C) * Cr;
  Case c;
  void* x = c.input(n, Elem::F16, 1).p;
  void* dy = c.input(backward ? n : 0, Elem::F16, 2).p;
  Buffer& y = c.scratch(n, Elem::F16);
  Buffer& dx = c.scratch(backward ? n : 0, Elem::F16);
  c.bytes = 2.0 * static_cast<double>(backward ? 3 * n : 2 * n);
  const Elem pe = impl == Impl::Kestrel ? Elem::F32 : Elem::F16;
  const GateParams p = gate_params(c, C, Cr, pe, 3);
  Buffer &dw1 = c.scratch(nw, pe), &db1 = c.scratch(Cr, pe), &dw2 = c.scratch(nw, pe), &db2 = c.scratch(C, pe);
  if (backward) {
    for (auto [name, b] : {std::pair{"dx", &dx}, {"dw1", &dw1}, {"db1", &db1}, {"dw2", &dw2}, {"db2", &db2}})
      c.output(name, *b);
  } else {
    c.output("y", y);
  }
  void *w1 = p.w1.p, *b1 = p.b1.p, *w2 = p.w2.p, *b2 = p.b2.p, *yp = y.p, *dxp = dx.p;
  void *dw1p = dw1.p, *db1p = db1.p, *dw2p = dw2.p, *db2p = db2.p;
  std::function<void()> forward, backward_pass;
  if (impl == Impl::Kestrel) {
    const kestrel::kernels::SqueezeExciteShape s{N, HW, C, Cr};
    void* fws = c.workspace(kestrel::kernels::squeeze_excite_workspace_bytes(s));
    void* bws = c.workspace(kestrel::kernels::squeeze_excite_backward_workspace_bytes(s));
    forward = [=] {
      KESTREL_CUDA_CHECK(kestrel::kernels::squeeze_excite_forward(KDType::F16, KDType::F32, s, KAct::ReLU,
                                                                  KAct::Sigmoid, x, w1, b1, w2, b2, yp, fws, nullptr));
    };
    backward_pass = [=] {
      KESTREL_CUDA_CHECK(kestrel::kernels::squeeze_excite_backward(KDType::F16, KDType::F32, s, KAct::ReLU,
                                                                   KAct::Sigmoid, dy, x, w1, w2, b2, fws, dxp, dw1p,
                                                                   db1p, dw2p, db2p, bws, nullptr));
    };
  } else {
    // Small tensors [N, C] / [N, Cr] as NHWC [N, C, 1, 1].
    auto d = std::make_shared<Descs>();
    const auto tx = d->nhwc(N, C, l.H, l.W), tnc = d->nhwc(N, C, 1, 1), tnr = d->nhwc(N, Cr, 1, 1),
               tc = d->nhwc(1, C, 1, 1), tr = d->nhwc(1, Cr, 1, 1);
    void *pooled = c.scratch(size_t(N) * C, Elem::F16).p, *hid = c.scratch(size_t(N) * Cr, Elem::F16).p,
         *act = c.scratch(size_t(N) * Cr, Elem::F16).p, *z = c.scratch(size_t(N) * C, Elem::F16).p,
         *sc = c.scratch(size_t(N) * C, Elem::F16).p, *ds = c.scratch(size_t(N) * C, Elem::F16).p,
         *dz = c.scratch(size_t(N) * C, Elem::F16).p, *dh = c.scratch(size_t(N) * Cr, Elem::F16).p,
         *dp = c.scratch(size_t(N) * C, Elem::F16).p;
    for (auto [a, o] : {std::pair{tx, tnc}, {tnc, tc}, {tnr, tr}}) d->size_reduction(a, o);
    d->reduce_ws = c.workspace(d->reduce_bytes);
    forward = [=] {
      const float one = 1.f, zero = 0.f;
      d->reduce(d->mean, tx, x, tnc, pooled);
      gemm_f16(true, false, Cr, N, C, w1, C, pooled, C, hid, Cr);  // hidden [N, Cr]
      CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tr, b1, &one, tnr, hid));
      CUDNN_CHECK(cudnnActivationForward(g_cudnn, d->relu, &one, tnr, hid, &zero, tnr, act));
      gemm_f16(true, false, C, N, Cr, w2, Cr, act, Cr, z, C);  // z [N, C]
      CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tc, b2, &one, tnc, z));
      CUDNN_CHECK(cudnnActivationForward(g_cudnn, d->sigmoid, &one, tnc, z, &zero, tnc, sc));
      CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, x, &one, tnc, sc, &zero, tx, yp));
    };
    backward_pass = [=] {
      const float one = 1.f, zero = 0.f, inv_hw = 1.f / static_cast<float>(HW);
      CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, dy, &one, tx, x, &zero, tx, dxp));  // dy * x
      d->reduce(d->sum, tx, dxp, tnc, ds);
      CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d->sigmoid, &one, tnc, sc, tnc, ds, tnc, z, &zero, tnc, dz));
      d->reduce(d->sum, tnc, dz, tc, db2p);
      gemm_f16(false, true, Cr, C, N, act, Cr, dz, C, dw2p, Cr);  // dw2 [C, Cr]
      gemm_f16(false, false, Cr, N, C, w2, Cr, dz, C, dh, Cr);    // d act [N, Cr]
      CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d->relu, &one, tnr, act, tnr, dh, tnr, hid, &zero, tnr, dh));
      d->reduce(d->sum, tnr, dh, tr, db1p);
      gemm_f16(false, true, C, Cr, N, pooled, C, dh, Cr, dw1p, C);  // dw1 [Cr, C]
      gemm_f16(false, false, C, N, Cr, w1, C, dh, Cr, dp, C);        // d pooled [N, C]
      CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, dy, &one, tnc, sc, &zero, tx, dxp));
      CUDNN_CHECK(cudnnAddTensor(g_cudnn, &inv_hw, tnc, dp, &one, tx, dxp));
    };
  }
  if (backward) forward();
  c.launch = backward ? backward_pass : forward;
  return c;
}

// Coordinate attention with ReLU in the shared transform on both sides (cuDNN
// has no hard-swish; the fused kernel's cost does not depend on which).
Case coord_attention_case(const GateLayer& l, bool backward, Impl impl) {
  const int N = l.N, H = l.H, W = l.W, C = l.C, mip = l.Cr;
  const size_t n = size_t(N) * H * W * C, nw = size_t(C) * mip;
  Case c;
  void* x = c.input(n, Elem::F16, 1).p;
  void* dy = c.input(backward ? n : 0, Elem::F16, 2).p;
  Buffer& y = c.scratch(n, Elem::F16);
  if (!backward) c.output("y", y);
  c.bytes = 2.0 * static_cast<double>(backward ? 3 * n : 2 * n);
  const Elem pe = impl == Impl::Kestrel ? Elem::F32 : Elem::F16;
  // w1 [mip, C], b1 [mip], wh [C, mip], bh [C]; ww and bw likewise.
  const GateParams ph = gate_params(c, C, mip, pe, 3);
  void *w1 = ph.w1.p, *b1 = ph.b1.p, *wh = ph.w2.p, *bh = ph.b2.p;
  void* ww = c.input(nw, pe, 7, -0.5f, 0.5f).p;
  void* bw = c.input(C, pe, 8, -0.1f, 0.1f).p;
  void* yp = y.p;
  // Gradients (backward only; count 0 otherwise), in the parameters' type.
  const size_t g = backward ? 1 : 0;
  Buffer &dx = c.scratch(g * n, Elem::F16), &dw1 = c.scratch(g * nw, pe), &db1 = c.scratch(g * mip, pe),
         &dwh = c.scratch(g * nw, pe), &dbh = c.scratch(g * C, pe), &dww = c.scratch(g * nw, pe),
         &dbw = c.scratch(g * C, pe);
  if (backward)
    for (auto [name, buf] : {std::pair{"dx", &dx}, {"dw1", &dw1}, {"db1", &db1}, {"dwh", &dwh}, {"dbh", &dbh},
                             {"dww", &dww}, {"dbw", &dbw}})
      c.output(name, *buf);
  void *dxp = dx.p, *dw1p = dw1.p, *db1p = db1.p, *dwhp = dwh.p, *dbhp = dbh.p, *dwwp = dww.p, *dbwp = dbw.p;
  if (impl == Impl::Kestrel) {
    const kestrel::kernels::CoordAttentionShape s{N, H, W, C, mip};
    void* fws = c.workspace(kestrel::kernels::coord_attention_workspace_bytes(s));
    void* bws = c.workspace(kestrel::kernels::coord_attention_backward_workspace_bytes(s));
    auto forward = [=] {
      KESTREL_CUDA_CHECK(kestrel::kernels::coord_attention_forward(KDType::F16, KDType::F32, s, KAct::ReLU, x, w1, b1,
                                                                   wh, bh, ww, bw, yp, fws, nullptr));
    };
    if (!backward) {
      c.launch = forward;
      return c;
    }
    forward();
    c.launch = [=] {
      KESTREL_CUDA_CHECK(kestrel::kernels::coord_attention_backward(KDType::F16, KDType::F32, s, KAct::ReLU, dy, x,
                                                                    w1, wh, ww, fws, dxp, dw1p, db1p, dwhp, dbhp, dwwp,
                                                                    dbwp, bws, nullptr));
    };
    return c;
  }
  // Two directional means (cuDNN), the shared transform and the gate GEMMs per
  // direction (cuBLAS), bias adds and activations, two broadcast multiplies.
  // Tensors [N, H, C] are NHWC [N, C, H, 1]; [N, W, C] are [N, C, 1, W].
  auto d = std::make_shared<Descs>();
  const auto tx = d->nhwc(N, C, H, W), th = d->nhwc(N, C, H, 1), tw = d->nhwc(N, C, 1, W),
             tth = d->nhwc(N, mip, H, 1), ttw = d->nhwc(N, mip, 1, W), tm = d->nhwc(1, mip, 1, 1),
             tc = d->nhwc(1, C, 1, 1);
  auto f16 = [&c](size_t count) { return c.scratch(count, Elem::F16).p; };
  const size_t nh = size_t(N) * H, nwid = size_t(N) * W;
  void *pool_h = f16(nh * C), *pool_w = f16(nwid * C), *z_h = f16(nh * mip), *z_w = f16(nwid * mip),
       *t_h = f16(nh * mip), *t_w = f16(nwid * mip), *a_h = f16(nh * C), *a_w = f16(nwid * C);
  for (auto [a, o] : {std::pair{tx, th}, {tx, tw}, {th, tc}, {tw, tc}, {tth, tm}, {ttw, tm}}) d->size_reduction(a, o);
  d->reduce_ws = c.workspace(d->reduce_bytes);
  auto forward = [=] {
    const float one = 1.f, zero = 0.f;
    d->reduce(d->mean, tx, x, th, pool_h);
    d->reduce(d->mean, tx, x, tw, pool_w);
    gemm_f16(true, false, mip, N * H, C, w1, C, pool_h, C, z_h, mip);  // z [N*H, mip]
    gemm_f16(true, false, mip, N * W, C, w1, C, pool_w, C, z_w, mip);
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tm, b1, &one, tth, z_h));
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tm, b1, &one, ttw, z_w));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d->relu, &one, tth, z_h, &zero, tth, t_h));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d->relu, &one, ttw, z_w, &zero, ttw, t_w));
    gemm_f16(true, false, C, N * H, mip, wh, mip, t_h, mip, a_h, C);  // gate logits [N*H, C]
    gemm_f16(true, false, C, N * W, mip, ww, mip, t_w, mip, a_w, C);
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tc, bh, &one, th, a_h));
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tc, bw, &one, tw, a_w));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d->sigmoid, &one, th, a_h, &zero, th, a_h));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d->sigmoid, &one, tw, a_w, &zero, tw, a_w));
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, x, &one, th, a_h, &zero, tx, yp));
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, yp, &one, tw, a_w, &zero, tx, yp));
  };
  if (!backward) {
    c.launch = forward;
    return c;
  }
  forward();
  // Backward (the fused kernel's formulas, coord_attention.h), gradients in f16.
  void *dyx = f16(n), *prod = f16(n), *dz_h = f16(nh * C), *dz_w = f16(nwid * C), *dt_h = f16(nh * mip),
       *dt_w = f16(nwid * mip), *dp_h = f16(nh * C), *dp_w = f16(nwid * C);
  c.launch = [=] {
    const float one = 1.f, zero = 0.f, inv_w = 1.f / static_cast<float>(W), inv_h = 1.f / static_cast<float>(H);
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, dy, &one, tx, x, &zero, tx, dyx));  // dy * x
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, dyx, &one, tw, a_w, &zero, tx, prod));
    d->reduce(d->sum, tx, prod, th, dz_h);  // d a_h = sum_w dy x a_w
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, dyx, &one, th, a_h, &zero, tx, prod));
    d->reduce(d->sum, tx, prod, tw, dz_w);  // d a_w = sum_h dy x a_h
    CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d->sigmoid, &one, th, a_h, th, dz_h, th, a_h, &zero, th, dz_h));
    CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d->sigmoid, &one, tw, a_w, tw, dz_w, tw, a_w, &zero, tw, dz_w));
    d->reduce(d->sum, th, dz_h, tc, dbhp);
    d->reduce(d->sum, tw, dz_w, tc, dbwp);
    gemm_f16(false, true, mip, C, N * H, t_h, mip, dz_h, C, dwhp, mip);  // dwh [C, mip]
    gemm_f16(false, true, mip, C, N * W, t_w, mip, dz_w, C, dwwp, mip);
    gemm_f16(false, false, mip, N * H, C, wh, mip, dz_h, C, dt_h, mip);  // d t [N*H, mip]
    gemm_f16(false, false, mip, N * W, C, ww, mip, dz_w, C, dt_w, mip);
    CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d->relu, &one, tth, t_h, tth, dt_h, tth, z_h, &zero, tth, dt_h));
    CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d->relu, &one, ttw, t_w, ttw, dt_w, ttw, z_w, &zero, ttw, dt_w));
    d->reduce(d->sum, tth, dt_h, tm, db1p);
    d->reduce(d->sum, ttw, dt_w, tm, db1p, 1.f);  // += into db1
    gemm_f16(false, true, C, mip, N * H, pool_h, C, dt_h, mip, dw1p, C);  // dw1 [mip, C]
    gemm_f16(false, true, C, mip, N * W, pool_w, C, dt_w, mip, dw1p, C, 1.f);
    gemm_f16(false, false, C, N * H, mip, w1, C, dt_h, mip, dp_h, C);  // d pooled [N*H, C]
    gemm_f16(false, false, C, N * W, mip, w1, C, dt_w, mip, dp_w, C);
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, dy, &one, th, a_h, &zero, tx, dxp));
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d->mul, &one, tx, dxp, &one, tw, a_w, &zero, tx, dxp));
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &inv_w, th, dp_h, &one, tx, dxp));
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &inv_h, tw, dp_w, &one, tx, dxp));
  };
  return c;
}

// ---------------------------------------------------------------- the comparisons

// One row of the report: an op at one layer, Kestrel's side and (when there
// is one) the baseline's. make(impl, small) builds a side at the layer's
// shape or, for --verify, at its verify_size.
struct Comparison {
  std::string op, layer, baseline;  // baseline: its label in benchmark names, empty when none
  std::string verify_layer;         // the layer at its verify_size
  std::function<Case(Impl, bool small)> make;
};

std::vector<Comparison> comparisons() {
  std::vector<Comparison> out;
  for (const Layer& l : kLayers) {
    for (Dir d : {Dir::Fwd, Dir::BwdData, Dir::BwdWeight})
      out.push_back({std::string("depthwise_") + dir_name(d), layer_name(l), "cudnn", layer_name(verify_size(l)),
                     [l, d](Impl i, bool small) { return depthwise_case(small ? verify_size(l) : l, d, i); }});
    if (l.stride == 1)
      for (bool bwd : {false, true})
        out.push_back({std::string("bn_relu_") + (bwd ? "bwd" : "fwd"), layer_name(l), "cudnn",
                       layer_name(verify_size(l)),
                       [l, bwd](Impl i, bool small) { return bn_relu_case(small ? verify_size(l) : l, bwd, i); }});
  }
  for (const GhostLayer& l : kGhostLayers) {
    GhostLayer small = verify_size(l);
    out.push_back({"ghost_cheap_fwd", ghost_layer_name(l), "cudnn+copy", ghost_layer_name(small),
                   [l, small](Impl i, bool is_small) { return ghost_cheap_case(is_small ? small : l, i); }});
  }
  for (const GateLayer& l : kSeLayers)
    for (bool bwd : {false, true})
      out.push_back({std::string("squeeze_excite_") + (bwd ? "bwd" : "fwd"), gate_layer_name(l, "r"), "cudnn+cublas",
                     gate_layer_name(verify_size(l), "r"),
                     [l, bwd](Impl i, bool small) { return squeeze_excite_case(small ? verify_size(l) : l, bwd, i); }});
  for (const GateLayer& l : kCaLayers)
    for (bool bwd : {false, true})
      out.push_back({std::string("coord_attention_") + (bwd ? "bwd" : "fwd"), gate_layer_name(l, "mip"),
                     "cudnn+cublas", gate_layer_name(verify_size(l), "mip"), [l, bwd](Impl i, bool small) {
                       return coord_attention_case(small ? verify_size(l) : l, bwd, i);
                     }});
  return out;
}

// Both sides of every comparison with a baseline, once each at the verify
// size; returns the number of outputs that disagree.
int verify_all() {
  int failures = 0, checked = 0;
  for (const Comparison& cmp : comparisons()) {
    if (cmp.baseline.empty()) continue;
    const std::string label = cmp.op + "/" + cmp.verify_layer;
    try {
      Case ours = cmp.make(Impl::Kestrel, true);
      ours.launch();
      Case theirs = cmp.make(Impl::Baseline, true);
      theirs.launch();
      KESTREL_CUDA_CHECK(cudaDeviceSynchronize());
      // f16 storage on both sides, f16 intermediates in the baselines.
      failures += kestrel::bench::compare_outputs(label, ours, theirs, 2e-2);
    } catch (const std::exception& e) {
      std::printf("verify %-70s FAIL: %s\n", label.c_str(), e.what());
      ++failures;
    }
    ++checked;
  }
  std::printf("verify: %d comparisons, %d outputs disagree\n", checked, failures);
  return failures;
}

// Adds pct_copy_bw to every run with a GB/s counter, then prints as usual.
class CopyBandwidthReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> out(runs);
    for (Run& r : out) {
      auto it = r.counters.find("GB/s");
      if (it != r.counters.end() && g_copy_gbps > 0) {
        // The rate counter is finalized by the library before reporting.
        r.counters["pct_copy_bw"] = benchmark::Counter(100.0 * it->second.value / g_copy_gbps);
      }
    }
    ConsoleReporter::ReportRuns(out);
  }
};

// Google Benchmark calls a benchmark's function several times while it sizes
// the run; the case (buffers filled, cuDNN algorithms found) is built on the
// first call and kept until the next benchmark starts.
struct CurrentCase {
  std::string name;
  std::unique_ptr<Case> c;
} current;

void register_benchmarks() {
  for (const Comparison& cmp : comparisons())
    for (Impl impl : {Impl::Kestrel, Impl::Baseline}) {
      if (impl == Impl::Baseline && cmp.baseline.empty()) continue;
      const std::string name =
          cmp.op + "/" + (impl == Impl::Kestrel ? std::string("kestrel") : cmp.baseline) + "/" + cmp.layer;
      auto make = cmp.make;
      benchmark::RegisterBenchmark(name.c_str(), [make, impl, name](benchmark::State& state) {
        if (current.name != name) {
          current.c.reset();
          current.c = std::make_unique<Case>(make(impl, false));
          current.name = name;
        }
        run_timed(state, *current.c);
      })->UseManualTime()->Unit(benchmark::kMicrosecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
  bool verify = false;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--verify") == 0)
      verify = true;
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!kestrel::cuda::cuda_available()) {
    std::printf("bench_kernels: skipped, no usable CUDA device (%s)\n", kestrel::cuda::unavailable_reason().c_str());
    return 0;
  }
  int status = 0;
  try {
    CUDNN_CHECK(cudnnCreate(&g_cudnn));
    CUBLAS_CHECK(cublasCreate(&g_cublas));
    std::printf("device: %s; cuDNN %zu\n", kestrel::cuda::device_name(0).c_str(), cudnnGetVersion());
    if (verify) {
      status = verify_all() == 0 ? 0 : 1;
    } else {
      g_copy_gbps = measure_copy_bandwidth();
      benchmark::AddCustomContext("copy_gbps", std::to_string(g_copy_gbps));
      benchmark::AddCustomContext("device", kestrel::cuda::device_name(0));
      std::printf("measured device-to-device copy bandwidth: %.0f GB/s\n", g_copy_gbps);
      register_benchmarks();
      CopyBandwidthReporter reporter;
      benchmark::RunSpecifiedBenchmarks(&reporter);
      current.c.reset();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_kernels: %s\n", e.what());
    status = 1;
  }
  benchmark::Shutdown();
  if (g_cublas) cublasDestroy(g_cublas);
  if (g_cudnn) cudnnDestroy(g_cudnn);
  return status;
}
