#include "data/pinned_batch.h"

#include <algorithm>
#include <cstring>

#include "engine/error.h"
#if defined(KESTREL_HAVE_CUDA)
#include "engine/cuda/runtime.h"
#endif

namespace kestrel::data {

#if defined(KESTREL_HAVE_CUDA)

namespace {

constexpr size_t kAlign = 256;  // each tensor starts on its own aligned offset
size_t aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

// One pinned block: images | labels | targets at aligned offsets.
struct PinnedBatch {
  explicit PinnedBatch(size_t nbytes) : block(nbytes) {}
  // Waits for the copies still reading the block before it returns to the cache.
  ~PinnedBatch() {
    if (!copied) return;
    try {
      copied->synchronize();
    } catch (...) {
      // A failed copy leaves nothing to wait for; the error surfaces at the next checked call.
    }
  }
  PinnedBatch(const PinnedBatch&) = delete;
  PinnedBatch& operator=(const PinnedBatch&) = delete;

  char* at(size_t offset) const { return static_cast<char*>(block.data()) + offset; }

  cuda::PinnedBuffer block;
  size_t images_at = 0, labels_at = 0, targets_at = 0;
  std::unique_ptr<cuda::Event> copied;  // created on the device of the first copy
  int copy_device = -1;
};

bool pinned_memory_available() { return cuda::cuda_available(); }

std::shared_ptr<PinnedBatch> stage_pinned(const Batch& b) {
  KCHECK(pinned_memory_available(), DeviceError, "pinned batch staging needs a CUDA device (",
         cuda::unavailable_reason(), ")");
  const Tensor images = b.images.contiguous(), labels = b.labels.contiguous();
  const Tensor targets = b.targets.defined() ? b.targets.contiguous() : Tensor();
  size_t total = aligned(images.nbytes());
  const size_t labels_at = total;
  total += aligned(labels.nbytes());
  const size_t targets_at = total;
  if (targets.defined()) total += aligned(targets.nbytes());
  auto p = std::make_shared<PinnedBatch>(std::max<size_t>(total, 1));
  p->images_at = 0;
  p->labels_at = labels_at;
  p->targets_at = targets_at;
  std::memcpy(p->at(0), images.data_ptr(), images.nbytes());
  std::memcpy(p->at(labels_at), labels.data_ptr(), labels.nbytes());
  if (targets.defined()) std::memcpy(p->at(targets_at), targets.data_ptr(), targets.nbytes());
  return p;
}

namespace {

// Host block -> new device tensor shaped like `like`, on the current stream.
Tensor upload(const char* src, const Tensor& like, Device device, cudaStream_t stream) {
  Tensor out = Tensor::empty(like.shape(), like.dtype(), device);
  if (out.nbytes() > 0)
    KESTREL_CUDA_CHECK_CTX(cudaMemcpyAsync(out.data_ptr(), src, out.nbytes(), cudaMemcpyHostToDevice, stream),
                           "batch upload ", dtype_name(like.dtype()), " ", shape_str(like.shape()), " to ",
                           device.str());
  return out;
}

}  // namespace

DeviceBatch copy_batch_to_device(const Batch& b, Device device) {
  if (device.is_cpu()) return {b.images, b.labels, b.targets};
  if (!b.pinned) return {b.images.to(device), b.labels.to(device), b.targets.defined() ? b.targets.to(device) : Tensor()};
  PinnedBatch& p = *b.pinned;
  KCHECK(p.copy_device < 0 || p.copy_device == device.index, DeviceError, "batch ", b.index,
         ": its pinned stage was already copied to cuda:", p.copy_device, ", not ", device.str());
  cuda::DeviceGuard guard(device.index);
  cudaStream_t stream = cuda::current_stream(device.index);
  DeviceBatch d;
  d.images = upload(p.at(p.images_at), b.images, device, stream);
  d.labels = upload(p.at(p.labels_at), b.labels, device, stream);
  if (b.targets.defined()) d.targets = upload(p.at(p.targets_at), b.targets, device, stream);
  if (!p.copied) p.copied = std::make_unique<cuda::Event>(false);
  p.copy_device = device.index;
  p.copied->record(stream);  // the block is released only after this point of the stream
  return d;
}

#else  // no CUDA backend in this build

struct PinnedBatch {};

bool pinned_memory_available() { return false; }

std::shared_ptr<PinnedBatch> stage_pinned(const Batch&) {
  throw DeviceError("pinned batch staging needs the CUDA backend, which this build does not have");
}

DeviceBatch copy_batch_to_device(const Batch& b, Device device) {
  KCHECK(device.is_cpu(), DeviceError, "cannot copy a batch to ", device.str(),
         ": this build has no CUDA backend");
  return {b.images, b.labels, b.targets};
}

#endif

}  // namespace kestrel::data
