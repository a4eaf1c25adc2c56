// The cuDNN calls Kestrel makes, for the CPU emulator: 4-d tensor, filter and
// 2-d convolution descriptors (NCHW or NHWC, groups, dilation) and the three
// convolution directions as plain loops with f64 accumulation. Two algorithms
// are offered, computing alike: deterministic, FMA math, no workspace.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "tests/emu/cuda_emu.h"
#include "tests/emu/cudnn_emu.h"

namespace {

using kestrel::emu::kind_of;
using kestrel::emu::blend;
using kestrel::emu::elements;

// The shapes agree: y = conv(x, w) under `conv`.
bool consistent(const cudnnTensorStruct& x, const cudnnFilterStruct& w, const cudnnConvolutionStruct& conv,
                const cudnnTensorStruct& y) {
  if (x.kind < 0 || x.kind != w.kind || x.kind != y.kind || conv.groups < 1) return false;
  if (x.c != w.c * conv.groups || w.k % conv.groups != 0 || y.c != w.k || y.n != x.n) return false;
  const int oh = (x.h + 2 * conv.pad_h - conv.dil_h * (w.h - 1) - 1) / conv.stride_h + 1;
  const int ow = (x.w + 2 * conv.pad_w - conv.dil_w * (w.w - 1) - 1) / conv.stride_w + 1;
  return y.h == oh && y.w == ow;
}

// Calls f(x index, w index, y index) for every multiply of the convolution.
template <typename F>
void for_each_tap(const cudnnTensorStruct& x, const cudnnFilterStruct& w, const cudnnConvolutionStruct& conv,
                  const cudnnTensorStruct& y, F&& f) {
  const int k_per_group = w.k / conv.groups;
  for (int n = 0; n < y.n; ++n)
    for (int oh = 0; oh < y.h; ++oh)
      for (int ow = 0; ow < y.w; ++ow)
        for (int k = 0; k < w.k; ++k) {
          const int c0 = (k / k_per_group) * w.c;
          const int64_t yi = y.index(n, k, oh, ow);
          for (int r = 0; r < w.h; ++r) {
            const int ih = oh * conv.stride_h - conv.pad_h + r * conv.dil_h;
            if (ih < 0 || ih >= x.h) continue;
            const int fr = conv.mode == CUDNN_CONVOLUTION ? w.h - 1 - r : r;
            for (int s = 0; s < w.w; ++s) {
              const int iw = ow * conv.stride_w - conv.pad_w + s * conv.dil_w;
              if (iw < 0 || iw >= x.w) continue;
              const int fs = conv.mode == CUDNN_CONVOLUTION ? w.w - 1 - s : s;
              for (int c = 0; c < w.c; ++c) f(x.index(n, c0 + c, ih, iw), w.index(k, c, fr, fs), yi);
            }
          }
        }
}

size_t elements(const cudnnFilterStruct& f) { return static_cast<size_t>(f.k) * f.c * f.h * f.w; }

// Two algorithms (0 and 1) that compute alike, so that a caller's fallback
// from a refused one can be tested.
template <typename Perf>
cudnnStatus_t two_algorithms(int requested, int* returned, Perf* perf) {
  if (requested < 1) return CUDNN_STATUS_BAD_PARAM;
  *returned = std::min(requested, 2);
  for (int i = 0; i < *returned; ++i) {
    perf[i] = Perf{};
    perf[i].algo = static_cast<decltype(perf[i].algo)>(i);
    perf[i].status = CUDNN_STATUS_SUCCESS;
    perf[i].determinism = CUDNN_DETERMINISTIC;
    perf[i].mathType = CUDNN_FMA_MATH;
  }
  return CUDNN_STATUS_SUCCESS;
}

// KESTREL_EMU_CUDNN_REFUSE_ALGO=N: running algorithm N returns "not supported",
// as real cuDNN does for a ranked algorithm that cannot take the shape.
bool refused(int algo) {
  const char* v = std::getenv("KESTREL_EMU_CUDNN_REFUSE_ALGO");
  return v != nullptr && *v != '\0' && std::atoi(v) == algo;
}

// Find*Ex's operands: present (a workspace when sized), the output then
// overwritten with NaN, as real timing runs leave it holding some run's result.
cudnnStatus_t timed_on(const void* a, const void* b, void* out, int kind, size_t count, const void* ws,
                       size_t ws_bytes) {
  if (a == nullptr || b == nullptr || out == nullptr || (ws == nullptr && ws_bytes > 0)) return CUDNN_STATUS_BAD_PARAM;
  const double one = 1.0, zero = 0.0;
  const float one_f = 1.0f, zero_f = 0.0f;
  const bool f64 = kind == kestrel::emu::kF64;
  blend(out, kind, std::vector<double>(count, std::nan("")), f64 ? static_cast<const void*>(&one) : &one_f,
        f64 ? static_cast<const void*>(&zero) : &zero_f);
  return CUDNN_STATUS_SUCCESS;
}

// Queues one convolution direction on the handle's stream (recorded when it
// captures): descriptors and scalars by value, as cuDNN reads them at the call.
// tap(x index, w index, y index, operands, accumulator) adds one product.
template <typename Tap>
cudnnStatus_t queue_convolution(cudnnHandle_t handle, const cudnnTensorStruct& x, const cudnnFilterStruct& w,
                                const cudnnConvolutionStruct& conv, const cudnnTensorStruct& y, int out_kind,
                                size_t out_count, const void* alpha, const void* beta, void* out, Tap tap) {
  const double a = kestrel::emu::scalar(alpha, out_kind), b = kestrel::emu::scalar(beta, out_kind);
  const cudaError_t queued = kestrel::emu::enqueue(handle->stream, [=] {
    std::vector<double> acc(out_count, 0.0);
    for_each_tap(x, w, conv, y, [&](int64_t xi, int64_t wi, int64_t yi) { tap(xi, wi, yi, acc); });
    blend(out, out_kind, acc, a, b);
  });
  return queued == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}

// Find*Ex runs and times kernels, waiting for them: refused on a capturing stream.
bool capturing(cudnnHandle_t handle) { return kestrel::emu::capturing(handle->stream); }

}  // namespace

extern "C" {

cudnnStatus_t cudnnCreate(cudnnHandle_t* handle) {
  *handle = new cudnnContext;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
  delete handle;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  return CUDNN_STATUS_SUCCESS;
}

const char* cudnnGetErrorString(cudnnStatus_t status) {
  switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM (emulator: inconsistent descriptors)";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED (emulator)";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED (emulator: refused during a capture)";
    case CUDNN_STATUS_NOT_SUPPORTED_SHAPE: return "CUDNN_STATUS_NOT_SUPPORTED_SHAPE (emulator: KESTREL_EMU_CUDNN_REFUSE_ALGO)";
    default: return "a cuDNN status the emulator does not model";
  }
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) {
  *d = new cudnnTensorStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) {
  *d = new cudnnFilterStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  *d = new cudnnConvolutionStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format, cudnnDataType_t type,
                                         int n, int c, int h, int w) {
  if (kind_of(type) < 0) return CUDNN_STATUS_NOT_SUPPORTED;
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnTensorStruct{kind_of(type), format, n, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w) {
  if (kind_of(type) < 0) return CUDNN_STATUS_NOT_SUPPORTED;
  if (k <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnFilterStruct{kind_of(type), format, k, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dil_h, int dil_w, cudnnConvolutionMode_t mode, cudnnDataType_t) {
  if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0) return CUDNN_STATUS_BAD_PARAM;
  d->pad_h = pad_h;
  d->pad_w = pad_w;
  d->stride_h = u;
  d->stride_w = v;
  d->dil_h = dil_h;
  d->dil_w = dil_w;
  d->mode = mode;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int groups) {
  if (groups < 1) return CUDNN_STATUS_BAD_PARAM;
  d->groups = groups;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t, cudnnMathType_t) {
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t,
                                                     const cudnnFilterDescriptor_t, const cudnnConvolutionDescriptor_t,
                                                     const cudnnTensorDescriptor_t, const int requested, int* returned,
                                                     cudnnConvolutionFwdAlgoPerf_t* perf) {
  return two_algorithms(requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, const cudnnFilterDescriptor_t,
                                                          const cudnnTensorDescriptor_t,
                                                          const cudnnConvolutionDescriptor_t,
                                                          const cudnnTensorDescriptor_t, const int requested,
                                                          int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  return two_algorithms(requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t,
                                                            const cudnnTensorDescriptor_t,
                                                            const cudnnConvolutionDescriptor_t,
                                                            const cudnnFilterDescriptor_t, const int requested,
                                                            int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  return two_algorithms(requested, returned, perf);
}

// Find* (measured choice): both algorithms, "timed" at zero.
cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t, const cudnnTensorDescriptor_t,
                                                   const cudnnFilterDescriptor_t, const cudnnConvolutionDescriptor_t,
                                                   const cudnnTensorDescriptor_t, const int requested, int* returned,
                                                   cudnnConvolutionFwdAlgoPerf_t* perf) {
  return two_algorithms(requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t, const cudnnFilterDescriptor_t,
                                                        const cudnnTensorDescriptor_t,
                                                        const cudnnConvolutionDescriptor_t,
                                                        const cudnnTensorDescriptor_t, const int requested,
                                                        int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  return two_algorithms(requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(cudnnHandle_t, const cudnnTensorDescriptor_t,
                                                          const cudnnTensorDescriptor_t,
                                                          const cudnnConvolutionDescriptor_t,
                                                          const cudnnFilterDescriptor_t, const int requested,
                                                          int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  return two_algorithms(requested, returned, perf);
}

// Find*Ex (measured on the caller's operands): both algorithms; the output is
// overwritten with NaN (timed_on), so a caller that hands its real output (a
// bias to accumulate onto) is caught.
cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xd, const void* x,
                                                     const cudnnFilterDescriptor_t wd, const void* w,
                                                     const cudnnConvolutionDescriptor_t conv,
                                                     const cudnnTensorDescriptor_t yd, void* y, const int requested,
                                                     int* returned, cudnnConvolutionFwdAlgoPerf_t* perf, void* ws,
                                                     size_t ws_bytes) {
  if (capturing(handle)) return CUDNN_STATUS_EXECUTION_FAILED;
  if (!consistent(*xd, *wd, *conv, *yd)) return CUDNN_STATUS_BAD_PARAM;
  const cudnnStatus_t s = timed_on(x, w, y, yd->kind, elements(*yd), ws, ws_bytes);
  return s != CUDNN_STATUS_SUCCESS ? s : two_algorithms(requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t handle, const cudnnFilterDescriptor_t wd,
                                                          const void* w, const cudnnTensorDescriptor_t dyd,
                                                          const void* dy, const cudnnConvolutionDescriptor_t conv,
                                                          const cudnnTensorDescriptor_t dxd, void* dx,
                                                          const int requested, int* returned,
                                                          cudnnConvolutionBwdDataAlgoPerf_t* perf, void* ws,
                                                          size_t ws_bytes) {
  if (capturing(handle)) return CUDNN_STATUS_EXECUTION_FAILED;
  if (!consistent(*dxd, *wd, *conv, *dyd)) return CUDNN_STATUS_BAD_PARAM;
  const cudnnStatus_t s = timed_on(w, dy, dx, dxd->kind, elements(*dxd), ws, ws_bytes);
  return s != CUDNN_STATUS_SUCCESS ? s : two_algorithms(requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xd,
                                                            const void* x, const cudnnTensorDescriptor_t dyd,
                                                            const void* dy, const cudnnConvolutionDescriptor_t conv,
                                                            const cudnnFilterDescriptor_t dwd, void* dw,
                                                            const int requested, int* returned,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t* perf, void* ws,
                                                            size_t ws_bytes) {
  if (capturing(handle)) return CUDNN_STATUS_EXECUTION_FAILED;
  if (!consistent(*xd, *dwd, *conv, *dyd)) return CUDNN_STATUS_BAD_PARAM;
  const cudnnStatus_t s = timed_on(x, dy, dw, xd->kind, elements(*dwd), ws, ws_bytes);
  return s != CUDNN_STATUS_SUCCESS ? s : two_algorithms(requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t,
                                                      const cudnnFilterDescriptor_t,
                                                      const cudnnConvolutionDescriptor_t,
                                                      const cudnnTensorDescriptor_t, cudnnConvolutionFwdAlgo_t,
                                                      size_t* bytes) {
  *bytes = 0;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, const cudnnFilterDescriptor_t,
                                                           const cudnnTensorDescriptor_t,
                                                           const cudnnConvolutionDescriptor_t,
                                                           const cudnnTensorDescriptor_t,
                                                           cudnnConvolutionBwdDataAlgo_t, size_t* bytes) {
  *bytes = 0;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t,
                                                             const cudnnTensorDescriptor_t,
                                                             const cudnnConvolutionDescriptor_t,
                                                             const cudnnFilterDescriptor_t,
                                                             cudnnConvolutionBwdFilterAlgo_t, size_t* bytes) {
  *bytes = 0;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void* alpha, const cudnnTensorDescriptor_t xd,
                                      const void* x, const cudnnFilterDescriptor_t wd, const void* w,
                                      const cudnnConvolutionDescriptor_t conv, cudnnConvolutionFwdAlgo_t algo, void*,
                                      size_t, const void* beta, const cudnnTensorDescriptor_t yd, void* y) {
  if (!consistent(*xd, *wd, *conv, *yd)) return CUDNN_STATUS_BAD_PARAM;
  if (refused(algo)) return CUDNN_STATUS_NOT_SUPPORTED_SHAPE;
  const int t = xd->kind;
  return queue_convolution(handle, *xd, *wd, *conv, *yd, t, elements(*yd), alpha, beta, y,
                           [=](int64_t xi, int64_t wi, int64_t yi, std::vector<double>& acc) {
                             acc[yi] += kestrel::emu::load_element(x, t, xi) * kestrel::emu::load_element(w, t, wi);
                           });
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void* alpha, const cudnnFilterDescriptor_t wd,
                                           const void* w, const cudnnTensorDescriptor_t dyd, const void* dy,
                                           const cudnnConvolutionDescriptor_t conv, cudnnConvolutionBwdDataAlgo_t algo,
                                           void*, size_t, const void* beta, const cudnnTensorDescriptor_t dxd,
                                           void* dx) {
  if (!consistent(*dxd, *wd, *conv, *dyd)) return CUDNN_STATUS_BAD_PARAM;
  if (refused(algo)) return CUDNN_STATUS_NOT_SUPPORTED_SHAPE;
  const int t = dxd->kind;
  return queue_convolution(handle, *dxd, *wd, *conv, *dyd, t, elements(*dxd), alpha, beta, dx,
                           [=](int64_t xi, int64_t wi, int64_t yi, std::vector<double>& acc) {
                             acc[xi] += kestrel::emu::load_element(dy, t, yi) * kestrel::emu::load_element(w, t, wi);
                           });
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void* alpha, const cudnnTensorDescriptor_t xd,
                                             const void* x, const cudnnTensorDescriptor_t dyd, const void* dy,
                                             const cudnnConvolutionDescriptor_t conv,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void*, size_t, const void* beta,
                                             const cudnnFilterDescriptor_t dwd, void* dw) {
  if (!consistent(*xd, *dwd, *conv, *dyd)) return CUDNN_STATUS_BAD_PARAM;
  if (refused(algo)) return CUDNN_STATUS_NOT_SUPPORTED_SHAPE;
  const int t = xd->kind;
  return queue_convolution(handle, *xd, *dwd, *conv, *dyd, t, elements(*dwd), alpha, beta, dw,
                           [=](int64_t xi, int64_t wi, int64_t yi, std::vector<double>& acc) {
                             acc[wi] += kestrel::emu::load_element(dy, t, yi) * kestrel::emu::load_element(x, t, xi);
                           });
}

}  // extern "C"
