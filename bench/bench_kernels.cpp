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
//   squeeze-excite fwd / bwd               vs  cudnnReduceTensor + cuBLAS GEMMs +
//                                               cuDNN add/activation/op-tensor
//   coordinate attention fwd / bwd         vs  the same composition (forward only)
//
// Napkin math for the counters: bytes = every tensor the op must touch, read
// once or written once (depthwise fwd: x + y; bwd data: dy + dx; bwd weight:
// x + dy; BN fwd: x + y; BN bwd: x + dy + dx; SE and CA fwd: x + y; bwd:
// dy + x + dx; cuDNN's activation reads and
// writes y again but is charged the same minimal bytes). GB/s = bytes / time,
// and pct_copy_bw = GB/s over the device-to-device cudaMemcpy bandwidth
// measured at start-up (2 x bytes copied / time). Times are CUDA-event times
// per launch (manual time). Written and compiled; never run on a GPU yet.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "kernels/batch_norm_act.h"
#include "kernels/coord_attention.h"
#include "kernels/depthwise_conv.h"
#include "kernels/squeeze_excite.h"

namespace {

using kestrel::kernels::KAct;
using kestrel::kernels::KDType;

#define CUDNN_CHECK(call)                                                                           \
  do {                                                                                              \
    const cudnnStatus_t st_ = (call);                                                               \
    if (st_ != CUDNN_STATUS_SUCCESS)                                                                \
      throw kestrel::DeviceError(std::string("cuDNN call failed: ") + #call + ": " + cudnnGetErrorString(st_)); \
  } while (0)

double g_copy_gbps = 0.0;
cudnnHandle_t g_cudnn = nullptr;

struct DevMem {
  void* p = nullptr;
  explicit DevMem(size_t bytes) { KESTREL_CUDA_CHECK(cudaMalloc(&p, bytes == 0 ? 1 : bytes)); }
  ~DevMem() { cudaFree(p); }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
};

// Fills with small deterministic values (the speed does not depend on them,
// but NaN/denormal garbage could).
void fill(void* p, size_t bytes) {
  std::vector<uint16_t> host(bytes / 2);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint16_t>(0x3000 + (i * 2654435761u >> 20) % 0x800);
  KESTREL_CUDA_CHECK(cudaMemcpy(p, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
}

double measure_copy_bandwidth() {
  const size_t bytes = size_t{1} << 30;
  DevMem a(bytes), b(bytes);
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

// Times fn per iteration with CUDA events; sets the counters.
void run_timed(benchmark::State& state, double bytes, const std::function<void()>& fn) {
  kestrel::cuda::Event start, stop;
  fn();  // warm-up (and lazy cuDNN set-up)
  KESTREL_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    start.record(nullptr);
    fn();
    stop.record(nullptr);
    stop.synchronize();
    state.SetIterationTime(start.elapsed_ms(stop) / 1e3);
  }
  KESTREL_CUDA_CHECK(cudaGetLastError());
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes"] = bytes;
  state.SetLabel("copy " + std::to_string(static_cast<int>(g_copy_gbps)) + " GB/s");
}

struct Layer {
  const char* model;
  int N, H, W, C, K, stride;
};

// Depthwise layers (input side). EfficientNet-B0 and MobileNetV2 from their
// papers' stage tables; EMN-Small from its 32x32 CIFAR configuration
// (update from models/ once the EMN builder lands: the stage widths there are
// authoritative).
const Layer kLayers[] = {
    // batch 256 at 32x32
    {"EMN-Small", 256, 32, 32, 64, 3, 1},
    {"EMN-Small", 256, 32, 32, 128, 3, 2},
    {"EMN-Small", 256, 16, 16, 256, 5, 1},
    {"EMN-Small", 256, 8, 8, 512, 3, 1},
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

kestrel::kernels::DepthwiseConvShape shape_of(const Layer& l) {
  kestrel::kernels::DepthwiseConvShape s;
  s.N = l.N; s.H = l.H; s.W = l.W; s.C = l.C;
  s.KH = s.KW = l.K;
  s.stride_h = s.stride_w = l.stride;
  s.pad_h = s.pad_w = l.K / 2;
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
    ws_bytes = std::max(ws_bytes, fastest(pf, n, "forward").memory);
    cudnnConvolutionBwdDataAlgoPerf_t pd[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(g_cudnn, w, y, conv, x, 8, &n, pd));
    bwd_data = fastest(pd, n, "backward data").algo;
    ws_bytes = std::max(ws_bytes, fastest(pd, n, "backward data").memory);
    cudnnConvolutionBwdFilterAlgoPerf_t pw[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(g_cudnn, x, y, conv, w, 8, &n, pw));
    bwd_filter = fastest(pw, n, "backward filter").algo;
    ws_bytes = std::max(ws_bytes, fastest(pw, n, "backward filter").memory);
  }
  // cudnnFind* lists by time; entries that failed to run carry a bad status.
  template <typename Perf>
  static const Perf& fastest(const Perf* perf, int n, const char* what) {
    for (int i = 0; i < n; ++i)
      if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf[i];
    throw kestrel::DeviceError(std::string("cuDNN grouped convolution ") + what + ": no algorithm ran");
  }
  ~CudnnDepthwise() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
};

enum class Dir { Fwd, BwdData, BwdWeight };
const char* dir_name(Dir d) { return d == Dir::Fwd ? "fwd" : (d == Dir::BwdData ? "bwd_data" : "bwd_weight"); }

void bm_depthwise(benchmark::State& state, Layer l, Dir dir, bool use_cudnn) {
  const auto s = shape_of(l);
  const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.OH() * s.OW() * s.C;
  const size_t nw = size_t(s.C) * s.KH * s.KW;
  DevMem x(nx * 2), y(ny * 2), w(nw * 2);
  fill(x.p, nx * 2);
  fill(y.p, ny * 2);
  fill(w.p, nw * 2);
  const double bytes = 2.0 * static_cast<double>(nx + ny);
  if (!use_cudnn) {
    DevMem ws(kestrel::kernels::depthwise_conv2d_backward_weight_workspace_bytes(s));
    run_timed(state, bytes, [&] {
      cudaError_t e = cudaSuccess;
      if (dir == Dir::Fwd) e = kestrel::kernels::depthwise_conv2d_forward(KDType::F16, s, x.p, w.p, nullptr, y.p, nullptr);
      if (dir == Dir::BwdData)
        e = kestrel::kernels::depthwise_conv2d_backward_data(KDType::F16, s, y.p, w.p, x.p, false, nullptr);
      if (dir == Dir::BwdWeight)
        e = kestrel::kernels::depthwise_conv2d_backward_weight(KDType::F16, s, x.p, y.p, w.p, nullptr, ws.p, nullptr);
      KESTREL_CUDA_CHECK(e);
    });
  } else {
    CudnnDepthwise c(s);
    DevMem ws(c.ws_bytes);
    const float one = 1.f, zero = 0.f;
    run_timed(state, bytes, [&] {
      if (dir == Dir::Fwd)
        CUDNN_CHECK(cudnnConvolutionForward(g_cudnn, &one, c.x, x.p, c.w, w.p, c.conv, c.fwd, ws.p, c.ws_bytes, &zero,
                                            c.y, y.p));
      if (dir == Dir::BwdData)
        CUDNN_CHECK(cudnnConvolutionBackwardData(g_cudnn, &one, c.w, w.p, c.y, y.p, c.conv, c.bwd_data, ws.p,
                                                 c.ws_bytes, &zero, c.x, x.p));
      if (dir == Dir::BwdWeight)
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(g_cudnn, &one, c.x, x.p, c.y, y.p, c.conv, c.bwd_filter, ws.p,
                                                   c.ws_bytes, &zero, c.w, w.p));
    });
  }
}

// BN + ReLU on the expanded activations of the same layers (the tensors a
// depthwise layer reads are what BN normalizes beside it).
void bm_bn_relu(benchmark::State& state, Layer l, bool backward, bool use_cudnn) {
  const int64_t M = int64_t(l.N) * l.H * l.W;
  const int C = l.C;
  const size_t n = size_t(M) * C;
  DevMem x(n * 2), y(n * 2), dy(n * 2), dx(n * 2), gamma(C * 4), beta(C * 4), rm(C * 4), rv(C * 4), sm(C * 4),
      si(C * 4), dg(C * 4), db(C * 4);
  fill(x.p, n * 2);
  fill(dy.p, n * 2);
  fill(gamma.p, C * 4);
  fill(beta.p, C * 4);
  fill(rm.p, C * 4);
  fill(rv.p, C * 4);
  const double bytes = 2.0 * static_cast<double>(backward ? 3 * n : 2 * n);
  if (!use_cudnn) {
    kestrel::kernels::BatchNormShape s{M, C};
    kestrel::kernels::BatchNormActArgs a{1e-5f, 0.1f, KAct::ReLU};
    DevMem ws(kestrel::kernels::batch_norm_act_workspace_bytes(s));
    float* g = static_cast<float*>(gamma.p);
    float* b = static_cast<float*>(beta.p);
    // forward once so the saved statistics are valid for backward
    KESTREL_CUDA_CHECK(kestrel::kernels::batch_norm_act_forward_training(
        KDType::F16, s, a, x.p, nullptr, g, b, static_cast<float*>(rm.p), static_cast<float*>(rv.p),
        static_cast<float*>(sm.p), static_cast<float*>(si.p), y.p, ws.p, nullptr));
    run_timed(state, bytes, [&] {
      if (!backward) {
        KESTREL_CUDA_CHECK(kestrel::kernels::batch_norm_act_forward_training(
            KDType::F16, s, a, x.p, nullptr, g, b, static_cast<float*>(rm.p), static_cast<float*>(rv.p),
            static_cast<float*>(sm.p), static_cast<float*>(si.p), y.p, ws.p, nullptr));
      } else {
        KESTREL_CUDA_CHECK(kestrel::kernels::batch_norm_act_backward(
            KDType::F16, s, a, dy.p, x.p, nullptr, g, b, static_cast<const float*>(sm.p),
            static_cast<const float*>(si.p), dx.p, nullptr, static_cast<float*>(dg.p), static_cast<float*>(db.p),
            ws.p, nullptr));
      }
    });
  } else {
    cudnnTensorDescriptor_t td, pd;
    cudnnActivationDescriptor_t ad;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&td));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&pd));
    CUDNN_CHECK(cudnnCreateActivationDescriptor(&ad));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(td, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, l.N, C, l.H, l.W));
    CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, td, CUDNN_BATCHNORM_SPATIAL_PERSISTENT));
    CUDNN_CHECK(cudnnSetActivationDescriptor(ad, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
    const float one = 1.f, zero = 0.f;
    auto forward = [&] {
      CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(g_cudnn, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, &one, &zero, td,
                                                         x.p, td, y.p, pd, gamma.p, beta.p, 0.1, rm.p, rv.p, 1e-5,
                                                         sm.p, si.p));
      CUDNN_CHECK(cudnnActivationForward(g_cudnn, ad, &one, td, y.p, &zero, td, y.p));
    };
    forward();
    run_timed(state, bytes, [&] {
      if (!backward) {
        forward();
      } else {
        // ReLU backward needs the pre-activation: cuDNN's way keeps the BN output
        // (here y, recomputed once above) and overwrites dy's copy in dx.
        CUDNN_CHECK(cudnnActivationBackward(g_cudnn, ad, &one, td, y.p, td, dy.p, td, y.p, &zero, td, dx.p));
        CUDNN_CHECK(cudnnBatchNormalizationBackward(g_cudnn, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, &one, &zero, &one,
                                                    &zero, td, x.p, td, dx.p, td, dx.p, pd, gamma.p, dg.p, db.p, 1e-5,
                                                    sm.p, si.p));
      }
    });
    cudnnDestroyActivationDescriptor(ad);
    cudnnDestroyTensorDescriptor(pd);
    cudnnDestroyTensorDescriptor(td);
  }
}

std::string layer_name(const Layer& l) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s/N%d_%dx%d_C%d_k%d_s%d", l.model, l.N, l.H, l.W, l.C, l.K, l.stride);
  return buf;
}

// ---------------------------------------------------------------- squeeze-excite, coordinate attention
//
// Fused kernels vs the unfused composition a framework would launch: cuDNN
// reductions (cudnnReduceTensor) for the pooling and the channel sums,
// cuBLAS GEMMs (f16 in, f32 compute) for the 1x1 transforms, cuDNN
// add/activation/op-tensor (broadcast multiply) for the rest. f16 NHWC, f32
// weights for the fused kernels (master weights), f16 weights for cuBLAS.
// Minimal bytes: forward x + y; backward dy + x + dx.

#define CUBLAS_CHECK(call)                                                                                   \
  do {                                                                                                       \
    const cublasStatus_t st_ = (call);                                                                       \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                        \
      throw kestrel::DeviceError(std::string("cuBLAS call failed: ") + #call + ": " + cublasGetStatusString(st_)); \
  } while (0)

cublasHandle_t g_cublas = nullptr;

struct GateLayer {
  const char* model;
  int N, H, W, C, Cr;  // Cr: SE reduced width, or CA's mip
};

// SE blocks (EfficientNet-B0: Cr = block input / 4; MobileNetV3-Large:
// Cr = make_divisible(C / 4, 8)); EMN-Small shapes are placeholders as above.
const GateLayer kSeLayers[] = {
    {"EMN-Small", 256, 32, 32, 64, 16},        {"EMN-Small", 256, 16, 16, 128, 32},
    {"EMN-Small", 256, 8, 8, 256, 64},         {"EfficientNet-B0-32", 256, 16, 16, 144, 6},
    {"EfficientNet-B0-32", 256, 8, 8, 480, 20}, {"EfficientNet-B0", 64, 112, 112, 32, 8},
    {"EfficientNet-B0", 64, 56, 56, 144, 6},   {"EfficientNet-B0", 64, 28, 28, 240, 10},
    {"EfficientNet-B0", 64, 14, 14, 672, 28},  {"EfficientNet-B0", 64, 7, 7, 1152, 48},
    {"MobileNetV3", 64, 56, 56, 72, 24},       {"MobileNetV3", 64, 28, 28, 120, 32},
    {"MobileNetV3", 64, 14, 14, 672, 168},     {"MobileNetV3", 64, 7, 7, 960, 240},
};
// Coordinate attention (mip = max(8, C / 32)) at the same stages.
const GateLayer kCaLayers[] = {
    {"EMN-Small", 256, 32, 32, 64, 8},      {"EMN-Small", 256, 16, 16, 128, 8},  {"EMN-Small", 256, 8, 8, 256, 8},
    {"MobileNetV2-32", 256, 16, 16, 192, 8}, {"MobileNetV2", 64, 56, 56, 144, 8}, {"MobileNetV2", 64, 28, 28, 192, 8},
    {"MobileNetV2", 64, 14, 14, 576, 18},   {"MobileNetV2", 64, 7, 7, 960, 30},
};

std::string gate_layer_name(const GateLayer& l, const char* width) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s/N%d_%dx%d_C%d_%s%d", l.model, l.N, l.H, l.W, l.C, width, l.Cr);
  return buf;
}

// Owns cuDNN descriptors for one benchmark.
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
  // NHWC f16 tensor of logical shape [n, c, h, w].
  cudnnTensorDescriptor_t nhwc(int n, int c, int h, int w) {
    cudnnTensorDescriptor_t t;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&t));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(t, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, c, h, w));
    tensors.push_back(t);
    return t;
  }
};

size_t reduce_workspace(cudnnReduceTensorDescriptor_t r, cudnnTensorDescriptor_t a, cudnnTensorDescriptor_t c) {
  size_t bytes = 0;
  CUDNN_CHECK(cudnnGetReductionWorkspaceSize(g_cudnn, r, a, c, &bytes));
  return bytes;
}

// C[m x n] = op(A) * op(B), column-major, f16 storage, f32 compute.
void gemm_f16(bool ta, bool tb, int m, int n, int k, const void* A, int lda, const void* B, int ldb, void* C, int ldc,
              float beta = 0.f) {
  const float one = 1.f;
  CUBLAS_CHECK(cublasGemmEx(g_cublas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &one, A,
                            CUDA_R_16F, lda, B, CUDA_R_16F, ldb, &beta, C, CUDA_R_16F, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

void bm_squeeze_excite(benchmark::State& state, GateLayer l, bool backward, bool unfused) {
  const int N = l.N, HW = l.H * l.W, C = l.C, Cr = l.Cr;
  const size_t n = size_t(N) * HW * C, nw = size_t(C) * Cr;
  DevMem x(n * 2), y(n * 2), dy(n * 2), w1(nw * 4), b1(Cr * 4), w2(nw * 4), b2(C * 4), dw1(nw * 4), db1(Cr * 4),
      dw2(nw * 4), db2(C * 4);
  fill(x.p, n * 2);
  fill(dy.p, n * 2);
  fill(w1.p, nw * 4);
  fill(w2.p, nw * 4);
  fill(b1.p, Cr * 4);
  fill(b2.p, C * 4);
  const double bytes = 2.0 * static_cast<double>(backward ? 3 * n : 2 * n);
  if (!unfused) {
    const kestrel::kernels::SqueezeExciteShape s{N, HW, C, Cr};
    DevMem fws(kestrel::kernels::squeeze_excite_workspace_bytes(s)),
        bws(kestrel::kernels::squeeze_excite_backward_workspace_bytes(s));
    auto forward = [&] {
      KESTREL_CUDA_CHECK(kestrel::kernels::squeeze_excite_forward(KDType::F16, KDType::F32, s, KAct::ReLU,
                                                                  KAct::Sigmoid, x.p, w1.p, b1.p, w2.p, b2.p, y.p,
                                                                  fws.p, nullptr));
    };
    forward();
    run_timed(state, bytes, [&] {
      if (!backward) return forward();
      KESTREL_CUDA_CHECK(kestrel::kernels::squeeze_excite_backward(
          KDType::F16, KDType::F32, s, KAct::ReLU, KAct::Sigmoid, dy.p, x.p, w1.p, w2.p, b2.p, fws.p, y.p, dw1.p,
          db1.p, dw2.p, db2.p, bws.p, nullptr));
    });
    return;
  }
  // Unfused: f16 everywhere, small tensors [N, C] / [N, Cr] as NHWC [N, C, 1, 1].
  Descs d;
  const auto tx = d.nhwc(N, C, l.H, l.W), tnc = d.nhwc(N, C, 1, 1), tnr = d.nhwc(N, Cr, 1, 1),
             tc = d.nhwc(1, C, 1, 1), tr = d.nhwc(1, Cr, 1, 1);
  DevMem pooled(size_t(N) * C * 2), hid(size_t(N) * Cr * 2), act(size_t(N) * Cr * 2), z(size_t(N) * C * 2),
      sc(size_t(N) * C * 2), tmp(n * 2), ds(size_t(N) * C * 2), dz(size_t(N) * C * 2), dh(size_t(N) * Cr * 2),
      dp(size_t(N) * C * 2), hw1(nw * 2), hw2(nw * 2), hb1(Cr * 2), hb2(C * 2), hdw(nw * 2), hdb(C * 2);
  fill(hw1.p, nw * 2);
  fill(hw2.p, nw * 2);
  fill(hb1.p, Cr * 2);
  fill(hb2.p, C * 2);
  DevMem rws(std::max({reduce_workspace(d.mean, tx, tnc), reduce_workspace(d.sum, tx, tnc),
                       reduce_workspace(d.sum, tnc, tc), reduce_workspace(d.sum, tnr, tr)}));
  const size_t rws_bytes = std::max({reduce_workspace(d.mean, tx, tnc), reduce_workspace(d.sum, tx, tnc),
                                     reduce_workspace(d.sum, tnc, tc), reduce_workspace(d.sum, tnr, tr)});
  const float one = 1.f, zero = 0.f, inv_hw = 1.f / static_cast<float>(HW);
  auto reduce = [&](cudnnReduceTensorDescriptor_t r, cudnnTensorDescriptor_t a, const void* ap,
                    cudnnTensorDescriptor_t c, void* cp) {
    CUDNN_CHECK(cudnnReduceTensor(g_cudnn, r, nullptr, 0, rws.p, rws_bytes, &one, a, ap, &zero, c, cp));
  };
  auto forward = [&] {
    reduce(d.mean, tx, x.p, tnc, pooled.p);
    gemm_f16(true, false, Cr, N, C, hw1.p, C, pooled.p, C, hid.p, Cr);  // hidden [N, Cr]
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tr, hb1.p, &one, tnr, hid.p));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d.relu, &one, tnr, hid.p, &zero, tnr, act.p));
    gemm_f16(true, false, C, N, Cr, hw2.p, Cr, act.p, Cr, z.p, C);  // z [N, C]
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &one, tc, hb2.p, &one, tnc, z.p));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d.sigmoid, &one, tnc, z.p, &zero, tnc, sc.p));
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d.mul, &one, tx, x.p, &one, tnc, sc.p, &zero, tx, y.p));
  };
  forward();
  run_timed(state, bytes, [&] {
    if (!backward) return forward();
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d.mul, &one, tx, dy.p, &one, tx, x.p, &zero, tx, tmp.p));
    reduce(d.sum, tx, tmp.p, tnc, ds.p);
    CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d.sigmoid, &one, tnc, sc.p, tnc, ds.p, tnc, z.p, &zero, tnc, dz.p));
    reduce(d.sum, tnc, dz.p, tc, hdb.p);                              // db2
    gemm_f16(false, true, Cr, C, N, act.p, Cr, dz.p, C, hdw.p, Cr);   // dw2 [C, Cr]
    gemm_f16(false, false, Cr, N, C, hw2.p, Cr, dz.p, C, dh.p, Cr);   // da [N, Cr]
    CUDNN_CHECK(cudnnActivationBackward(g_cudnn, d.relu, &one, tnr, act.p, tnr, dh.p, tnr, hid.p, &zero, tnr, dh.p));
    reduce(d.sum, tnr, dh.p, tr, hdb.p);                              // db1
    gemm_f16(false, true, C, Cr, N, pooled.p, C, dh.p, Cr, hdw.p, C);  // dw1 [Cr, C]
    gemm_f16(false, false, C, N, Cr, hw1.p, C, dh.p, Cr, dp.p, C);    // dpooled [N, C]
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d.mul, &one, tx, dy.p, &one, tnc, sc.p, &zero, tx, tmp.p));
    CUDNN_CHECK(cudnnAddTensor(g_cudnn, &inv_hw, tnc, dp.p, &one, tx, tmp.p));
  });
}

void bm_coord_attention(benchmark::State& state, GateLayer l, bool backward) {
  const int N = l.N, H = l.H, W = l.W, C = l.C, mip = l.Cr;
  const size_t n = size_t(N) * H * W * C, nw = size_t(C) * mip;
  DevMem x(n * 2), y(n * 2), dy(n * 2), w1(nw * 4), b1(mip * 4), wh(nw * 4), bh(C * 4), ww(nw * 4), bw(C * 4),
      dw1(nw * 4), db1(mip * 4), dwh(nw * 4), dbh(C * 4), dww(nw * 4), dbw(C * 4);
  fill(x.p, n * 2);
  fill(dy.p, n * 2);
  for (const DevMem* m : {&w1, &wh, &ww}) fill(m->p, nw * 4);
  fill(b1.p, mip * 4);
  fill(bh.p, C * 4);
  fill(bw.p, C * 4);
  const double bytes = 2.0 * static_cast<double>(backward ? 3 * n : 2 * n);
  const kestrel::kernels::CoordAttentionShape s{N, H, W, C, mip};
  DevMem fws(kestrel::kernels::coord_attention_workspace_bytes(s)),
      bws(kestrel::kernels::coord_attention_backward_workspace_bytes(s));
  auto forward = [&] {
    KESTREL_CUDA_CHECK(kestrel::kernels::coord_attention_forward(KDType::F16, KDType::F32, s, KAct::HardSwish, x.p,
                                                                 w1.p, b1.p, wh.p, bh.p, ww.p, bw.p, y.p, fws.p,
                                                                 nullptr));
  };
  forward();
  run_timed(state, bytes, [&] {
    if (!backward) return forward();
    KESTREL_CUDA_CHECK(kestrel::kernels::coord_attention_backward(
        KDType::F16, KDType::F32, s, KAct::HardSwish, dy.p, x.p, w1.p, wh.p, ww.p, fws.p, y.p, dw1.p, db1.p, dwh.p,
        dbh.p, dww.p, dbw.p, bws.p, nullptr));
  });
}

// Unfused coordinate-attention forward: two directional means (cuDNN), the
// shared transform and the gate GEMMs per direction (cuBLAS), activations,
// two broadcast multiplies. (No unfused backward baseline yet.)
void bm_coord_attention_unfused_forward(benchmark::State& state, GateLayer l) {
  const int N = l.N, H = l.H, W = l.W, C = l.C, mip = l.Cr;
  const size_t n = size_t(N) * H * W * C, nw = size_t(C) * mip;
  DevMem x(n * 2), y(n * 2), ph(size_t(N) * H * C * 2), pw(size_t(N) * W * C * 2), th(size_t(N) * H * mip * 2),
      tw(size_t(N) * W * mip * 2), ah(size_t(N) * H * C * 2), aw(size_t(N) * W * C * 2), w1(nw * 2), wh(nw * 2),
      ww(nw * 2);
  fill(x.p, n * 2);
  for (const DevMem* m : {&w1, &wh, &ww}) fill(m->p, nw * 2);
  Descs d;
  const auto tx = d.nhwc(N, C, H, W), th_d = d.nhwc(N, C, H, 1), tw_d = d.nhwc(N, C, 1, W),
             tth = d.nhwc(N, mip, H, 1), ttw = d.nhwc(N, mip, 1, W);
  const size_t rws_bytes = std::max(reduce_workspace(d.mean, tx, th_d), reduce_workspace(d.mean, tx, tw_d));
  DevMem rws(rws_bytes);
  const float one = 1.f, zero = 0.f;
  run_timed(state, 2.0 * 2 * static_cast<double>(n), [&] {
    CUDNN_CHECK(cudnnReduceTensor(g_cudnn, d.mean, nullptr, 0, rws.p, rws_bytes, &one, tx, x.p, &zero, th_d, ph.p));
    CUDNN_CHECK(cudnnReduceTensor(g_cudnn, d.mean, nullptr, 0, rws.p, rws_bytes, &one, tx, x.p, &zero, tw_d, pw.p));
    gemm_f16(true, false, mip, N * H, C, w1.p, C, ph.p, C, th.p, mip);
    gemm_f16(true, false, mip, N * W, C, w1.p, C, pw.p, C, tw.p, mip);
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d.relu, &one, tth, th.p, &zero, tth, th.p));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d.relu, &one, ttw, tw.p, &zero, ttw, tw.p));
    gemm_f16(true, false, C, N * H, mip, wh.p, mip, th.p, mip, ah.p, C);
    gemm_f16(true, false, C, N * W, mip, ww.p, mip, tw.p, mip, aw.p, C);
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d.sigmoid, &one, th_d, ah.p, &zero, th_d, ah.p));
    CUDNN_CHECK(cudnnActivationForward(g_cudnn, d.sigmoid, &one, tw_d, aw.p, &zero, tw_d, aw.p));
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d.mul, &one, tx, x.p, &one, th_d, ah.p, &zero, tx, y.p));
    CUDNN_CHECK(cudnnOpTensor(g_cudnn, d.mul, &one, tx, y.p, &one, tw_d, aw.p, &zero, tx, y.p));
  });
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

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (!kestrel::cuda::cuda_available()) {
    std::printf("bench_kernels: skipped, no usable CUDA device (%s)\n", kestrel::cuda::unavailable_reason().c_str());
    return 0;
  }
  CUDNN_CHECK(cudnnCreate(&g_cudnn));
  g_copy_gbps = measure_copy_bandwidth();
  benchmark::AddCustomContext("copy_gbps", std::to_string(g_copy_gbps));
  benchmark::AddCustomContext("device", kestrel::cuda::device_name(0));
  std::printf("device: %s; measured device-to-device copy bandwidth: %.0f GB/s; cuDNN %zu\n",
              kestrel::cuda::device_name(0).c_str(), g_copy_gbps, cudnnGetVersion());
  for (const Layer& l : kLayers) {
    for (Dir d : {Dir::Fwd, Dir::BwdData, Dir::BwdWeight})
      for (bool cudnn : {false, true}) {
        const std::string name = std::string("depthwise_") + dir_name(d) + "/" + (cudnn ? "cudnn" : "kestrel") + "/" +
                                 layer_name(l);
        benchmark::RegisterBenchmark(name.c_str(), bm_depthwise, l, d, cudnn)->UseManualTime()->Unit(benchmark::kMicrosecond);
      }
    if (l.stride == 1) {
      for (bool bwd : {false, true})
        for (bool cudnn : {false, true}) {
          const std::string name = std::string("bn_relu_") + (bwd ? "bwd" : "fwd") + "/" +
                                   (cudnn ? "cudnn" : "kestrel") + "/" + layer_name(l);
          benchmark::RegisterBenchmark(name.c_str(), bm_bn_relu, l, bwd, cudnn)->UseManualTime()->Unit(benchmark::kMicrosecond);
        }
    }
  }
  CUBLAS_CHECK(cublasCreate(&g_cublas));
  for (const GateLayer& l : kSeLayers)
    for (bool bwd : {false, true})
      for (bool unfused : {false, true}) {
        const std::string name = std::string("squeeze_excite_") + (bwd ? "bwd" : "fwd") + "/" +
                                 (unfused ? "cudnn+cublas" : "kestrel") + "/" + gate_layer_name(l, "r");
        benchmark::RegisterBenchmark(name.c_str(), bm_squeeze_excite, l, bwd, unfused)
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
  for (const GateLayer& l : kCaLayers) {
    for (bool bwd : {false, true}) {
      const std::string name =
          std::string("coord_attention_") + (bwd ? "bwd" : "fwd") + "/kestrel/" + gate_layer_name(l, "mip");
      benchmark::RegisterBenchmark(name.c_str(), bm_coord_attention, l, bwd)->UseManualTime()->Unit(benchmark::kMicrosecond);
    }
    const std::string name = "coord_attention_fwd/cudnn+cublas/" + gate_layer_name(l, "mip");
    benchmark::RegisterBenchmark(name.c_str(), bm_coord_attention_unfused_forward, l)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
  CopyBandwidthReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  cublasDestroy(g_cublas);
  cudnnDestroy(g_cudnn);
  return 0;
}
