// One mini-batch as the loader hands it to a trainer.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace kestrel::data {

struct PinnedBatch;  // data/pinned_batch.h

struct Batch {
  Tensor images;   // [N, H, W, C] f32, NHWC
  Tensor labels;   // [N] i64, the original hard labels
  Tensor targets;  // [N, num_classes] f32 soft targets after MixUp/CutMix/RICAP; undefined otherwise
  std::vector<int64_t> indices;  // dataset index of each row
  int64_t epoch = 0;
  int64_t index = 0;  // batch number within the epoch
  // Pinned host copy of the tensors above for asynchronous host->device
  // copies (LoaderOptions::pin_memory with a CUDA device); null otherwise.
  std::shared_ptr<PinnedBatch> pinned;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

}  // namespace kestrel::data
