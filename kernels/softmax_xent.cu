// Fused softmax cross-entropy; see softmax_xent.h.
//
// Proof: tests/test_cuda_kernels.cpp against an f64 CPU loop for hard labels
// with and without smoothing, and soft targets, K in {1, 10, 1000, 1001}.
// Napkin math: one block per row reads the row three times (max, sum, grad;
// the second and third from L1/L2) and writes the gradient once.
#include "kernels/softmax_xent.h"

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) softmax_xent_kernel(const T* __restrict__ logits,
                                                                const int32_t* __restrict__ labels,
                                                                const float* __restrict__ soft, int K, float eps,
                                                                float grad_scale, float* __restrict__ loss,
                                                                T* __restrict__ dlogits) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* z = logits + row * K;
  const float* t = soft != nullptr ? soft + row * K : nullptr;
  float m = -INFINITY;
  for (int k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, to_f32(z[k]));
  m = block_max(m, scratch);
  float se = 0.f, sz = 0.f, st = 0.f, stz = 0.f;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = to_f32(z[k]);
    se += __expf(v - m);
    sz += v;
    if (t != nullptr) {
      st += t[k];
      stz = fmaf(t[k], v, stz);
    }
  }
  se = block_sum(se, scratch);
  sz = block_sum(sz, scratch);
  if (t != nullptr) {
    st = block_sum(st, scratch);
    stz = block_sum(stz, scratch);
  }
  const float lse = m + __logf(se);
  int label = -1;
  bool bad = false;
  if (t == nullptr) {
    label = labels[row];
    bad = label < 0 || label >= K;
    st = 1.f;
    stz = bad ? 0.f : (1.f - eps) * to_f32(z[label]) + (eps / K) * sz;
  }
  if (threadIdx.x == 0) loss[row] = bad ? NAN : lse * st - stz;
  if (dlogits == nullptr) return;
  T* g = dlogits + row * K;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float p = __expf(to_f32(z[k]) - lse);
    float tk;
    if (t != nullptr) {
      tk = t[k];
    } else {
      tk = eps / K + (k == label ? 1.f - eps : 0.f);
    }
    g[k] = from_f32<T>(bad ? NAN : (p * st - tk) * grad_scale);
  }
}

}  // namespace

cudaError_t softmax_cross_entropy(KDType dt, const SoftmaxXentShape& s, const void* logits, const int32_t* labels,
                                  const float* soft_targets, float label_smoothing, float grad_scale, float* loss,
                                  void* dlogits, cudaStream_t stream) {
  if (s.B < 1 || s.K < 1 || loss == nullptr || (labels == nullptr && soft_targets == nullptr))
    return cudaErrorInvalidValue;
  switch (dt) {
    case KDType::F32:
      softmax_xent_kernel<float><<<s.B, kThreads, 0, stream>>>(static_cast<const float*>(logits), labels,
                                                               soft_targets, s.K, label_smoothing, grad_scale, loss,
                                                               static_cast<float*>(dlogits));
      break;
    case KDType::F16:
      softmax_xent_kernel<__half><<<s.B, kThreads, 0, stream>>>(static_cast<const __half*>(logits), labels,
                                                                soft_targets, s.K, label_smoothing, grad_scale, loss,
                                                                static_cast<__half*>(dlogits));
      break;
    case KDType::BF16:
      softmax_xent_kernel<__nv_bfloat16><<<s.B, kThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(logits), labels, soft_targets, s.K, label_smoothing, grad_scale, loss,
          static_cast<__nv_bfloat16*>(dlogits));
      break;
  }
  return cudaGetLastError();
}

}  // namespace kestrel::kernels
