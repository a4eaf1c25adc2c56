#include "engine/optim/optimizer.h"

#include <cmath>
#include <set>

#include "engine/autograd.h"

namespace kestrel::optim {

std::vector<ParamGroup> decay_groups(const nn::NamedTensors& named_params, double weight_decay) {
  ParamGroup decay, no_decay;
  decay.weight_decay = weight_decay;
  no_decay.weight_decay = 0.0;
  for (const auto& [name, t] : named_params) (t.dim() >= 2 ? decay : no_decay).params.push_back(t);
  std::vector<ParamGroup> out;
  if (!decay.params.empty()) out.push_back(decay);
  if (!no_decay.params.empty()) out.push_back(no_decay);
  return out;
}

nn::NamedTensors OptimizerState::to_named_tensors(const std::string& prefix) const {
  nn::NamedTensors out;
  for (const auto& [name, t] : tensors) out.emplace_back(prefix + "state." + name, t);
  for (const auto& [name, v] : scalars) out.emplace_back(prefix + "scalar." + name, Tensor::scalar(v, DType::F64));
  return out;
}

OptimizerState OptimizerState::from_named_tensors(const nn::NamedTensors& all, const std::string& prefix) {
  OptimizerState s;
  const std::string tp = prefix + "state.", sp = prefix + "scalar.";
  for (const auto& [name, t] : all) {
    if (name.compare(0, tp.size(), tp) == 0) {
      s.tensors[name.substr(tp.size())] = t;
    } else if (name.compare(0, sp.size(), sp) == 0) {
      KCHECK(t.numel() == 1, ValueError, "optimizer state: scalar entry ", name, " has shape ", shape_str(t.shape()));
      s.scalars[name.substr(sp.size())] = t.item();
    }
  }
  return s;
}

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr) : lr_(lr), groups_(std::move(groups)) {
  KCHECK(std::isfinite(lr) && lr >= 0.0, ValueError, "optimizer: learning rate must be finite and >= 0, got ", lr);
}

void Optimizer::init_params(double default_weight_decay) {
  KCHECK(std::isfinite(default_weight_decay) && default_weight_decay >= 0.0, ValueError,
         type_name(), ": weight decay must be >= 0, got ", default_weight_decay);
  std::set<const TensorImpl*> seen;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& group = groups_[g];
    const double wd = group.weight_decay.value_or(default_weight_decay);
    KCHECK(std::isfinite(wd) && wd >= 0.0, ValueError, type_name(), ": group ", g, " weight decay must be >= 0, got ",
           wd);
    for (const Tensor& p : group.params) {
      KCHECK(p.defined(), ValueError, type_name(), ": group ", g, " holds an undefined tensor");
      KCHECK(seen.insert(&p.impl()).second, ValueError, type_name(), ": parameter ",
             p.name().empty() ? std::to_string(flat_.size()) : p.name(), " appears in more than one place");
      KCHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64, DTypeError, type_name(),
             ": parameters must be f32 or f64 (keep f32 master weights for mixed precision), got ",
             dtype_name(p.dtype()), " for parameter ", flat_.size());
      flat_.push_back({p, wd, group.lr_scale});
    }
  }
  state_tensors_.assign(flat_.size(), {});
  state_scalars_.assign(flat_.size(), {});
}

void Optimizer::set_lr(double lr) {
  KCHECK(std::isfinite(lr) && lr >= 0.0, ValueError, type_name(), ": learning rate must be finite and >= 0, got ", lr);
  lr_ = lr;
}

void Optimizer::zero_grad() {
  for (ParamRef& r : flat_) r.param.zero_grad();
}

Tensor Optimizer::grad_for_update(const Tensor& param, const char* op) {
  Tensor g = param.grad();
  if (!g.defined()) return g;
  KCHECK(g.device() == param.device(), DeviceError, op, ": gradient on ", g.device().str(), " but parameter ",
         shape_str(param.shape()), " on ", param.device().str());
  KCHECK(param.is_contiguous(), ValueError, op, ": parameter of shape ", shape_str(param.shape()),
         " is not contiguous");
  KCHECK(g.shape() == param.shape(), ShapeError, op, ": gradient shape ", shape_str(g.shape()),
         " differs from parameter shape ", shape_str(param.shape()));
  NoGradGuard guard;
  if (param.device().is_cuda()) {
    // The fused kernels read f32, f16 and bf16 gradients as they are.
    const DType d = g.dtype();
    if (d != DType::F32 && d != DType::F16 && d != DType::BF16) g = g.to(param.dtype());
    return g.contiguous();
  }
  if (g.dtype() != param.dtype()) g = g.to(param.dtype());
  return g.cpu().contiguous();
}

OptimizerState Optimizer::state() const {
  OptimizerState s;
  s.scalars["lr"] = lr_;
  s.scalars["num_params"] = static_cast<double>(flat_.size());
  for (size_t i = 0; i < flat_.size(); ++i) {
    const std::string p = std::to_string(i) + ".";
    for (const auto& [name, t] : state_tensors_[i])
      if (t.defined()) s.tensors[p + name] = t.device().is_cpu() ? t : t.cpu();
    for (const auto& [name, v] : state_scalars_[i]) s.scalars[p + name] = v;
  }
  return s;
}

void Optimizer::load_state(const OptimizerState& s) {
  auto nit = s.scalars.find("num_params");
  KCHECK(nit != s.scalars.end(), ValueError, type_name(), ": optimizer state has no 'num_params' entry");
  KCHECK(static_cast<size_t>(nit->second) == flat_.size(), ValueError, type_name(), ": optimizer state is for ",
         nit->second, " parameters but this optimizer has ", flat_.size());
  const std::vector<std::string> tnames = state_tensor_names(), snames = state_scalar_names();
  std::vector<std::map<std::string, Tensor>> tensors(flat_.size());
  std::vector<std::map<std::string, double>> scalars(flat_.size());
  auto split = [&](const std::string& key, const std::vector<std::string>& allowed, size_t& index,
                   std::string& field) {
    const size_t dot = key.find('.');
    KCHECK(dot != std::string::npos && dot > 0, ValueError, type_name(), ": unexpected optimizer state entry '", key,
           "'");
    try {
      size_t used = 0;
      index = std::stoul(key.substr(0, dot), &used);
      KCHECK(used == dot, ValueError, "");
    } catch (const std::exception&) {
      throw ValueError(type_name() + ": unexpected optimizer state entry '" + key + "'");
    }
    field = key.substr(dot + 1);
    KCHECK(index < flat_.size(), ValueError, type_name(), ": optimizer state entry '", key, "' names parameter ",
           index, " but there are ", flat_.size());
    bool ok = false;
    for (const std::string& a : allowed) ok = ok || a == field;
    KCHECK(ok, ValueError, type_name(), ": unexpected optimizer state entry '", key, "'");
  };
  for (const auto& [key, t] : s.tensors) {
    size_t i = 0;
    std::string field;
    split(key, tnames, i, field);
    const Tensor& p = flat_[i].param;
    KCHECK(t.shape() == p.shape(), ValueError, type_name(), ": optimizer state '", key, "' has shape ",
           shape_str(t.shape()), " but parameter ", i, " has shape ", shape_str(p.shape()));
    NoGradGuard guard;
    Tensor copy = Tensor::empty(p.shape(), p.dtype(), p.device());
    copy.copy_(t);  // a private copy in the parameter's dtype, never aliasing the caller's tensor
    tensors[i][field] = copy;
  }
  for (const auto& [key, v] : s.scalars) {
    if (key == "lr" || key == "num_params") continue;
    size_t i = 0;
    std::string field;
    split(key, snames, i, field);
    scalars[i][field] = v;
  }
  // A parameter's state is all there or all absent (e.g. AdamW moments without their step count would
  // silently restart the bias correction).
  for (size_t i = 0; i < flat_.size(); ++i) {
    if (tensors[i].empty() && scalars[i].empty()) continue;
    for (const std::string& n : tnames)
      KCHECK(tensors[i].count(n), ValueError, type_name(), ": optimizer state for parameter ", i, " lacks '", i, ".",
             n, "'");
    for (const std::string& n : snames)
      KCHECK(scalars[i].count(n), ValueError, type_name(), ": optimizer state for parameter ", i, " lacks '", i, ".",
             n, "'");
  }
  auto lit = s.scalars.find("lr");
  if (lit != s.scalars.end()) set_lr(lit->second);
  state_tensors_ = std::move(tensors);
  state_scalars_ = std::move(scalars);
}

}  // namespace kestrel::optim
