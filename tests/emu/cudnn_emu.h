// The emulated cuDNN's descriptor structs and scalar helpers, shared by its
// convolution (cudnn_emu.cpp) and tensor-op (cudnn_ops_emu.cpp) halves.
#pragma once
#include <cudnn.h>

#include <cstdint>
#include <vector>

#include "tests/emu/element.h"

struct cudnnContext {
  cudaStream_t stream = nullptr;
};

struct cudnnTensorStruct {
  int kind = -1;
  cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
  int n = 0, c = 0, h = 0, w = 0;
  int64_t index(int in, int ic, int ih, int iw) const {
    if (format == CUDNN_TENSOR_NHWC) return ((static_cast<int64_t>(in) * h + ih) * w + iw) * c + ic;
    return ((static_cast<int64_t>(in) * c + ic) * h + ih) * w + iw;
  }
};

struct cudnnFilterStruct {
  int kind = -1;
  cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
  int k = 0, c = 0, h = 0, w = 0;
  int64_t index(int ik, int ic, int ih, int iw) const {
    if (format == CUDNN_TENSOR_NHWC) return ((static_cast<int64_t>(ik) * h + ih) * w + iw) * c + ic;
    return ((static_cast<int64_t>(ik) * c + ic) * h + ih) * w + iw;
  }
};

struct cudnnConvolutionStruct {
  int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1, groups = 1;
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
};

namespace kestrel::emu {

inline int kind_of(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_FLOAT: return kF32;
    case CUDNN_DATA_HALF: return kF16;
    case CUDNN_DATA_BFLOAT16: return kBF16;
    case CUDNN_DATA_DOUBLE: return kF64;
    default: return -1;
  }
}

// alpha/beta scaling factors: double for f64 tensors, float otherwise.
inline double scalar(const void* p, int kind) {
  return kind == kF64 ? *static_cast<const double*>(p) : *static_cast<const float*>(p);
}

// out = a * acc + b * out, leaving out unread when b is 0.
inline void blend(void* out, int kind, const std::vector<double>& acc, double a, double b) {
  for (size_t i = 0; i < acc.size(); ++i) {
    const double old = b == 0.0 ? 0.0 : b * load_element(out, kind, static_cast<int64_t>(i));
    store_element(out, kind, static_cast<int64_t>(i), a * acc[i] + old);
  }
}

inline void blend(void* out, int kind, const std::vector<double>& acc, const void* alpha, const void* beta) {
  blend(out, kind, acc, scalar(alpha, kind), scalar(beta, kind));
}

inline size_t elements(const cudnnTensorStruct& t) { return static_cast<size_t>(t.n) * t.c * t.h * t.w; }
}  // namespace kestrel::emu
