// Host glue for the fused SGD, AdamW and RMSprop kernels (kernels/fused_optim.h):
// parameters that share a device, gradient dtype and every per-launch
// hyperparameter (lr, weight decay, SGD's first-step flag, AdamW's step count)
// form one group; each group's pointer tables go to the multi-tensor launcher,
// which packs up to kOptimTensorsPerLaunch tensors into each launch.
// Compiles; untested on a GPU at the time of writing.
#include "engine/gpu/optim.h"

#include <map>
#include <tuple>

#include "engine/cuda/runtime.h"
#include "engine/gpu/kernel_dtype.h"
#include "kernels/fused_optim.h"

namespace kestrel::gpu {

namespace {

void check_param_and_grad(const Tensor& p, const Tensor& g, const char* op) {
  KCHECK(p.device().is_cuda(), DeviceError, op, ": expected a CUDA parameter, got one on ", p.device().str());
  KCHECK(p.dtype() == DType::F32, DTypeError, op, ": parameters on CUDA must be f32 (master weights), got ",
         dtype_name(p.dtype()), " ", shape_str(p.shape()));
  KCHECK(p.is_contiguous(), ValueError, op, ": parameter of shape ", shape_str(p.shape()), " is not contiguous");
  KCHECK(g.device() == p.device(), DeviceError, op, ": gradient on ", g.device().str(), " but parameter ",
         shape_str(p.shape()), " on ", p.device().str());
  KCHECK(g.shape() == p.shape() && g.is_contiguous(), ShapeError, op, ": gradient ", shape_str(g.shape()),
         " must be contiguous and shaped like the parameter ", shape_str(p.shape()));
}

void check_state(const Tensor& s, const Tensor& p, const char* op, const char* what) {
  KCHECK(s.defined() && s.device() == p.device() && s.dtype() == DType::F32 && s.shape() == p.shape() &&
             s.is_contiguous(),
         ValueError, op, ": ", what, " must be a contiguous f32 tensor shaped ", shape_str(p.shape()), " on ",
         p.device().str());
}

// Pointer tables of one launch group, in the launcher's layout.
struct Tables {
  std::vector<float*> params, state_a, state_b;
  std::vector<const void*> grads;
  std::vector<int64_t> sizes;
  Shape first_shape;  // for error messages
  int count() const { return static_cast<int>(params.size()); }
};

float* f32_ptr(const Tensor& t) { return t.defined() ? static_cast<float*>(t.data_ptr()) : nullptr; }

// (device, gradient dtype, the per-launch count: SGD's first-step flag or
// AdamW's step, lr, weight decay): parameters with equal keys share launches.
using GroupKey = std::tuple<int, kernels::KDType, int64_t, double, double>;
using Groups = std::map<GroupKey, Tables>;

// Adds one parameter's pointers to its group; undefined state is a null pointer.
void add_to_group(Groups& groups, const char* op, int64_t count, double lr, double weight_decay, const Tensor& param,
                  const Tensor& grad, const Tensor& state_a, const Tensor& state_b) {
  const GroupKey key{param.device().index, kernel_dtype(grad.dtype(), op, "gradients"), count, lr, weight_decay};
  Tables& t = groups[key];
  if (t.params.empty()) t.first_shape = param.shape();
  t.params.push_back(f32_ptr(param));
  t.grads.push_back(grad.data_ptr());
  t.state_a.push_back(f32_ptr(state_a));
  t.state_b.push_back(f32_ptr(state_b));
  t.sizes.push_back(param.numel());
}

}  // namespace

void sgd_step(const std::vector<SgdParamUpdate>& updates, double momentum, double dampening, bool nesterov) {
  constexpr const char* kOp = "SGD.step";
  Groups groups;
  for (const SgdParamUpdate& u : updates) {
    check_param_and_grad(u.param, u.grad, kOp);
    if (momentum != 0.0) check_state(u.momentum_buffer, u.param, kOp, "the momentum buffer");
    add_to_group(groups, kOp, u.first ? 1 : 0, u.lr, u.weight_decay, u.param, u.grad,
                 momentum != 0.0 ? u.momentum_buffer : Tensor(), Tensor());
  }
  for (const auto& [key, t] : groups) {
    const auto& [device, gdt, first, lr, weight_decay] = key;
    kernels::SgdArgs a;
    a.lr = static_cast<float>(lr);
    a.momentum = static_cast<float>(momentum);
    a.dampening = static_cast<float>(dampening);
    a.weight_decay = static_cast<float>(weight_decay);
    a.nesterov = nesterov;
    a.first_step = first != 0;
    a.grad_scale = 1.f;
    cuda::DeviceGuard guard(device);
    KESTREL_CUDA_CHECK_CTX(kernels::sgd_momentum_multi(gdt, t.count(), t.params.data(), t.grads.data(),
                                                       t.state_a.data(), t.sizes.data(), a, nullptr,
                                                       cuda::current_stream(device)),
                           kOp, ": ", t.count(), " parameters on cuda:", device, " (", kernels::kdtype_name(gdt),
                           " gradients, first ", shape_str(t.first_shape), ")");
  }
}

void adamw_step(const std::vector<AdamWParamUpdate>& updates, double beta1, double beta2, double eps) {
  constexpr const char* kOp = "AdamW.step";
  Groups groups;
  for (const AdamWParamUpdate& u : updates) {
    check_param_and_grad(u.param, u.grad, kOp);
    check_state(u.exp_avg, u.param, kOp, "exp_avg");
    check_state(u.exp_avg_sq, u.param, kOp, "exp_avg_sq");
    KCHECK(u.step >= 1 && u.step <= 0x7fffffff, ValueError, kOp, ": step count ", u.step, " out of range");
    add_to_group(groups, kOp, u.step, u.lr, u.weight_decay, u.param, u.grad, u.exp_avg, u.exp_avg_sq);
  }
  for (const auto& [key, t] : groups) {
    const auto& [device, gdt, step, lr, weight_decay] = key;
    kernels::AdamWArgs a;
    a.lr = static_cast<float>(lr);
    a.beta1 = static_cast<float>(beta1);
    a.beta2 = static_cast<float>(beta2);
    a.eps = static_cast<float>(eps);
    a.weight_decay = static_cast<float>(weight_decay);
    a.step = static_cast<int>(step);
    a.grad_scale = 1.f;
    cuda::DeviceGuard guard(device);
    KESTREL_CUDA_CHECK_CTX(kernels::adamw_multi(gdt, t.count(), t.params.data(), t.grads.data(), t.state_a.data(),
                                                t.state_b.data(), t.sizes.data(), a, nullptr,
                                                cuda::current_stream(device)),
                           kOp, ": ", t.count(), " parameters on cuda:", device, " (", kernels::kdtype_name(gdt),
                           " gradients, step ", step, ", first ", shape_str(t.first_shape), ")");
  }
}

void rmsprop_step(const std::vector<RMSpropParamUpdate>& updates, double alpha, double eps, double momentum) {
  constexpr const char* kOp = "RMSprop.step";
  Groups groups;
  for (const RMSpropParamUpdate& u : updates) {
    check_param_and_grad(u.param, u.grad, kOp);
    check_state(u.square_avg, u.param, kOp, "square_avg");
    if (momentum != 0.0) check_state(u.momentum_buffer, u.param, kOp, "the momentum buffer");
    add_to_group(groups, kOp, 0, u.lr, u.weight_decay, u.param, u.grad, u.square_avg,
                 momentum != 0.0 ? u.momentum_buffer : Tensor());
  }
  for (const auto& [key, t] : groups) {
    const auto& [device, gdt, unused, lr, weight_decay] = key;
    kernels::RMSpropArgs a;
    a.lr = static_cast<float>(lr);
    a.alpha = static_cast<float>(alpha);
    a.eps = static_cast<float>(eps);
    a.weight_decay = static_cast<float>(weight_decay);
    a.momentum = static_cast<float>(momentum);
    a.grad_scale = 1.f;
    cuda::DeviceGuard guard(device);
    KESTREL_CUDA_CHECK_CTX(kernels::rmsprop_multi(gdt, t.count(), t.params.data(), t.grads.data(), t.state_a.data(),
                                                  t.state_b.data(), t.sizes.data(), a, nullptr,
                                                  cuda::current_stream(device)),
                           kOp, ": ", t.count(), " parameters on cuda:", device, " (", kernels::kdtype_name(gdt),
                           " gradients, first ", shape_str(t.first_shape), ")");
  }
}

}  // namespace kestrel::gpu
