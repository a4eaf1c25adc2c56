// Hand-written kernels beside cuDNN's way of doing the same thing, at the
// layer shapes of EMN-Small, EfficientNet-B0 and MobileNetV2 (batch 256 at
// 32x32 and batch 64 at 224x224), f16 NHWC.
//
//   depthwise fwd / bwd-data / bwd-weight  vs  grouped convolution (groups = C),
//                                               algorithm chosen by cudnnFind*
//   batch norm + ReLU fwd (training)       vs  cudnnBatchNormalizationForwardTraining
//                                               + cudnnActivationForward
//   batch norm + ReLU bwd                  vs  cudnnActivationBackward
//                                               + cudnnBatchNormalizationBackward
//
// Napkin math for the counters: bytes = every tensor the op must touch, read
// once or written once (depthwise fwd: x + y; bwd data: dy + dx; bwd weight:
// x + dy; BN fwd: x + y; BN bwd: x + dy + dx; cuDNN's activation reads and
// writes y again but is charged the same minimal bytes). GB/s = bytes / time,
// and pct_copy_bw = GB/s over the device-to-device cudaMemcpy bandwidth
// measured at start-up (2 x bytes copied / time). Times are CUDA-event times
// per launch (manual time). Written and compiled; never run on a GPU yet.
#include <benchmark/benchmark.h>
#include <cudnn.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "kernels/batch_norm_act.h"
#include "kernels/depthwise_conv.h"

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
    fwd = pf[0].algo;
    ws_bytes = std::max(ws_bytes, pf[0].memory);
    cudnnConvolutionBwdDataAlgoPerf_t pd[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(g_cudnn, w, y, conv, x, 8, &n, pd));
    bwd_data = pd[0].algo;
    ws_bytes = std::max(ws_bytes, pd[0].memory);
    cudnnConvolutionBwdFilterAlgoPerf_t pw[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(g_cudnn, x, y, conv, w, 8, &n, pw));
    bwd_filter = pw[0].algo;
    ws_bytes = std::max(ws_bytes, pw[0].memory);
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
  CopyBandwidthReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  cudnnDestroy(g_cudnn);
  return 0;
}
