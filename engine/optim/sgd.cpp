#include "engine/optim/sgd.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/cpu/parallel.h"
#include "engine/gpu/optim.h"
#include "engine/ops/check.h"

namespace kestrel::optim {

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions o) : Optimizer(std::move(groups), o.lr), opts_(o) {
  KCHECK(std::isfinite(o.momentum) && o.momentum >= 0.0, ValueError, "SGD: momentum must be >= 0, got ", o.momentum);
  KCHECK(std::isfinite(o.dampening), ValueError, "SGD: dampening must be finite, got ", o.dampening);
  KCHECK(!o.nesterov || (o.momentum > 0.0 && o.dampening == 0.0), ValueError,
         "SGD: Nesterov momentum needs momentum > 0 and dampening 0 (momentum ", o.momentum, ", dampening ",
         o.dampening, ")");
  init_params(o.weight_decay);
}

namespace {

// One pass over the tensor: reads p, g (and buf), writes p (and buf).
template <typename T>
void sgd_update(T* p, const T* g, T* buf, bool first, int64_t n, double lr_d, double wd_d, double mom_d,
                double damp_d, bool nesterov) {
  const T lr = static_cast<T>(lr_d), wd = static_cast<T>(wd_d), mom = static_cast<T>(mom_d);
  const T keep = static_cast<T>(1.0 - damp_d);
  if (buf == nullptr) {
    cpu::parallel_for(n, n > 32768, [&](int64_t i) {
      const T d = g[i] + wd * p[i];
      p[i] -= lr * d;
    });
    return;
  }
  cpu::parallel_for(n, n > 32768, [&](int64_t i) {
    const T d = g[i] + wd * p[i];
    const T b = first ? d : mom * buf[i] + keep * d;
    buf[i] = b;
    p[i] -= lr * (nesterov ? d + mom * b : b);
  });
}

}  // namespace

void SGD::step() {
  NoGradGuard guard;
  std::vector<gpu::SgdParamUpdate> on_cuda;  // updated together after the loop, in few launches
  for (size_t i = 0; i < flat_.size(); ++i) {
    ParamRef& r = flat_[i];
    Tensor g = grad_for_update(r.param, "SGD.step");
    if (!g.defined()) continue;
    Tensor* buf = nullptr;
    bool first = false;
    if (opts_.momentum != 0.0) {
      Tensor& b = state_tensors_[i]["momentum_buffer"];
      if (!b.defined()) {
        b = Tensor::empty(r.param.shape(), r.param.dtype(), r.param.device());
        first = true;
      }
      buf = &b;
    }
    const double lr = lr_ * r.lr_scale;
    if constexpr (kHaveCuda) {
      if (r.param.device().is_cuda()) {
        on_cuda.push_back({r.param, g, buf ? *buf : Tensor(), first, lr, r.weight_decay});
        continue;
      }
    }
    dispatch_float(r.param.dtype(), "SGD.step", [&](auto tag) {
      using T = KESTREL_SCALAR(tag);
      sgd_update<T>(r.param.data<T>(), g.data<T>(), buf ? buf->data<T>() : nullptr, first, r.param.numel(), lr,
                    r.weight_decay, opts_.momentum, opts_.dampening, opts_.nesterov);
    });
  }
  if constexpr (kHaveCuda) {
    if (!on_cuda.empty()) gpu::sgd_step(on_cuda, opts_.momentum, opts_.dampening, opts_.nesterov);
  }
}

}  // namespace kestrel::optim
