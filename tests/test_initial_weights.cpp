// --initial-checkpoint: a run starts from given weights (a Kestrel checkpoint
// or a torchvision state_dict), keeping a fresh classifier for another class
// count, and names whatever does not fit.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "engine/io/safetensors.h"
#include "engine/random.h"
#include "test_util.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/initial_weights.h"
#include "tools/lib/trainer.h"
#include "train_run_util.h"

namespace kestrel {
namespace {

using testing::temp_path;

tools::ModelInfo info_with_classes(int64_t classes) {
  tools::ModelInfo info = testing::fashion_mnist_model_info("cifar10_200k");
  info.num_classes = classes;
  return info;
}

nn::ModulePtr seeded_model(const tools::ModelInfo& info, uint64_t seed) {
  manual_seed(seed);
  return tools::build_from_info(info);
}

std::map<std::string, Tensor> state_of(const nn::Module& m) {
  std::map<std::string, Tensor> s;
  for (const auto& [name, t] : m.state_dict()) s.emplace(name, t.clone());
  return s;
}

// The error load_initial_weights throws, or "" when it loads.
std::string load_error(const std::string& path, nn::Module& model, const tools::ModelInfo& info) {
  try {
    tools::load_initial_weights(path, model, info);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(InitialWeights, AnotherClassCountKeepsOnlyTheClassifierFresh) {
  const tools::ModelInfo source_info = info_with_classes(100), run_info = info_with_classes(10);
  auto source = seeded_model(source_info, 1);
  const std::string path = temp_path("hundred_classes.safetensors");
  io::save_module(path, *source);  // a plain state_dict, as torchvision's: no Kestrel metadata
  auto model = seeded_model(run_info, 2);
  const auto before = state_of(*model), file = state_of(*source);

  std::vector<std::string> fresh = tools::load_initial_weights(path, *model, run_info);
  std::sort(fresh.begin(), fresh.end());
  ASSERT_EQ(fresh.size(), 2u);
  EXPECT_EQ(fresh[0], "fc.bias [10] (file: [100])") << fresh[0];
  EXPECT_EQ(fresh[1], "fc.weight [10,160] (file: [100,160])") << fresh[1];
  int64_t compared = 0;
  for (const auto& [name, t] : model->state_dict()) {
    const bool head = name.rfind("fc.", 0) == 0;
    testing::expect_close(t, head ? before.at(name) : file.at(name), 0, 0, name);
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int64_t>(before.size()));
  // The two seeds gave different convolutions, so the load did change them.
  const std::string first = model->state_dict()[0].first;
  EXPECT_NE(before.at(first).to_vector(), file.at(first).to_vector()) << first;
}

TEST(InitialWeights, TheSameClassCountLoadsEverythingAndIgnoresTrainingState) {
  const tools::ModelInfo info = info_with_classes(10);
  auto source = seeded_model(info, 3);
  const std::string path = temp_path("same_classes.safetensors");
  tools::save_checkpoint(path, *source, info, {{"__optim__.step", Tensor::scalar(7.0, DType::I64)}});
  auto model = seeded_model(info, 4);
  EXPECT_TRUE(tools::load_initial_weights(path, *model, info).empty());
  const auto file = state_of(*source);
  for (const auto& [name, t] : model->state_dict()) testing::expect_close(t, file.at(name), 0, 0, name);
}

TEST(InitialWeights, WhatDoesNotFitIsNamed) {
  const tools::ModelInfo info = info_with_classes(10);
  auto model = seeded_model(info, 5);
  const auto state = model->state_dict();
  auto write = [&](const std::string& name, const nn::NamedTensors& tensors, const io::Metadata& meta = {}) {
    const std::string path = temp_path(name + ".safetensors");
    io::save_safetensors(path, tensors, meta);
    return path;
  };

  nn::NamedTensors missing(state.begin() + 1, state.end());
  std::string e = load_error(write("missing", missing), *model, info);
  EXPECT_TRUE(contains(e, "missing " + state[0].first)) << e;

  nn::NamedTensors extra = state;
  extra.emplace_back("head2.weight", Tensor::zeros({2, 2}));
  e = load_error(write("extra", extra), *model, info);
  EXPECT_TRUE(contains(e, "unexpected head2.weight")) << e;

  nn::NamedTensors wide_stem = state;
  wide_stem[0].second = Tensor::zeros({wide_stem[0].second.size(0), 1, 7, 7});  // an ImageNet-style 7x7 stem
  e = load_error(write("wide_stem", wide_stem), *model, info);
  EXPECT_TRUE(contains(e, state[0].first + " has shape [")) << e;
  EXPECT_TRUE(contains(e, "--image-size 224 builds the ImageNet one")) << "the CIFAR stem hint: " << e;

  nn::NamedTensors rgb_stem = state;  // weights of a 3-channel run: the hint names the channels, not the stem
  const Tensor& stem = rgb_stem[0].second;
  rgb_stem[0].second = Tensor::zeros({stem.size(0), 3, stem.size(2), stem.size(3)});
  e = load_error(write("rgb_stem", rgb_stem), *model, info);
  EXPECT_TRUE(contains(e, "the checkpoint reads 3-channel images, this run's data has 1")) << e;

  e = load_error(write("unrelated", {{"encoder.w", Tensor::zeros({3})}}), *model, info);
  EXPECT_TRUE(contains(e, "shares no tensor names with cifar10_200k")) << e;

  tools::ModelInfo other = info;
  other.model = "emn_tiny";
  e = load_error(write("other_model", state, other.to_metadata()), *model, info);
  EXPECT_TRUE(contains(e, "holds a emn_tiny, not a cifar10_200k")) << e;

  other = info;
  other.quantized = true;
  e = load_error(write("quantized", state, other.to_metadata()), *model, info);
  EXPECT_TRUE(contains(e, "is quantized (int8)")) << e;

  e = load_error(temp_path("absent.safetensors"), *model, info);
  EXPECT_TRUE(contains(e, "--initial-checkpoint not found")) << e;
}

// A torchvision state_dict written by tools/torch_weights.py loads into the
// zoo's model of the same name; the 1000-class classifier stays fresh.
TEST(InitialWeights, TorchvisionStateDictFromTorchWeightsScript) {
  const std::string py = testing::python_with_torch();
  if (py.empty()) GTEST_SKIP() << "python3 with torch not found; skipping the torchvision weights check";
  const std::string path = temp_path("mobilenet_v3_small_tv.safetensors");
  ASSERT_EQ(testing::run_python(py, "tools/torch_weights.py", "mobilenet_v3_small " + path + " --random --seed 3"), 0);
  tools::ModelInfo info = info_with_classes(10);
  info.model = "mobilenet_v3_small";
  info.in_channels = 3;
  info.height = info.width = 32;
  auto model = seeded_model(info, 6);
  std::vector<std::string> fresh = tools::load_initial_weights(path, *model, info);
  std::sort(fresh.begin(), fresh.end());
  ASSERT_EQ(fresh.size(), 2u);
  EXPECT_EQ(fresh[1], "classifier.3.weight [10,1024] (file: [1000,1024])") << fresh[1];
  const io::SafetensorsContents file = io::load_safetensors(path);
  for (const auto& [name, t] : model->state_dict()) {
    if (name.rfind("classifier.3.", 0) == 0) continue;
    testing::expect_close(t, file.at(name), 0, 0, name);
  }
  // It is a whole checkpoint too: torchvision's input size, normalization and class names.
  const tools::LoadedModel loaded = tools::load_checkpoint(path);
  EXPECT_EQ(loaded.info.model, "mobilenet_v3_small");
  EXPECT_EQ(loaded.info.num_classes, 1000);
  EXPECT_EQ(loaded.info.height, 224);
  EXPECT_FALSE(loaded.info.cifar_stem);
  ASSERT_EQ(loaded.info.classes.size(), 1000u);
  EXPECT_EQ(loaded.info.classes[0], "tench");
  ASSERT_EQ(loaded.info.mean.size(), 3u);
  EXPECT_NEAR(loaded.info.mean[0], 0.485, 1e-6);
  EXPECT_NEAR(loaded.info.std[2], 0.225, 1e-6);
  EXPECT_NEAR(loaded.info.crop_fraction, 224.0 / 256.0, 1e-12);  // torchvision's Resize(256) + CenterCrop(224)
}

// A run started from another run's checkpoint begins where that one ended: at
// a learning rate of ~0 its weights stay those of the checkpoint.
TEST(InitialWeights, TrainingStartsFromTheCheckpoint) {
  const std::string data = testing::write_pattern_folder_dataset("initial_weights_data");
  tools::TrainConfig first = testing::pattern_folder_config(data, "initial_weights_first", "cpu");
  const tools::TrainSummary a = tools::train(first);
  ASSERT_TRUE(a.completed);

  tools::TrainConfig second = testing::pattern_folder_config(data, "initial_weights_second", "cpu");
  second.initial_checkpoint = a.out_dir + "/last.safetensors";
  second.epochs = 1;
  second.lr = 1e-12;
  second.warmup_epochs = 0;
  const tools::TrainSummary b = tools::train(second);
  ASSERT_TRUE(b.completed);
  const io::SafetensorsContents start = io::load_safetensors(second.initial_checkpoint);
  const io::SafetensorsContents end = io::load_safetensors(b.out_dir + "/last.safetensors");
  int64_t weights = 0;
  for (const auto& [name, t] : end.tensors) {
    if (tools::is_training_state_name(name) || contains(name, "running_") || contains(name, "num_batches")) continue;
    testing::expect_close(t, start.at(name), 1e-7, 1e-6, name);
    ++weights;
  }
  EXPECT_GT(weights, 10);

  EXPECT_THROW(
      {
        tools::TrainConfig bad = second;
        bad.out = temp_path("initial_weights_bad");
        bad.initial_checkpoint = temp_path("nowhere.safetensors");
        tools::train(bad);
      },
      IOError);
}

}  // namespace
}  // namespace kestrel
