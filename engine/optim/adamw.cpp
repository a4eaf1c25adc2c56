#include "engine/optim/adamw.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/cpu/parallel.h"
#include "engine/gpu/optim.h"
#include "engine/ops/check.h"

namespace kestrel::optim {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions o) : Optimizer(std::move(groups), o.lr), opts_(o) {
  KCHECK(o.beta1 >= 0.0 && o.beta1 < 1.0, ValueError, "AdamW: beta1 must be in [0, 1), got ", o.beta1);
  KCHECK(o.beta2 >= 0.0 && o.beta2 < 1.0, ValueError, "AdamW: beta2 must be in [0, 1), got ", o.beta2);
  KCHECK(std::isfinite(o.eps) && o.eps >= 0.0, ValueError, "AdamW: eps must be >= 0, got ", o.eps);
  init_params(o.weight_decay);
}

namespace {

// One pass: reads p, g, m, v; writes p, m, v. Scalars are computed in double
// and rounded once to T, as torch does for its Python-float hyperparameters.
// engine/optim is built with -fno-math-errno (CMakeLists.txt) so this loop
// vectorises: v >= 0, so sqrt never sets errno anyway.
template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, double decay_factor, double beta1, double beta2,
                  double step_size, double bc2_sqrt, double eps) {
  const T keep = static_cast<T>(decay_factor);
  const T w1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2), w2 = static_cast<T>(1.0 - beta2);
  const T ss = static_cast<T>(step_size), bc2 = static_cast<T>(bc2_sqrt), e = static_cast<T>(eps);
  cpu::parallel_for(n, n > 32768, [&](int64_t i) {
    const T gi = g[i];
    const T mi = m[i] + w1 * (gi - m[i]);
    const T vi = b2 * v[i] + w2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const T denom = std::sqrt(vi) / bc2 + e;
    p[i] = p[i] * keep - ss * mi / denom;
  });
}

}  // namespace

void AdamW::step() {
  NoGradGuard guard;
  std::vector<gpu::AdamWParamUpdate> on_cuda;  // updated together after the loop, in few launches
  for (size_t i = 0; i < flat_.size(); ++i) {
    ParamRef& r = flat_[i];
    Tensor g = grad_for_update(r.param, "AdamW.step");
    if (!g.defined()) continue;
    Tensor& m = state_tensors_[i]["exp_avg"];
    Tensor& v = state_tensors_[i]["exp_avg_sq"];
    if (!m.defined()) m = Tensor::zeros(r.param.shape(), r.param.dtype(), r.param.device());
    if (!v.defined()) v = Tensor::zeros(r.param.shape(), r.param.dtype(), r.param.device());
    double& t = state_scalars_[i]["step"];
    t += 1.0;
    const double lr = lr_ * r.lr_scale;
    if constexpr (kHaveCuda) {
      if (r.param.device().is_cuda()) {
        on_cuda.push_back({r.param, g, m, v, static_cast<int64_t>(t), lr, r.weight_decay});
        continue;
      }
    }
    const double bc1 = 1.0 - std::pow(opts_.beta1, t);
    const double bc2 = 1.0 - std::pow(opts_.beta2, t);
    const double step_size = lr / bc1;
    const double bc2_sqrt = std::sqrt(bc2);
    const double decay_factor = 1.0 - lr * r.weight_decay;
    dispatch_float(r.param.dtype(), "AdamW.step", [&](auto tag) {
      using T = KESTREL_SCALAR(tag);
      adamw_update<T>(r.param.data<T>(), g.data<T>(), m.data<T>(), v.data<T>(), r.param.numel(), decay_factor,
                      opts_.beta1, opts_.beta2, step_size, bc2_sqrt, opts_.eps);
    });
  }
  if constexpr (kHaveCuda) {
    if (!on_cuda.empty()) gpu::adamw_step(on_cuda, opts_.beta1, opts_.beta2, opts_.eps);
  }
}

}  // namespace kestrel::optim
