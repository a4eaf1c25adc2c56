// train --checkpoint-hist's choice of epochs and their files
// (tools/lib/checkpoint_history.h), and their average
// (tools/lib/checkpoint_average.h, kestrel average).
#include <filesystem>
#include <fstream>

#include "engine/random.h"
#include "test_util.h"
#include "tools/lib/checkpoint_average.h"
#include "tools/lib/checkpoint_history.h"
#include "tools/lib/run_state.h"

using namespace kestrel;
using tools::CheckpointHistory;

namespace {

std::vector<int64_t> kept_epochs(const CheckpointHistory& h) {
  std::vector<int64_t> epochs;
  for (const tools::KeptCheckpoint& k : h.kept()) epochs.push_back(k.epoch);
  return epochs;
}

tools::ModelInfo small_model_info() {
  tools::ModelInfo info;
  info.model = "cifar10_200k";
  info.num_classes = 3;
  info.in_channels = 1;
  info.height = info.width = 8;
  info.cifar_stem = true;
  info.width_mult = 0.25;
  info.classes = {"a", "b", "c"};
  info.mean = {0.5f};
  info.std = {0.25f};
  return info;
}

// A checkpoint of `info`'s model with every float tensor random (seeded) and
// every integer buffer (num_batches_tracked) set to `count`.
std::string random_checkpoint(const std::string& name, const tools::ModelInfo& info, uint64_t seed, int64_t count) {
  nn::ModulePtr model = tools::build_from_info(info);
  Generator gen(seed);
  for (auto& [tensor_name, t] : model->state_dict()) {
    if (is_floating(t.dtype()))
      t.copy_(Tensor::randn(t.shape(), gen));
    else
      t.copy_(Tensor::full(t.shape(), static_cast<double>(count), t.dtype()));
  }
  const std::string path = kestrel::testing::temp_path(name + ".safetensors");
  tools::save_checkpoint(path, *model, info);
  return path;
}

}  // namespace

TEST(CheckpointHistory, KeepsTheBestEpochsBestFirstAndNamesTheOneItDrops) {
  CheckpointHistory h(3);
  EXPECT_TRUE(h.offer(1, 0.50).keep);
  EXPECT_TRUE(h.offer(2, 0.70).keep);
  const CheckpointHistory::Decision third = h.offer(3, 0.60);
  EXPECT_TRUE(third.keep);
  EXPECT_EQ(third.dropped_epoch, 0) << "room for three";
  EXPECT_EQ(kept_epochs(h), (std::vector<int64_t>{2, 3, 1}));
  const CheckpointHistory::Decision fourth = h.offer(4, 0.65);
  EXPECT_TRUE(fourth.keep);
  EXPECT_EQ(fourth.dropped_epoch, 1);
  EXPECT_EQ(kept_epochs(h), (std::vector<int64_t>{2, 4, 3}));
  const CheckpointHistory::Decision tie = h.offer(5, 0.60);  // ties the worst kept: the earlier stays
  EXPECT_FALSE(tie.keep);
  EXPECT_EQ(tie.dropped_epoch, 0);
  EXPECT_TRUE(h.offer(6, 0.70).keep);  // ties the best: placed after it
  EXPECT_EQ(kept_epochs(h), (std::vector<int64_t>{2, 6, 4}));

  CheckpointHistory off(0);
  EXPECT_FALSE(off.offer(1, 1.0).keep);
  EXPECT_TRUE(off.kept().empty());
  EXPECT_THROW(CheckpointHistory(-1), ValueError);
  EXPECT_EQ(CheckpointHistory::file_name(12), "checkpoint-12.safetensors");
  EXPECT_TRUE(CheckpointHistory::is_file_name("checkpoint-12.safetensors"));
  for (const char* other : {"checkpoint-final.safetensors", "checkpoint-.safetensors", "checkpoint-12.safetensors.tmp",
                            "my-checkpoint-12.safetensors", "checkpoint-1e3.safetensors"})
    EXPECT_FALSE(CheckpointHistory::is_file_name(other)) << other;
}

TEST(CheckpointHistory, RoundTripsThroughTheRunState) {
  CheckpointHistory h(2);
  h.offer(3, -0.25);
  h.offer(4, -0.125);
  tools::RunState s;
  s.kept_checkpoints = h.kept();
  const tools::RunState back = tools::RunState::from_json(nlohmann::json::parse(s.to_json().dump()));
  ASSERT_EQ(back.kept_checkpoints.size(), 2u);
  EXPECT_EQ(back.kept_checkpoints[0].epoch, 4);
  EXPECT_EQ(back.kept_checkpoints[0].score, -0.125);
  EXPECT_EQ(back.kept_checkpoints[1].epoch, 3);
  // A run saved before --checkpoint-hist (or without it) kept none.
  EXPECT_FALSE(tools::RunState().to_json().contains("kept_checkpoints"));
  EXPECT_TRUE(tools::RunState::from_json(tools::RunState().to_json()).kept_checkpoints.empty());
  // Resumed, the history goes on from what was kept.
  CheckpointHistory resumed(2, back.kept_checkpoints);
  EXPECT_EQ(resumed.offer(5, -0.5).keep, false);
  EXPECT_EQ(resumed.offer(6, -0.2).dropped_epoch, 3);
}

TEST(CheckpointAverage, EachFloatTensorIsTheMeanAndEachCounterTheLargest) {
  const tools::ModelInfo info = small_model_info();
  const std::vector<std::string> paths = {random_checkpoint("avg_a", info, 1, 40), random_checkpoint("avg_b", info, 2, 90),
                                          random_checkpoint("avg_c", info, 3, 60)};
  const tools::AveragedModel averaged = tools::average_checkpoints(paths);
  EXPECT_EQ(averaged.info.to_metadata(), info.to_metadata());
  std::vector<nn::NamedTensors> inputs;
  for (const std::string& p : paths) inputs.push_back(tools::load_checkpoint(p).model->state_dict());
  const nn::NamedTensors out = averaged.model->state_dict();
  ASSERT_EQ(out.size(), inputs[0].size());
  size_t floats = 0, counters = 0;
  for (size_t n = 0; n < out.size(); ++n) {
    const Tensor& t = out[n].second;
    EXPECT_EQ(t.dtype(), inputs[0][n].second.dtype()) << out[n].first;
    if (!is_floating(t.dtype())) {
      EXPECT_EQ(t.to_vector_i64(), std::vector<int64_t>(static_cast<size_t>(t.numel()), 90)) << out[n].first;
      ++counters;
      continue;
    }
    const std::vector<float> got = t.to_vector();
    const std::vector<double> a = inputs[0][n].second.to_vector_f64(), b = inputs[1][n].second.to_vector_f64(),
                              c = inputs[2][n].second.to_vector_f64();
    for (size_t i = 0; i < got.size(); ++i)  // the mean in double, rounded once to f32
      ASSERT_EQ(got[i], static_cast<float>((a[i] + b[i] + c[i]) / 3.0)) << out[n].first << "[" << i << "]";
    ++floats;
  }
  EXPECT_GT(floats, 10u);
  EXPECT_GT(counters, 0u) << "the model's batch norms count their batches";
}

TEST(CheckpointAverage, CheckpointsOfAnotherModelOrOtherDataAreRefused) {
  const tools::ModelInfo info = small_model_info();
  const std::string a = random_checkpoint("refuse_a", info, 1, 1);
  tools::ModelInfo wider = info;
  wider.width_mult = 0.5;
  tools::ModelInfo renamed = info;
  renamed.classes = {"a", "b", "d"};
  tools::ModelInfo int8 = info;
  int8.quantized = true;
  const auto message = [&](const tools::ModelInfo& other, const char* name) {
    return kestrel::testing::expect_message_of(
        [&] { tools::average_checkpoints({a, random_checkpoint(name, other, 2, 1)}); });
  };
  EXPECT_NE(message(wider, "refuse_wider").find("is cifar10_200k (width 0.5, depth 1, 3 classes, 1x8x8 input, CIFAR "
                                                "stem) but"),
            std::string::npos);
  EXPECT_NE(message(renamed, "refuse_renamed").find("were trained on other data"), std::string::npos);
  EXPECT_NE(message(int8, "refuse_int8").find("is an int8 (qat) checkpoint"), std::string::npos);
  EXPECT_NE(kestrel::testing::expect_message_of([&] { tools::average_checkpoints({a}); })
                .find("needs at least two checkpoints, got 1"),
            std::string::npos);
}

TEST(CheckpointHistory, ARunFolderGivesItsKeptCheckpointsBestFirst) {
  const std::string run = kestrel::testing::temp_path("kept_run");
  std::filesystem::create_directories(run);
  const auto message = [&](int64_t top) {
    return kestrel::testing::expect_message_of([&] { tools::kept_checkpoint_paths(run, top); });
  };
  EXPECT_NE(kestrel::testing::expect_message_of<IOError>([&] { tools::kept_checkpoint_paths(run, 0); })
                .find("has no state.json (not a kestrel train run folder)"),
            std::string::npos);
  tools::RunState s;
  const auto write_state = [&] { std::ofstream(run + "/state.json") << s.to_json().dump(2); };
  write_state();
  EXPECT_NE(message(0).find("kept no epoch checkpoints (train with --checkpoint-hist N"), std::string::npos);
  s.kept_checkpoints = {{7, 0.9}, {5, 0.8}, {6, 0.7}};
  write_state();
  const std::string dir = std::filesystem::path(run).string() + "/";
  EXPECT_EQ(tools::kept_checkpoint_paths(run, 0),
            (std::vector<std::string>{dir + "checkpoint-7.safetensors", dir + "checkpoint-5.safetensors",
                                      dir + "checkpoint-6.safetensors"}));
  EXPECT_EQ(tools::kept_checkpoint_paths(run, 2),
            (std::vector<std::string>{dir + "checkpoint-7.safetensors", dir + "checkpoint-5.safetensors"}));
  EXPECT_NE(message(4).find("--top must be from 2 to the 3 checkpoints"), std::string::npos);
  EXPECT_NE(message(1).find("--top must be from 2"), std::string::npos);
  EXPECT_NE(message(-1).find("--top must be from 2"), std::string::npos);
  s.kept_checkpoints = {{7, 0.9}};
  write_state();
  EXPECT_NE(message(0).find("kept one epoch (--checkpoint-hist 1)"), std::string::npos);
  std::ofstream(run + "/state.json") << "{not json";
  EXPECT_NE(kestrel::testing::expect_message_of<IOError>([&] { tools::kept_checkpoint_paths(run, 0); })
                .find("state.json is malformed"),
            std::string::npos);
}

TEST(CheckpointHistory, OnlyEpochFilesTheStateDoesNotListAreRemoved) {
  const std::string run = kestrel::testing::temp_path("unlisted_run");
  std::filesystem::create_directories(run);
  for (const char* name : {"checkpoint-3.safetensors", "checkpoint-4.safetensors", "checkpoint-5.safetensors",
                           "checkpoint-final.safetensors", "best.safetensors"})
    std::ofstream(run + "/" + name) << "x";
  EXPECT_EQ(tools::remove_unlisted_epoch_files(run, {{5, 0.9}, {3, 0.8}}), 1);
  for (const char* name : {"checkpoint-3.safetensors", "checkpoint-5.safetensors", "checkpoint-final.safetensors",
                           "best.safetensors"})
    EXPECT_TRUE(std::filesystem::exists(run + "/" + name)) << name;
  EXPECT_FALSE(std::filesystem::exists(run + "/checkpoint-4.safetensors"));
}
