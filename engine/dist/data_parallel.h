// Data-parallel training: every rank holds a replica of the model, trains on
// its share of each batch, and averages gradients before each optimizer step,
// so the replicas stay equal.
//
//   dist::broadcast_module(*model);              // rank 0's initial weights everywhere
//   dist::GradientAverager sync(model->parameters());
//   sync.prepare_for_backward();                 // optional: overlap the averaging with backward
//   loss.backward();  sync.average();  optimizer.step();
#pragma once
#include <cstddef>
#include <memory>
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
  // Gradients travel in buckets: one all-reduce per bucket instead of one per
  // parameter. Buckets take the parameters in reverse order, the order backward
  // finishes them in; the first holds at most 1 MiB so its reduction starts
  // early, the others about `bucket_bytes`. Parameters that do not require a
  // gradient are left out.
  explicit GradientAverager(std::vector<Tensor> params, size_t bucket_bytes = size_t{25} << 20);
  ~GradientAverager();
  GradientAverager(const GradientAverager&) = delete;
  GradientAverager& operator=(const GradientAverager&) = delete;

  // Before the backward whose gradients average() will average (with
  // gradient accumulation, the last micro-batch's): during that backward each
  // bucket's all-reduce starts as soon as its gradients, and those of the
  // buckets before it, are complete, overlapping the rest of backward (on
  // CUDA, NCCL runs on a side stream). A parameter the backward never reaches
  // holds its bucket, and the ones after it, back until average().
  void prepare_for_backward();

  // After backward, on every rank: each gradient becomes its mean over the
  // ranks. A parameter that got no gradient counts as zeros (the layout must
  // be the same on every rank). The gradients become views into the buckets.
  // A world of one returns at once.
  void average();

  int64_t buckets() const;
  // Of the last average(), the buckets whose all-reduce started during backward.
  int64_t buckets_started_in_backward() const;

 private:
  struct State;
  std::shared_ptr<State> state_;  // the parameters' hooks hold it weakly
};

}  // namespace kestrel::dist
