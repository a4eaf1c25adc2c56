// Turns --dataset/--data-dir and the augmentation flags into datasets,
// transforms and loaders, the same way for train, eval and the tests.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/resident_loader.h"
#include "data/transforms.h"
#include "tools/lib/train_config.h"

namespace kestrel::tools {

// data_dir when given, else the data set's standard place (empty for a folder).
std::string data_dir_or_default(const std::string& dataset, const std::string& data_dir);
// An image folder is preloaded (decoded once, up front) when it fits
// image_preload_limit_bytes(), else decoded as it is read. A folder without
// train/ and test/ is split per class: test_split of each class is the test
// set; test_split 0 reads all of it as either split (a folder only evaluated on).
std::shared_ptr<const data::Dataset> open_dataset(const std::string& dataset, const std::string& data_dir,
                                                  data::Split split, bool skip_bad, int64_t limit,
                                                  double test_split = kDefaultTestSplit);
// Per split: the smaller of 2 GiB and a quarter of physical memory, or
// $KESTREL_PRELOAD_LIMIT_MB megabytes when set.
int64_t image_preload_limit_bytes();

struct Normalization {
  std::vector<float> mean, std;
};
// Published statistics for the standard sets; measured on up to 2000 images otherwise.
Normalization normalization_for(const std::string& dataset, const data::Dataset& train);

data::Transform train_transform(const TrainConfig& c, int height, int width, const Normalization& n);
// What validation and eval read: the resize (or centre crop, crop_pct < 1) and the normalization.
data::Transform eval_transform(int height, int width, const Normalization& n, double crop_pct = 1.0);
// train_transform's steps and the batch mixers in words, for the run's banner:
// "crop (pad 4), flip, cutout 16 px p 0.5; mixup 0.2", or "none".
std::string augmentation_summary(const TrainConfig& c, int height, int width);
// The resident loader's twins of train_transform and eval_transform.
data::ResidentAugment resident_train_augment(const TrainConfig& c, int height, const Normalization& n);
data::ResidentAugment resident_eval_augment(const Normalization& n);
// Why the resident loader cannot give this run's training (or evaluation)
// batches of `ds` at height x width; empty when it can.
std::string resident_unsupported(const TrainConfig& c, bool train, const data::Dataset& ds, int height, int width);

// The loader --loader asks for (auto: resident on CUDA when supported and the
// images take at most kAutoResidentBytes), with the train or eval augmentation.
constexpr int64_t kAutoResidentBytes = 4LL << 30;
struct LoaderChoice {
  std::unique_ptr<data::BatchLoader> loader;
  bool resident = false;
  std::string why_threads;  // on CUDA under auto: why the threaded loader was taken
};
LoaderChoice make_loader(const TrainConfig& c, std::shared_ptr<const data::Dataset> ds, const data::LoaderOptions& lo,
                         bool train, int height, int width, const Normalization& n, int64_t num_classes,
                         Device device);

// MixUp / CutMix / RICAP chosen per batch with their probabilities; empty when all are 0.
data::BatchMixer batch_mixer(const TrainConfig& c);
data::BatchTransform batch_mixing(const TrainConfig& c, int64_t num_classes);

}  // namespace kestrel::tools
