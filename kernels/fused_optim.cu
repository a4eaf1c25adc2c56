// Multi-tensor SGD-momentum, AdamW and RMSprop; see fused_optim.h.
//
// Proof: tests/test_cuda_kernels.cpp runs three steps over a list of tensors
// of odd sizes (1, 7, 33, 70001) against a CPU loop written from the PyTorch
// formulas (SGD and AdamW); tests/test_cuda_train.cpp steps each optimizer
// against its CPU path (RMSprop there only). Napkin math: AdamW reads p, g, m, v and writes p, m, v:
// 7 * 4 bytes per f32 parameter (6 * 4 + 2 with f16 grads).
#include "kernels/fused_optim.h"

#include <cmath>

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 8192;  // elements per block
constexpr int kMaxBlocks = 320;

template <int NPtr>
struct TensorTable {
  void* ptr[NPtr][kOptimTensorsPerLaunch];
  int64_t size[kOptimTensorsPerLaunch];
  unsigned char block_tensor[kMaxBlocks];
  int block_chunk[kMaxBlocks];
};

// This block's tensor and its chunk [begin, end) of that tensor's elements.
struct BlockSpan {
  int tensor;
  int64_t begin, end;
};

template <int NPtr>
__device__ BlockSpan block_span(const TensorTable<NPtr>& tt) {
  const int ti = tt.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(tt.block_chunk[blockIdx.x]) * kChunk;
  return {ti, begin, min(tt.size[ti], begin + kChunk)};
}

template <typename G>
__global__ void __launch_bounds__(kThreads) sgd_kernel(TensorTable<3> tt, SgdArgs a, const int* skip) {
  if (skip != nullptr && *skip != 0) return;
  const BlockSpan span = block_span(tt);
  const int ti = span.tensor;
  const int64_t beg = span.begin, end = span.end;
  float* p = static_cast<float*>(tt.ptr[0][ti]);
  const G* g = static_cast<const G*>(tt.ptr[1][ti]);
  float* buf = static_cast<float*>(tt.ptr[2][ti]);
  for (int64_t i = beg + threadIdx.x; i < end; i += blockDim.x) {
    const float pv = p[i];
    float d = to_f32(g[i]) * a.grad_scale;
    if (a.weight_decay != 0.f) d = fmaf(a.weight_decay, pv, d);
    if (a.momentum != 0.f) {
      const float b = a.first_step ? d : fmaf(a.momentum, buf[i], (1.f - a.dampening) * d);
      buf[i] = b;
      d = a.nesterov ? fmaf(a.momentum, b, d) : b;
    }
    p[i] = pv - a.lr * d;
  }
}

// Per-step scalars derived from AdamWArgs on the host.
struct AdamWScalars {
  float step_size = 0.f;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt = 1.f;  // sqrt(1 - beta2^t)
  float decay = 1.f;                  // 1 - lr * weight_decay
};

template <typename G>
__global__ void __launch_bounds__(kThreads) adamw_kernel(TensorTable<4> tt, AdamWArgs a, AdamWScalars s,
                                                         const int* skip) {
  if (skip != nullptr && *skip != 0) return;
  const BlockSpan span = block_span(tt);
  const int ti = span.tensor;
  const int64_t beg = span.begin, end = span.end;
  float* p = static_cast<float*>(tt.ptr[0][ti]);
  const G* g = static_cast<const G*>(tt.ptr[1][ti]);
  float* m = static_cast<float*>(tt.ptr[2][ti]);
  float* v = static_cast<float*>(tt.ptr[3][ti]);
  const float w1 = 1.f - a.beta1, w2 = 1.f - a.beta2;
  for (int64_t i = beg + threadIdx.x; i < end; i += blockDim.x) {
    const float gv = to_f32(g[i]) * a.grad_scale;
    // Same expression order as the CPU loop (engine/optim/adamw.cpp).
    const float mv = m[i] + w1 * (gv - m[i]);
    const float vv = a.beta2 * v[i] + w2 * gv * gv;
    m[i] = mv;
    v[i] = vv;
    const float denom = sqrtf(vv) / s.bias_correction2_sqrt + a.eps;
    p[i] = p[i] * s.decay - s.step_size * mv / denom;
  }
}

template <typename G>
__global__ void __launch_bounds__(kThreads) rmsprop_kernel(TensorTable<4> tt, RMSpropArgs a, const int* skip) {
  if (skip != nullptr && *skip != 0) return;
  const BlockSpan span = block_span(tt);
  const int ti = span.tensor;
  const int64_t beg = span.begin, end = span.end;
  float* p = static_cast<float*>(tt.ptr[0][ti]);
  const G* g = static_cast<const G*>(tt.ptr[1][ti]);
  float* v = static_cast<float*>(tt.ptr[2][ti]);
  float* buf = static_cast<float*>(tt.ptr[3][ti]);
  const float w = 1.f - a.alpha;
  for (int64_t i = beg + threadIdx.x; i < end; i += blockDim.x) {
    // Same expression order as the CPU loop (engine/optim/rmsprop.cpp).
    const float gv = to_f32(g[i]) * a.grad_scale + a.weight_decay * p[i];
    const float vv = a.alpha * v[i] + w * gv * gv;
    v[i] = vv;
    const float d = gv / (sqrtf(vv) + a.eps);
    if (a.momentum != 0.f) {
      const float b = a.momentum * buf[i] + d;
      buf[i] = b;
      p[i] -= a.lr * b;
    } else {
      p[i] -= a.lr * d;
    }
  }
}

// Walks the tensors, filling tables and launching whenever one is full.
template <int NPtr, typename Launch>
cudaError_t for_each_launch(int count, const void* const* const* lists, const int64_t* sizes, Launch&& launch) {
  TensorTable<NPtr> tt;
  int nt = 0, nb = 0;
  for (int t = 0; t < count; ++t) {
    if (sizes[t] <= 0) continue;
    for (int k = 0; k < NPtr; ++k) tt.ptr[k][nt] = const_cast<void*>(lists[k][t]);
    tt.size[nt] = sizes[t];
    const int64_t chunks = (sizes[t] + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      tt.block_tensor[nb] = static_cast<unsigned char>(nt);
      tt.block_chunk[nb] = static_cast<int>(c);
      ++nb;
      const bool last_chunk = c == chunks - 1;
      if (nb == kMaxBlocks || (last_chunk && nt + 1 == kOptimTensorsPerLaunch)) {
        launch(tt, nb);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
        nb = 0;
        if (!last_chunk) {  // the tensor continues in the next table, at slot 0
          for (int k = 0; k < NPtr; ++k) tt.ptr[k][0] = tt.ptr[k][nt];
          tt.size[0] = tt.size[nt];
          nt = 0;
        } else {
          nt = -1;
        }
      }
    }
    ++nt;
  }
  if (nb > 0) launch(tt, nb);
  return cudaGetLastError();
}

// The launch lambdas switch over the gradient type; an unknown tag must fail
// up front rather than launch nothing and report success.
bool valid_grad_dtype(KDType dt) { return dt == KDType::F32 || dt == KDType::F16 || dt == KDType::BF16; }

}  // namespace

cudaError_t sgd_momentum_multi(KDType grad_dt, int count, float* const* params, const void* const* grads,
                               float* const* momentum_bufs, const int64_t* sizes, const SgdArgs& a,
                               const int* skip_flag, cudaStream_t stream) {
  if (!valid_grad_dtype(grad_dt)) return cudaErrorInvalidValue;
  if (count <= 0) return cudaSuccess;
  const void* const* lists[3] = {reinterpret_cast<const void* const*>(params), grads,
                                 reinterpret_cast<const void* const*>(momentum_bufs)};
  return for_each_launch<3>(count, lists, sizes, [&](const TensorTable<3>& tt, int nb) {
    switch (grad_dt) {
      case KDType::F32: sgd_kernel<float><<<nb, kThreads, 0, stream>>>(tt, a, skip_flag); break;
      case KDType::F16: sgd_kernel<__half><<<nb, kThreads, 0, stream>>>(tt, a, skip_flag); break;
      case KDType::BF16: sgd_kernel<__nv_bfloat16><<<nb, kThreads, 0, stream>>>(tt, a, skip_flag); break;
    }
  });
}

cudaError_t rmsprop_multi(KDType grad_dt, int count, float* const* params, const void* const* grads,
                          float* const* square_avg, float* const* momentum_bufs, const int64_t* sizes,
                          const RMSpropArgs& a, const int* skip_flag, cudaStream_t stream) {
  if (!valid_grad_dtype(grad_dt)) return cudaErrorInvalidValue;
  if (count <= 0) return cudaSuccess;
  const void* const* lists[4] = {reinterpret_cast<const void* const*>(params), grads,
                                 reinterpret_cast<const void* const*>(square_avg),
                                 reinterpret_cast<const void* const*>(momentum_bufs)};
  return for_each_launch<4>(count, lists, sizes, [&](const TensorTable<4>& tt, int nb) {
    switch (grad_dt) {
      case KDType::F32: rmsprop_kernel<float><<<nb, kThreads, 0, stream>>>(tt, a, skip_flag); break;
      case KDType::F16: rmsprop_kernel<__half><<<nb, kThreads, 0, stream>>>(tt, a, skip_flag); break;
      case KDType::BF16: rmsprop_kernel<__nv_bfloat16><<<nb, kThreads, 0, stream>>>(tt, a, skip_flag); break;
    }
  });
}

cudaError_t adamw_multi(KDType grad_dt, int count, float* const* params, const void* const* grads,
                        float* const* exp_avg, float* const* exp_avg_sq, const int64_t* sizes, const AdamWArgs& a,
                        const int* skip_flag, cudaStream_t stream) {
  if (!valid_grad_dtype(grad_dt)) return cudaErrorInvalidValue;
  if (count <= 0) return cudaSuccess;
  if (a.step < 1) return cudaErrorInvalidValue;
  // Step scalars in double, rounded once, as the CPU path and torch do.
  const double t = static_cast<double>(a.step);
  AdamWScalars sc;
  sc.step_size = static_cast<float>(a.lr / (1.0 - std::pow(static_cast<double>(a.beta1), t)));
  sc.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(a.beta2), t)));
  sc.decay = static_cast<float>(1.0 - static_cast<double>(a.lr) * a.weight_decay);
  const void* const* lists[4] = {reinterpret_cast<const void* const*>(params), grads,
                                 reinterpret_cast<const void* const*>(exp_avg),
                                 reinterpret_cast<const void* const*>(exp_avg_sq)};
  return for_each_launch<4>(count, lists, sizes, [&](const TensorTable<4>& tt, int nb) {
    switch (grad_dt) {
      case KDType::F32: adamw_kernel<float><<<nb, kThreads, 0, stream>>>(tt, a, sc, skip_flag); break;
      case KDType::F16: adamw_kernel<__half><<<nb, kThreads, 0, stream>>>(tt, a, sc, skip_flag); break;
      case KDType::BF16: adamw_kernel<__nv_bfloat16><<<nb, kThreads, 0, stream>>>(tt, a, sc, skip_flag); break;
    }
  });
}

}  // namespace kestrel::kernels
