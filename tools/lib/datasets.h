// Turns --dataset/--data-dir and the augmentation flags into datasets,
// transforms and loaders, the same way for train, eval and the tests.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "tools/lib/train_config.h"

namespace kestrel::tools {

std::string default_data_dir(const std::string& dataset);
std::shared_ptr<const data::Dataset> open_dataset(const std::string& dataset, const std::string& data_dir,
                                                  data::Split split, bool skip_bad, int64_t limit);

struct Normalization {
  std::vector<float> mean, std;
};
// Published statistics for the standard sets; measured on up to 2000 images otherwise.
Normalization normalization_for(const std::string& dataset, const data::Dataset& train);

data::Transform train_transform(const TrainConfig& c, int height, int width, const Normalization& n);
data::Transform eval_transform(int height, int width, const Normalization& n);
// MixUp / CutMix / RICAP chosen per batch with their probabilities; empty when all are 0.
data::BatchMixer batch_mixer(const TrainConfig& c);
data::BatchTransform batch_mixing(const TrainConfig& c, int64_t num_classes);

}  // namespace kestrel::tools
