// Batches staged in page-locked (pinned) host memory so the host->device copy
// is asynchronous, and the copy of a batch to the device the model runs on.
//
// A loader with LoaderOptions::pin_memory (and a CUDA device present) gives
// every batch a PinnedBatch: its images, labels and targets copied into one
// pinned block by the loader's worker thread (Tensors cannot wrap foreign
// memory, so the batch transform works on ordinary tensors first). The block
// returns to the pinned cache only after the last device copy reading it has
// completed (an event recorded after the copies, waited on before release),
// so a refill never races an in-flight copy. Without CUDA, or without a
// device, nothing here allocates pinned memory and batches stay as they are.
// The CUDA parts compile; untested on a GPU at the time of writing.
#pragma once
#include <memory>

#include "data/batch.h"

namespace kestrel::data {

// True in a CUDA build on a machine with a usable device.
bool pinned_memory_available();

// A pinned copy of the batch's tensors; throws DeviceError when
// pinned_memory_available() is false.
std::shared_ptr<PinnedBatch> stage_pinned(const Batch& batch);

// The batch's tensors on `device`. CPU: the batch's own tensors (no copy).
// CUDA: fresh device tensors filled by cudaMemcpyAsync on the device's current
// stream, from the pinned stage when the batch has one (asynchronous), else
// by a blocking copy.
struct DeviceBatch {
  Tensor images, labels, targets;  // targets undefined when the batch has none
};
DeviceBatch copy_batch_to_device(const Batch& batch, Device device);

}  // namespace kestrel::data
