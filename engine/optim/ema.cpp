#include "engine/optim/ema.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "engine/autograd.h"
#include "engine/cpu/parallel.h"
#include "engine/gpu/optim.h"
#include "engine/ops/check.h"

namespace kestrel::optim {

namespace {

nn::NamedTensors params_and_buffers(const nn::Module& model) {
  nn::NamedTensors all = model.named_parameters();
  for (auto& nt : model.named_buffers()) all.push_back(nt);
  return all;
}

template <typename T>
void lerp_into(T* e, const T* m, int64_t n, double weight) {
  const T w = static_cast<T>(weight);
  cpu::parallel_for(n, n > 32768, [&](int64_t i) { e[i] = e[i] + w * (m[i] - e[i]); });
}

}  // namespace

ModelEma::ModelEma(const nn::Module& model, EmaOptions o) : opts_(o) {
  KCHECK(o.decay >= 0.0 && o.decay <= 1.0, ValueError, "ModelEma: decay must be in [0, 1], got ", o.decay);
  KCHECK(o.min_decay >= 0.0 && o.min_decay <= 1.0, ValueError, "ModelEma: min_decay must be in [0, 1], got ",
         o.min_decay);
  KCHECK(!o.warmup || o.warmup_gamma > 0.0, ValueError, "ModelEma: warmup_gamma must be > 0, got ", o.warmup_gamma);
  NoGradGuard guard;
  for (const auto& [name, t] : params_and_buffers(model)) {
    Tensor copy = Tensor::empty(t.shape(), t.dtype(), t.device());
    copy.copy_(t);
    ema_.emplace_back(name, copy);
  }
}

double ModelEma::decay_at(int64_t step) const {
  const int64_t s = step - opts_.update_after_step - 1;
  if (s <= 0) return 0.0;
  if (!opts_.warmup) return opts_.decay;
  const double d = 1.0 - std::pow(1.0 + static_cast<double>(s) / opts_.warmup_gamma, -opts_.warmup_power);
  return std::max(std::min(d, opts_.decay), opts_.min_decay);
}

nn::NamedTensors ModelEma::live(const nn::Module& model) const {
  nn::NamedTensors cur = params_and_buffers(model);
  KCHECK(cur.size() == ema_.size(), ValueError, "ModelEma: the model has ", cur.size(),
         " parameters and buffers but the EMA was made from ", ema_.size());
  for (size_t i = 0; i < cur.size(); ++i) {
    KCHECK(cur[i].first == ema_[i].first && cur[i].second.shape() == ema_[i].second.shape() &&
               cur[i].second.dtype() == ema_[i].second.dtype(),
           ValueError, "ModelEma: model tensor ", cur[i].first, " ", shape_str(cur[i].second.shape()), " ",
           dtype_name(cur[i].second.dtype()), " does not match EMA tensor ", ema_[i].first, " ",
           shape_str(ema_[i].second.shape()), " ", dtype_name(ema_[i].second.dtype()));
    KCHECK(cur[i].second.device() == ema_[i].second.device(), DeviceError, "ModelEma: model tensor ", cur[i].first,
           " is on ", cur[i].second.device().str(), " but its EMA is on ", ema_[i].second.device().str(),
           " (make the EMA after moving the model)");
  }
  return cur;
}

void ModelEma::update(const nn::Module& model) {
  ++updates_;
  update_with_decay(model, decay_at(updates_));
}

void ModelEma::update_with_decay(const nn::Module& model, double decay) {
  KCHECK(decay >= 0.0 && decay <= 1.0, ValueError, "ModelEma: decay must be in [0, 1], got ", decay);
  const nn::NamedTensors cur = live(model);
  NoGradGuard guard;
  std::vector<Tensor> cuda_ema, cuda_model;  // blended together after the loop, in few launches
  for (size_t i = 0; i < cur.size(); ++i) {
    Tensor& e = ema_[i].second;
    const Tensor m = cur[i].second.contiguous();
    if (e.device().is_cuda() && is_floating(e.dtype())) {
      cuda_ema.push_back(e);
      cuda_model.push_back(m);
      continue;
    }
    if (e.dtype() == DType::F32 || e.dtype() == DType::F64) {
      dispatch_float(e.dtype(), "ModelEma.update", [&](auto tag) {
        using T = KESTREL_SCALAR(tag);
        lerp_into<T>(e.data<T>(), m.data<T>(), e.numel(), 1.0 - decay);
      });
    } else if (is_floating(e.dtype())) {
      // f16/bf16 buffers: blend in f32 and store back rounded.
      Tensor e32 = e.to(DType::F32), m32 = m.to(DType::F32);
      lerp_into<float>(e32.data<float>(), m32.data<float>(), e32.numel(), 1.0 - decay);
      e.copy_(e32);
    } else {
      e.copy_(m);  // counters such as num_batches_tracked
    }
  }
  if constexpr (kHaveCuda) {
    if (!cuda_ema.empty()) gpu::lerp_(cuda_ema, cuda_model, 1.0 - decay);
  }
}

void ModelEma::copy_to(nn::Module& model) const {
  nn::NamedTensors cur = live(model);
  NoGradGuard guard;
  for (size_t i = 0; i < cur.size(); ++i) cur[i].second.copy_(ema_[i].second);
}

void ModelEma::swap_with(nn::Module& model) {
  nn::NamedTensors cur = live(model);
  NoGradGuard guard;
  for (size_t i = 0; i < cur.size(); ++i) {
    Tensor saved = ema_[i].second.clone();
    ema_[i].second.copy_(cur[i].second);
    cur[i].second.copy_(saved);
  }
}

OptimizerState ModelEma::state() const {
  OptimizerState s;
  for (const auto& [name, t] : ema_) s.tensors[name] = t.device().is_cpu() ? t : t.cpu();
  s.scalars["updates"] = static_cast<double>(updates_);
  return s;
}

void ModelEma::load_state(const OptimizerState& s) {
  auto it = s.scalars.find("updates");
  KCHECK(it != s.scalars.end(), ValueError, "ModelEma: state has no 'updates' entry");
  KCHECK(s.tensors.size() == ema_.size(), ValueError, "ModelEma: state holds ", s.tensors.size(),
         " tensors but the model has ", ema_.size(), " parameters and buffers");
  for (const auto& [name, t] : ema_) {
    auto f = s.tensors.find(name);
    KCHECK(f != s.tensors.end(), ValueError, "ModelEma: state has no tensor ", name);
    KCHECK(f->second.shape() == t.shape(), ValueError, "ModelEma: state tensor ", name, " has shape ",
           shape_str(f->second.shape()), " but the model's is ", shape_str(t.shape()));
  }
  NoGradGuard guard;
  for (auto& [name, t] : ema_) t.copy_(s.tensors.at(name));
  updates_ = static_cast<int64_t>(it->second);
}

}  // namespace kestrel::optim
