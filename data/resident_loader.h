// A loader for data sets small enough to live on the device: the u8 images
// are copied there once, and each batch is built there by one kernel
// (engine/ops/assemble_batch.h) from a plan drawn on the host: crops, mirrors,
// cutout holes, MixUp/CutMix/RICAP tiles and blends. No worker threads decode
// or copy images, and a batch crosses the bus as a few kilobytes of plan
// instead of megabytes of floats.
//
//   data::ResidentAugment aug;  aug.crop_padding = 4;  aug.hflip = 0.5;  aug.mean = {...};  aug.std = {...};
//   data::ResidentLoader loader(*train, lo, aug, data::cutmix_mixer(1.0), 10, Device::cuda(0));
//   loader.start_epoch(epoch);
//   while (loader.next(b)) { ... b.images and b.targets on the device, b.labels on the host ... }
//
// Batches equal those of a DataLoader with the same options, seed and the
// host transforms ResidentAugment names (resident_host_transform), bit for
// bit on the CPU, so a run may switch loaders. On the CPU it also works, and
// skips the per-image float buffers of the host transforms.
#pragma once
#include <cstdint>
#include <vector>

#include "data/batch_mix.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "engine/device.h"

namespace kestrel::data {

// The augmentations a resident loader applies, in the host transforms' order:
// random_crop (same size, zero fill), random_hflip, cutout, normalize.
struct ResidentAugment {
  int crop_padding = -1;    // random_crop(h, w, crop_padding); < 0: no crop
  double hflip = 0.0;       // random_hflip(hflip); 0: none
  int cutout_size = 0;      // cutout(cutout_size, cutout_p); 0: none
  double cutout_p = 1.0;
  std::vector<float> mean = {0.0f}, std = {1.0f};  // normalize(mean, std)
};

// The host transform that gives the same images as `aug` (for the threaded loader).
Transform resident_host_transform(const ResidentAugment& aug, int h, int w);

class ResidentLoader : public BatchLoader {
 public:
  // Copies the images of `dataset` (all of one size) to `device`. mixer may be
  // empty; num_classes sizes the soft targets a mixer gives.
  ResidentLoader(const Dataset& dataset, LoaderOptions opts, ResidentAugment aug, BatchMixer mixer,
                 int64_t num_classes, Device device);

  int64_t num_batches() const override { return batch_count(opts_, size()); }
  int64_t dataset_size() const override { return size(); }
  const LoaderOptions& options() const override { return opts_; }
  void start_epoch(int64_t epoch, int64_t start_batch = 0) override;
  bool next(Batch& out) override;

  // Bytes of images held on the device.
  int64_t resident_bytes() const { return images_.numel(); }

 private:
  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  Batch load_batch(int64_t epoch, int64_t batch_index, const std::vector<int64_t>& order) const;
  ImageView draw_view(int64_t epoch, int64_t index) const;

  LoaderOptions opts_;
  ResidentAugment aug_;
  BatchMixer mixer_;
  int64_t num_classes_;
  Tensor images_;                // u8 [N, H, W, C] on the device
  std::vector<int64_t> labels_;  // on the host
  std::vector<int64_t> order_;
  int64_t epoch_ = -1, next_ = 0;
};

// Bytes the images of `dataset` take as u8 (what a ResidentLoader holds).
int64_t resident_size_bytes(const Dataset& dataset);

}  // namespace kestrel::data
