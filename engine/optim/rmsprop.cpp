#include "engine/optim/rmsprop.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/cpu/parallel.h"
#include "engine/gpu/optim.h"
#include "engine/ops/check.h"

namespace kestrel::optim {

RMSprop::RMSprop(std::vector<ParamGroup> groups, RMSpropOptions o) : Optimizer(std::move(groups), o.lr), opts_(o) {
  KCHECK(o.alpha >= 0.0 && o.alpha < 1.0, ValueError, "RMSprop: alpha must be in [0, 1), got ", o.alpha);
  KCHECK(std::isfinite(o.eps) && o.eps >= 0.0, ValueError, "RMSprop: eps must be >= 0, got ", o.eps);
  KCHECK(std::isfinite(o.momentum) && o.momentum >= 0.0, ValueError, "RMSprop: momentum must be >= 0, got ",
         o.momentum);
  init_params(o.weight_decay);
}

namespace {

// One pass: reads p, g, v (and buf); writes p, v (and buf). engine/optim is
// built with -fno-math-errno, so the sqrt of v >= 0 vectorises.
template <typename T>
void rmsprop_update(T* p, const T* g, T* v, T* buf, int64_t n, double lr_d, double wd_d, double alpha_d,
                    double eps_d, double mom_d) {
  const T lr = static_cast<T>(lr_d), wd = static_cast<T>(wd_d), alpha = static_cast<T>(alpha_d);
  const T w = static_cast<T>(1.0 - alpha_d), eps = static_cast<T>(eps_d), mom = static_cast<T>(mom_d);
  cpu::parallel_for(n, n > 32768, [&](int64_t i) {
    const T gi = g[i] + wd * p[i];
    const T vi = alpha * v[i] + w * gi * gi;
    v[i] = vi;
    const T d = gi / (std::sqrt(vi) + eps);
    if (buf == nullptr) {
      p[i] -= lr * d;
    } else {
      const T b = mom * buf[i] + d;
      buf[i] = b;
      p[i] -= lr * b;
    }
  });
}

}  // namespace

void RMSprop::step() {
  NoGradGuard guard;
  std::vector<gpu::RMSpropParamUpdate> on_cuda;  // updated together after the loop, in few launches
  for (size_t i = 0; i < flat_.size(); ++i) {
    ParamRef& r = flat_[i];
    Tensor g = grad_for_update(r.param, "RMSprop.step");
    if (!g.defined()) continue;
    Tensor& v = state_tensors_[i]["square_avg"];
    if (!v.defined()) v = Tensor::zeros(r.param.shape(), r.param.dtype(), r.param.device());
    Tensor* buf = nullptr;
    if (opts_.momentum != 0.0) {
      Tensor& b = state_tensors_[i]["momentum_buffer"];
      if (!b.defined()) b = Tensor::zeros(r.param.shape(), r.param.dtype(), r.param.device());
      buf = &b;
    }
    const double lr = lr_ * r.lr_scale;
    if constexpr (kHaveCuda) {
      if (r.param.device().is_cuda()) {
        on_cuda.push_back({r.param, g, v, buf ? *buf : Tensor(), lr, r.weight_decay});
        continue;
      }
    }
    dispatch_float(r.param.dtype(), "RMSprop.step", [&](auto tag) {
      using T = KESTREL_SCALAR(tag);
      rmsprop_update<T>(r.param.data<T>(), g.data<T>(), v.data<T>(), buf ? buf->data<T>() : nullptr,
                        r.param.numel(), lr, r.weight_decay, opts_.alpha, opts_.eps, opts_.momentum);
    });
  }
  if constexpr (kHaveCuda) {
    if (!on_cuda.empty()) gpu::rmsprop_step(on_cuda, opts_.alpha, opts_.eps, opts_.momentum);
  }
}

}  // namespace kestrel::optim
