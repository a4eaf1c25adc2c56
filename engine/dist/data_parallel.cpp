#include "engine/dist/data_parallel.h"

#include "engine/autograd.h"
#include "engine/dist/process_group.h"
#include "engine/ops/elementwise.h"

namespace kestrel::dist {

void broadcast_module(nn::Module& module, int root) {
  for (auto& [name, t] : module.named_parameters()) broadcast_(t, root);
  broadcast_buffers(module, root);
}

void broadcast_buffers(nn::Module& module, int root) {
  for (auto& [name, t] : module.named_buffers()) broadcast_(t, root);
}

GradientAverager::GradientAverager(std::vector<Tensor> params, size_t bucket_bytes)
    : params_(std::move(params)), bucket_bytes_(bucket_bytes) {}

void GradientAverager::average() {
  buckets_ = 0;
  const int world = world_size();
  if (world == 1) return;
  NoGradGuard no_grad;
  for (Tensor& p : params_)
    if (!p.grad().defined()) p.set_grad(Tensor::zeros(p.shape(), p.dtype(), p.device()));
  // A bucket: consecutive parameters of one device and gradient dtype, so the
  // layout is a function of the model alone and the same on every rank.
  for (size_t first = 0; first < params_.size();) {
    const Tensor g0 = params_[first].grad();
    size_t last = first;
    int64_t count = 0;
    size_t bytes = 0;
    while (last < params_.size()) {
      const Tensor g = params_[last].grad();
      if (last > first && (g.device() != g0.device() || g.dtype() != g0.dtype() || bytes + g.nbytes() > bucket_bytes_))
        break;
      count += g.numel();
      bytes += g.nbytes();
      ++last;
    }
    Tensor flat = Tensor::empty({count}, g0.dtype(), g0.device());
    int64_t offset = 0;
    for (size_t i = first; i < last; ++i) {
      const Tensor g = params_[i].grad();
      flat.narrow(0, offset, g.numel()).copy_(g.reshape({g.numel()}));
      offset += g.numel();
    }
    all_reduce_sum_(flat);
    mul_(flat, 1.0 / world);
    offset = 0;
    for (size_t i = first; i < last; ++i) {
      const Shape shape = params_[i].grad().shape();
      const int64_t n = shape_numel(shape);
      params_[i].set_grad(flat.narrow(0, offset, n).view(shape));
      offset += n;
    }
    ++buckets_;
    first = last;
  }
}

}  // namespace kestrel::dist
