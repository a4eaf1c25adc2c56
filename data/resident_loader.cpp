#include "data/resident_loader.h"

#include <algorithm>
#include <cstring>

#include "engine/error.h"

namespace kestrel::data {

namespace {

// The images of `dataset` as one u8 [N, H, W, C] host tensor, and their labels.
Tensor gather_images(const Dataset& dataset, std::vector<int64_t>& labels) {
  const int64_t n = dataset.size();
  KCHECK(n > 0, ValueError, "ResidentLoader: the data set is empty");
  const Example first = dataset.get(0);
  const int h = first.image.h, w = first.image.w, c = first.image.c;
  const int64_t per = static_cast<int64_t>(h) * w * c;
  Tensor images = Tensor::empty({n, h, w, c}, DType::U8);
  uint8_t* dst = images.data<uint8_t>();
  labels.resize(static_cast<size_t>(n));
  if (const auto* array = dynamic_cast<const ArrayDataset*>(&dataset)) {  // one buffer already
    std::memcpy(dst, array->pixels().data(), static_cast<size_t>(n * per));
    labels = array->labels();
    return images;
  }
  for (int64_t i = 0; i < n; ++i) {
    const Example ex = i == 0 ? first : dataset.get(i);
    KCHECK(ex.image.h == h && ex.image.w == w && ex.image.c == c, ShapeError, "ResidentLoader: example ", i, " is ",
           ex.image.h, "x", ex.image.w, "x", ex.image.c, " but example 0 is ", h, "x", w, "x", c,
           "; a resident data set needs images of one size (use the threaded loader)");
    std::memcpy(dst + i * per, ex.image.pixels.data(), static_cast<size_t>(per));
    labels[static_cast<size_t>(i)] = ex.label;
  }
  return images;
}

}  // namespace

Transform resident_host_transform(const ResidentAugment& aug, int h, int w) {
  std::vector<Transform> t;
  if (aug.crop_padding >= 0) t.push_back(random_crop(h, w, aug.crop_padding));
  if (aug.hflip > 0) t.push_back(random_hflip(aug.hflip));
  if (aug.cutout_size > 0) t.push_back(cutout(aug.cutout_size, aug.cutout_p));
  t.push_back(normalize(aug.mean, aug.std));
  return compose(std::move(t));
}

int64_t resident_size_bytes(const Dataset& dataset) {
  if (dataset.size() == 0) return 0;
  const Image first = dataset.get(0).image;
  return dataset.size() * first.h * first.w * first.c;
}

ResidentLoader::ResidentLoader(const Dataset& dataset, LoaderOptions opts, ResidentAugment aug, BatchMixer mixer,
                               int64_t num_classes, Device device)
    : opts_(opts), aug_(std::move(aug)), mixer_(std::move(mixer)), num_classes_(num_classes) {
  KCHECK(opts_.batch_size > 0, ValueError, "ResidentLoader: batch_size must be > 0, got ", opts_.batch_size);
  KCHECK(opts_.shard_count > 0 && opts_.shard_rank >= 0 && opts_.shard_rank < opts_.shard_count, ValueError,
         "ResidentLoader: shard ", opts_.shard_rank, " of ", opts_.shard_count, " does not exist");
  KCHECK(!mixer_ || num_classes_ > 0, ValueError, "ResidentLoader: batch mixing needs num_classes > 0");
  KCHECK(aug_.cutout_size >= 0 && aug_.hflip >= 0 && aug_.hflip <= 1 && aug_.cutout_p >= 0 && aug_.cutout_p <= 1,
         ValueError, "ResidentLoader: cutout size must be >= 0 and probabilities in [0, 1]");
  images_ = gather_images(dataset, labels_).to(device);
}

void ResidentLoader::start_epoch(int64_t epoch, int64_t start_batch) {
  KCHECK(epoch >= 0, ValueError, "ResidentLoader: epoch must be >= 0, got ", epoch);
  KCHECK(start_batch >= 0 && start_batch <= num_batches(), ValueError, "ResidentLoader: cannot start epoch ", epoch,
         " at batch ", start_batch, "; an epoch has ", num_batches(), " batches");
  epoch_ = epoch;
  order_ = epoch_order(size(), opts_.shuffle, opts_.seed, epoch);
  next_ = start_batch;
}

bool ResidentLoader::next(Batch& out) {
  KCHECK(epoch_ >= 0, ValueError, "ResidentLoader: call start_epoch() before next()");
  while (next_ < num_batches()) {
    out = load_batch(epoch_, next_++, order_);
    if (!out.indices.empty()) return true;  // a shard part left empty by a short last batch is skipped
  }
  return false;
}

// The draws of resident_host_transform, in its order, from the sample's generator.
ImageView ResidentLoader::draw_view(int64_t epoch, int64_t index) const {
  const int h = static_cast<int>(images_.size(1)), w = static_cast<int>(images_.size(2));
  Generator gen(sample_seed(opts_.seed, epoch, index));
  ImageView v;
  v.image = index;
  if (aug_.crop_padding >= 0) {  // else (0, 0) with no padding: the image itself
    v.top = static_cast<int>(gen.randint(0, 2 * aug_.crop_padding + 1));
    v.left = static_cast<int>(gen.randint(0, 2 * aug_.crop_padding + 1));
  }
  v.flip = aug_.hflip > 0 && coin(gen, aug_.hflip);
  if (aug_.cutout_size > 0 && coin(gen, aug_.cutout_p)) {
    const int cy = static_cast<int>(gen.randint(0, h)), cx = static_cast<int>(gen.randint(0, w));
    const int top = cy - aug_.cutout_size / 2, left = cx - aug_.cutout_size / 2;  // clipped as fill_rect clips
    v.hole_top = std::max(0, top);
    v.hole_left = std::max(0, left);
    v.hole_h = std::max(0, std::min(h, top + aug_.cutout_size) - v.hole_top);
    v.hole_w = std::max(0, std::min(w, left + aug_.cutout_size) - v.hole_left);
    if (v.hole_h == 0 || v.hole_w == 0) v.hole_h = v.hole_w = 0;
  }
  return v;
}

Batch ResidentLoader::load_batch(int64_t epoch, int64_t batch_index, const std::vector<int64_t>& order) const {
  const auto [begin, end] = batch_positions(opts_, size(), batch_index);
  Batch b;
  b.epoch = epoch;
  b.index = batch_index;
  b.indices.assign(order.begin() + begin, order.begin() + end);
  const int64_t n = end - begin;
  if (n == 0) return b;
  std::vector<ImageView> views;
  std::vector<int64_t> labels;
  for (int64_t idx : b.indices) {
    views.push_back(draw_view(epoch, idx));
    labels.push_back(labels_[static_cast<size_t>(idx)]);
  }
  b.labels = Tensor::from_vector_i64(labels, {n});
  AssembleOptions ao;
  ao.pad = std::max(aug_.crop_padding, 0);
  ao.scale = opts_.to_float_scale;
  ao.mean = aug_.mean;
  ao.std = aug_.std;
  std::vector<RowPlan> rows;
  if (mixer_ && (opts_.mix_until_epoch < 0 || epoch < opts_.mix_until_epoch)) {
    Generator gen(batch_seed(opts_.seed, epoch, batch_index));
    const BatchMix mix = mixer_(n, static_cast<int>(images_.size(1)), static_cast<int>(images_.size(2)), gen);
    rows.assign(mix.rows.begin(), mix.rows.end());
    b.targets = mix_targets(one_hot(b.labels, num_classes_), mix).to(images_.device());
  }
  b.images = assemble_batch(images_, views, rows, ao);
  return b;
}

}  // namespace kestrel::data
