#include "engine/optim/clip.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/cpu/parallel.h"
#include "engine/gpu/optim.h"
#include "engine/ops/check.h"

namespace kestrel::optim {

namespace {

Tensor checked_grad(const Tensor& p) {
  Tensor g = p.grad();
  if (!g.defined()) return g;
  KCHECK(g.is_contiguous(), ValueError, "clip_grad_norm_: gradient of shape ", shape_str(g.shape()),
         " is not contiguous");
  return g;
}

double sum_squares(const Tensor& g) {
  return dispatch_float(g.dtype(), "clip_grad_norm_", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    const T* x = g.data<T>();
    const int64_t n = g.numel();
    double acc = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : acc) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    return acc;
  });
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params) {
  double total = 0.0;
  std::vector<Tensor> on_cuda;  // reduced on the device, one synchronization
  for (const Tensor& p : params) {
    Tensor g = checked_grad(p);
    if (!g.defined()) continue;
    if (g.device().is_cuda())
      on_cuda.push_back(g);
    else
      total += sum_squares(g);
  }
  if constexpr (kHaveCuda) {
    if (!on_cuda.empty()) total += gpu::sum_of_squares(on_cuda);
  }
  return std::sqrt(total);
}

void scale_grads_(const std::vector<Tensor>& params, double factor) {
  NoGradGuard guard;
  std::vector<Tensor> on_cuda;
  for (const Tensor& p : params) {
    Tensor g = checked_grad(p);
    if (!g.defined()) continue;
    if (g.device().is_cuda()) {
      on_cuda.push_back(g);
      continue;
    }
    dispatch_float(g.dtype(), "clip_grad_norm_", [&](auto tag) {
      using T = KESTREL_SCALAR(tag);
      T* x = g.data<T>();
      const T c = static_cast<T>(factor);
      const int64_t n = g.numel();
      cpu::parallel_for(n, n > 32768, [&](int64_t i) { x[i] *= c; });
    });
  }
  if constexpr (kHaveCuda) {
    if (!on_cuda.empty()) gpu::scale_(on_cuda, factor);
  }
}

double clip_coefficient(double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  return !(coef < 1.0) && std::isfinite(norm) ? 1.0 : coef;
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, bool error_if_nonfinite) {
  KCHECK(max_norm >= 0.0, ValueError, "clip_grad_norm_: max_norm must be >= 0, got ", max_norm);
  const double norm = grad_norm(params);
  KCHECK(!error_if_nonfinite || std::isfinite(norm), ValueError, "clip_grad_norm_: the total gradient norm is ", norm,
         " (a NaN or inf gradient)");
  const double coef = clip_coefficient(norm, max_norm);
  if (coef == 1.0) return norm;  // nothing to clip (a factor computed below 1 is never exactly 1)
  scale_grads_(params, coef);
  return norm;
}

Tensor clip_grad_norm_no_sync_(const std::vector<Tensor>& params, double max_norm) {
  KCHECK(max_norm >= 0.0, ValueError, "clip_grad_norm_: max_norm must be >= 0, got ", max_norm);
  if constexpr (kHaveCuda) {
    std::vector<Tensor> grads;
    bool one_cuda_device = true;
    for (const Tensor& p : params) {
      Tensor g = checked_grad(p);
      if (!g.defined()) continue;
      one_cuda_device = one_cuda_device && g.device().is_cuda() && (grads.empty() || g.device() == grads[0].device());
      grads.push_back(g);
    }
    if (one_cuda_device && !grads.empty()) {
      NoGradGuard guard;
      return gpu::clip_by_norm_(grads, max_norm);
    }
  }
  return Tensor::full({1}, clip_grad_norm_(params, max_norm), DType::F64);
}

}  // namespace kestrel::optim
