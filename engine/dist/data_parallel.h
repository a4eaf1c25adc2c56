// Data-parallel training: every rank holds a replica of the model, trains on
// its share of each batch, and averages gradients before each optimizer step,
// so the replicas stay equal.
//
//   dist::broadcast_module(*model);              // rank 0's initial weights everywhere
//   dist::GradientAverager sync(model->parameters());
//   loss.backward();  sync.average();  optimizer.step();
#pragma once
#include <cstddef>
#include <vector>

#include "engine/nn/module.h"

namespace kestrel::dist {

// Parameters and buffers from `root` to every rank.
void broadcast_module(nn::Module& module, int root = 0);
// Buffers only: batch-norm running statistics, which each rank updates from its
// own share of the batch. Taking rank 0's is what PyTorch's DDP does.
void broadcast_buffers(nn::Module& module, int root = 0);

class GradientAverager {
 public:
  // Gradients travel in buckets of about `bucket_bytes`: one all-reduce per
  // bucket instead of one per parameter.
  explicit GradientAverager(std::vector<Tensor> params, size_t bucket_bytes = size_t{25} << 20);

  // After backward, on every rank: each gradient becomes its mean over the
  // ranks. A parameter that got no gradient counts as zeros (the layout must
  // be the same on every rank). The gradients become views into the buckets.
  // A world of one returns at once.
  void average();
  int64_t buckets_last_average() const { return buckets_; }

 private:
  std::vector<Tensor> params_;
  size_t bucket_bytes_;
  int64_t buckets_ = 0;
};

}  // namespace kestrel::dist
