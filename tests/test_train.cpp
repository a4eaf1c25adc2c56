// End-to-end training on real data (Fashion-MNIST from the Debian package).
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "cuda_parity.h"
#include "data/loader.h"
#include "data/pinned_batch.h"
#include "engine/io/safetensors.h"
#include "test_util.h"
#include "train_run_util.h"
#include "tools/lib/datasets.h"
#include "tools/lib/device_select.h"
#include "tools/lib/qat.h"
#include "tools/lib/run_state.h"
#include "tools/lib/trainer.h"

using namespace kestrel;
namespace fs = std::filesystem;

namespace {

// Rewrites a run's last.safetensors as a Kestrel from before `keys` existed
// saved it: its run state's config without them.
void save_without_config_keys(const std::string& out, const std::vector<std::string>& keys) {
  io::SafetensorsContents last = io::load_safetensors(out + "/last.safetensors");
  nlohmann::json state = nlohmann::json::parse(last.metadata.at(tools::kRunStateKey));
  for (const std::string& key : keys) {
    ASSERT_TRUE(state["config"].contains(key)) << key << " in " << state.dump();
    state["config"].erase(key);
  }
  last.metadata[tools::kRunStateKey] = state.dump();
  io::save_safetensors(out + "/last.safetensors", last.tensors, last.metadata);
}

// `kestrel eval` (untimed) of a run's checkpoint with `flags`, and the
// report.json it wrote into the run folder's `report_dir`.
nlohmann::json eval_report(const std::string& out, const std::string& checkpoint, const std::string& report_dir,
                           const std::string& flags = "") {
  const auto r = kestrel::testing::kestrel_cli("eval -c " + out + "/" + checkpoint +
                                               " --latency-iters 0 --no-progress " + flags);
  EXPECT_EQ(r.rc, 0) << r.err;
  return nlohmann::json::parse(kestrel::testing::read_text(out + "/" + report_dir + "/report.json"));
}

}  // namespace

#define REQUIRE_FASHION_MNIST()                                                           \
  if (const std::string why = kestrel::testing::fashion_mnist_skip_reason(); !why.empty()) \
  GTEST_SKIP() << why

TEST(Train, LossFallsAndAccuracyBeatsChanceOnFashionMnist) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig c = kestrel::testing::fashion_mnist_config("learns");
  c.limit_train = 2048;
  c.epochs = 3;
  const tools::TrainSummary s = tools::train(c);
  ASSERT_TRUE(s.completed);
  const std::vector<nlohmann::json> rows = kestrel::testing::read_metrics_jsonl(c.out);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_LT(rows.back()["train_loss"].get<double>(), 0.8 * rows.front()["train_loss"].get<double>());
  EXPECT_GT(s.best_top1, 0.5) << "10 classes: chance is 0.1";
  for (const char* f : {"last.safetensors", "best.safetensors", "metrics.csv", "curves.png", "config.json",
                        "state.json"})
    EXPECT_TRUE(fs::exists(c.out + "/" + f)) << f;
  bool has_events = false;
  for (const auto& e : fs::directory_iterator(c.out + "/tb"))
    has_events |= e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_TRUE(has_events);
}

// The state --resume reads: every field back as written; the mid-epoch part
// only when there is one; a run saved before best_epoch_number still reads.
TEST(RunState, RoundTripsMidEpochStateAndReadsOlderRuns) {
  tools::RunState s;
  s.config = {{"model", "emn_tiny"}};
  s.next_epoch = 3;
  s.global_step = 1234;
  s.stale_epochs = 1;
  s.best_epoch = 1;
  s.best_top1 = 0.8125;
  s.history = nlohmann::json::array({{{"epoch", 1}}, {{"epoch", 2}}});
  s.generator_seed = 18446744073709551615ull;  // 2^64 - 1: a seed is any uint64
  s.generator_offset = 77;
  nlohmann::json j = s.to_json();
  EXPECT_FALSE(j.contains("resume_batch"));
  EXPECT_FALSE(j.contains("epoch_tally"));
  EXPECT_EQ(j["best_epoch_number"], 2);  // counted from 1, as printed

  s.resume_batch = 17;
  s.epoch_sums = {0.1 + 0.2, 100, 128, 96};  // a sum that is not a short decimal
  s.epoch_skipped_steps = 2;
  const tools::RunState back = tools::RunState::from_json(nlohmann::json::parse(s.to_json().dump()));
  EXPECT_EQ(back.config, s.config);
  EXPECT_EQ(back.next_epoch, 3);
  EXPECT_EQ(back.global_step, 1234);
  EXPECT_EQ(back.stale_epochs, 1);
  EXPECT_EQ(back.best_epoch, 1);
  EXPECT_EQ(back.best_top1, 0.8125);
  EXPECT_EQ(back.history, s.history);
  EXPECT_EQ(back.generator_seed, s.generator_seed);
  EXPECT_EQ(back.generator_offset, 77u);
  EXPECT_EQ(back.resume_batch, 17);
  EXPECT_EQ(back.epoch_sums.loss_sum, 0.1 + 0.2) << "bit for bit, so a resumed epoch's loss is the same";
  EXPECT_EQ(back.epoch_sums.loss_seen, 100);
  EXPECT_EQ(back.epoch_sums.seen, 128);
  EXPECT_EQ(back.epoch_sums.correct, 96);
  EXPECT_EQ(back.epoch_skipped_steps, 2);

  j.erase("best_epoch_number");
  j["best_epoch"] = 1;  // older runs: counted from 0
  EXPECT_EQ(tools::RunState::from_json(j).best_epoch, 1);
  EXPECT_EQ(tools::RunState::from_json(j).resume_batch, 0);
}

// Killed (no warning) or interrupted (Ctrl-C: here the run sends itself
// SIGINT), both in the middle of epoch 2, and resumed: the weights of the run
// never stopped, bit for bit; the interrupted run saved mid-epoch, so its
// metrics are the unstopped run's too.
TEST(Train, KilledOrInterruptedRunResumesToTheUninterruptedRun) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig full = kestrel::testing::fashion_mnist_config("uninterrupted");
  full.limit_train = 512;
  full.ema = 0.99;
  full.mixup = 0.5;
  full.drop_path = 0.0;
  full.dropout = 0.3;   // draws from the init generator: its offset must be saved mid-epoch
  full.grad_accum = 3;  // 8 batches per epoch: steps after batches 3 and 6, 2 micro-batches left over
  ASSERT_TRUE(tools::train(full).completed);

  const std::string killed = kestrel::testing::kill_then_resume(full, "killed", 3);
  kestrel::testing::expect_checkpoints_match(full.out + "/last.safetensors", killed + "/last.safetensors", 0.0, 0.0,
                                             "killed, resumed on the CPU");

  const auto full_rows = kestrel::testing::read_metrics_jsonl(full.out);
  // Where a stopped run saved itself; then resumed, it ends as `full` did.
  auto expect_saved_at = [](const std::string& out, int64_t next_epoch, int64_t batch, int64_t step) {
    const nlohmann::json state = nlohmann::json::parse(kestrel::testing::read_text(out + "/state.json"));
    EXPECT_EQ(state["next_epoch"], next_epoch) << out;
    EXPECT_EQ(state["resume_batch"], batch) << out;
    EXPECT_EQ(state["global_step"], step) << out;
  };
  auto resume_and_compare = [&](tools::TrainConfig c, const std::string& what) {
    c.interrupt_after_steps = c.stop_after_steps = 0;
    c.overwrite = false;
    c.resume = true;
    ASSERT_TRUE(tools::train(c).completed) << what;
    kestrel::testing::expect_checkpoints_match(full.out + "/last.safetensors", c.out + "/last.safetensors", 0.0, 0.0,
                                               what);
    const auto rows = kestrel::testing::read_metrics_jsonl(c.out);
    ASSERT_EQ(rows.size(), 2u) << what;
    for (const char* key : {"train_loss", "train_top1", "val_loss", "val_top1", "lr"})
      EXPECT_EQ(rows[1][key], full_rows[1][key]) << what << ", " << key << ": epoch 2 sums both parts";
  };

  struct sigaction before {};
  sigaction(SIGINT, nullptr, &before);
  tools::TrainConfig stopped = full;
  stopped.out = kestrel::testing::temp_path("interrupt_stopped");
  stopped.interrupt_after_steps = 3;
  const tools::TrainSummary s = tools::train(stopped);
  EXPECT_FALSE(s.completed);
  EXPECT_EQ(s.interrupted_by, SIGINT);
  EXPECT_EQ(s.global_step, 3);
  struct sigaction after {};
  sigaction(SIGINT, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before.sa_handler) << "the run gives SIGINT back as it found it";
  expect_saved_at(stopped.out, 1, 3, 3);
  EXPECT_EQ(kestrel::testing::read_metrics_jsonl(stopped.out).size(), 1u);
  resume_and_compare(stopped, "interrupted, resumed");

  // Saving after every step, killed after the last one (4: before its save):
  // the run resumes from step 3 (epoch 2, batch 3), not from epoch 1's end.
  tools::TrainConfig saving = full;
  saving.out = kestrel::testing::temp_path("killed_saving");
  saving.save_every_steps = 1;
  saving.stop_after_steps = 4;
  EXPECT_FALSE(tools::train(saving).completed);
  expect_saved_at(saving.out, 1, 3, 3);
  resume_and_compare(saving, "saved every step, killed, resumed");
}

// --precise-bn recomputes the running statistics before each evaluation and
// gives back dropout's draws: the training itself is the same, bit for bit.
TEST(Train, PreciseBatchNormChangesOnlyTheStatisticsAndResumesExactly) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig plain = kestrel::testing::fashion_mnist_config("precise_bn_off");
  plain.limit_train = 512;  // 8 steps an epoch
  plain.dropout = 0.3;      // draws from the init generator in the recomputing pass too
  ASSERT_TRUE(tools::train(plain).completed);
  tools::TrainConfig precise = plain;
  precise.out = kestrel::testing::temp_path("precise_bn_on");
  precise.precise_bn = 3;
  ASSERT_TRUE(tools::train(precise).completed);

  const io::SafetensorsContents a = io::load_safetensors(plain.out + "/last.safetensors");
  const io::SafetensorsContents b = io::load_safetensors(precise.out + "/last.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  int statistics = 0, statistics_changed = 0;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const std::string& name = a.tensors[i].first;
    ASSERT_EQ(name, b.tensors[i].first);
    const bool statistic = name.find("running_") != std::string::npos && name.rfind("__", 0) != 0;
    const bool same = a.tensors[i].second.to_vector_f64() == b.tensors[i].second.to_vector_f64();
    if (statistic) {
      ++statistics;
      statistics_changed += !same;
    } else {
      EXPECT_TRUE(same) << name << " differs: --precise-bn must not change the training";
    }
  }
  EXPECT_GT(statistics, 0);
  EXPECT_EQ(statistics_changed, statistics) << "every norm's statistics are recomputed";
  const auto plain_rows = kestrel::testing::read_metrics_jsonl(plain.out);
  const auto precise_rows = kestrel::testing::read_metrics_jsonl(precise.out);
  ASSERT_EQ(precise_rows.size(), 2u);
  EXPECT_EQ(precise_rows[1]["train_loss"], plain_rows[1]["train_loss"]);
  EXPECT_NE(precise_rows[1]["val_loss"], plain_rows[1]["val_loss"]);

  // Killed in epoch 2 (after epoch 1's recomputation), resumed: the same.
  const std::string resumed = kestrel::testing::kill_then_resume(precise, "precise_bn_killed", 11);
  kestrel::testing::expect_checkpoints_match(precise.out + "/last.safetensors", resumed + "/last.safetensors", 0.0,
                                             0.0, "--precise-bn resumed");
}

// SGD at lr 0.1 on 2,048 images (16 steps an epoch): the momentum statistics
// lag, the val loss reads many times the train loss, and the run says what to do.
TEST(Train, AValLossFarAboveTheTrainLossPointsToPreciseBatchNorm) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig c = kestrel::testing::fashion_mnist_config("bn_lag");
  c.limit_train = 2048;
  c.lr = 0.1;
  c.batch_size = 128;
  c.schedule = "step";
  c.warmup_epochs = 1.0;
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(tools::train(c).completed);
  const std::string lagging = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(lagging.find("note: val loss"), std::string::npos) << lagging;
  EXPECT_NE(lagging.find("--precise-bn 100"), std::string::npos) << lagging;

  c.out = kestrel::testing::temp_path("bn_lag_precise");
  c.precise_bn = 16;
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(tools::train(c).completed);
  const std::string precise = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(precise.find("note: val loss"), std::string::npos) << precise;
  const auto rows = kestrel::testing::read_metrics_jsonl(c.out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_LT(rows[1]["val_loss"].get<double>(), 2.0 * rows[1]["train_loss"].get<double>());
}

TEST(Train, TheResidentLoaderTrainsToTheSameWeightsAndResumesAThreadedRun) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig threads = kestrel::testing::fashion_mnist_config("loader_threads");
  threads.limit_train = 384;
  threads.cutout = 0.5;
  threads.cutmix = 0.3;
  threads.mixup = 0.3;
  threads.ricap = 0.3;
  threads.loader = "threads";
  ASSERT_TRUE(tools::train(threads).completed);
  tools::TrainConfig resident = threads;
  resident.loader = "resident";
  resident.out = kestrel::testing::temp_path("loader_resident");
  ASSERT_TRUE(tools::train(resident).completed);
  kestrel::testing::expect_checkpoints_match(threads.out + "/last.safetensors", resident.out + "/last.safetensors",
                                             0.0, 0.0, "resident vs threaded loader");

  // Killed under one loader, resumed under the other: the same weights again.
  tools::TrainConfig killed = threads;
  killed.out = kestrel::testing::temp_path("loader_killed");
  killed.stop_after_steps = 7;  // 6 steps per epoch: inside epoch 2
  ASSERT_FALSE(tools::train(killed).completed);
  killed.stop_after_steps = 0;
  killed.overwrite = false;
  killed.resume = true;
  killed.loader = "resident";
  ASSERT_TRUE(tools::train(killed).completed);
  kestrel::testing::expect_checkpoints_match(threads.out + "/last.safetensors", killed.out + "/last.safetensors",
                                             0.0, 0.0, "threaded run resumed on the resident loader");

  // What the resident loader cannot do is named.
  tools::TrainConfig policy = threads;
  policy.out = kestrel::testing::temp_path("loader_policy");
  policy.loader = "resident";
  policy.auto_augment = true;
  try {
    tools::train(policy);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("--loader resident cannot be used: --auto-augment runs on the host"),
              std::string::npos)
        << e.what();
  }
}

// Every host augmentation draws from the per-image generators the loader
// seeds from (seed, epoch, index): a run stopped mid-epoch and resumed sees
// the same augmented images and ends with the same weights, bit for bit.
TEST(Train, EveryImageAugmentationResumesMidEpochToTheUninterruptedRun) {
  const std::string data = kestrel::testing::write_pattern_folder_dataset("augment_resume_data");
  tools::TrainConfig full = kestrel::testing::pattern_folder_config(data, "augment_resume_full", "cpu");
  full.shift_scale_rotate = 0.5;
  full.rotation = 20;
  full.color_jitter = "0.3,0.3,0.3,0.05";
  full.brightness_contrast = 0.5;
  full.hsv_shift = 0.5;
  full.randaugment = "2,9";
  full.cutout = 0.5;
  full.cutmix = 0.5;
  full.workers = 2;
  full.save_every_steps = 2;
  ASSERT_TRUE(tools::train(full).completed);
  const std::string resumed = kestrel::testing::kill_then_resume(full, "augment_resume_killed", 9);  // saved at 8
  kestrel::testing::expect_checkpoints_match(full.out + "/last.safetensors", resumed + "/last.safetensors", 0.0, 0.0,
                                             "stopped in epoch 2, resumed from its step-8 save");
}

TEST(Train, ADivergedLossStopsTheRunNamingItsBatch) {
  const std::string data = kestrel::testing::write_pattern_folder_dataset("diverge_data");
  kestrel::testing::expect_run_diverges(kestrel::testing::pattern_folder_config(data, "diverge_run", "cpu"));
}

TEST(Train, AnExistingRunFolderIsNeverOverwrittenWithoutConsent) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig c = kestrel::testing::fashion_mnist_config("existing");
  fs::create_directories(c.out);
  std::ofstream(c.out + "/precious.txt") << "keep";
  c.overwrite = false;
  EXPECT_THROW(tools::train(c), IOError);
  EXPECT_TRUE(fs::exists(c.out + "/precious.txt"));
  c.resume = true;
  EXPECT_THROW(tools::train(c), IOError);  // nothing to resume from
}

TEST(Train, RecipeOptionsTrainWithoutError) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig c = kestrel::testing::fashion_mnist_config("options");
  c.limit_train = 512;
  c.epochs = 1;
  c.optimizer = "adamw";
  c.lr = 2e-3;
  c.cutmix = 0.5;
  c.ricap = 0.5;
  c.label_smoothing = 0.1;
  c.grad_accum = 2;
  c.clip_grad = 1.0;
  c.cutout = 0.5;
  c.randaugment = "2,5";
  c.schedule = "onecycle";
  const tools::TrainSummary s = tools::train(c);
  EXPECT_TRUE(s.completed);
  EXPECT_EQ(s.global_step, 4);  // 8 batches of 64, two per step
  c.loss = "focal";  // on hard labels: no mixing, no smoothing
  c.cutmix = c.ricap = c.label_smoothing = 0;
  c.schedule = "step";
  EXPECT_TRUE(tools::train(c).completed);
}

TEST(Train, BadSettingsAreClearErrors) {
  tools::TrainConfig c = kestrel::testing::fashion_mnist_config("bad");
  c.optimizer = "lbfgs";
  try {
    tools::train(c);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("sgd, adamw"), std::string::npos) << e.what();
  }
  c = kestrel::testing::fashion_mnist_config("bad2");
  c.epochs = 0;
  EXPECT_THROW(tools::train(c), ValueError);
  c = kestrel::testing::fashion_mnist_config("bad3");
  c.amp = "fp16";  // small_config runs on the CPU
  try {
    tools::train(c);
    FAIL() << "expected ValueError for --amp fp16 on the CPU";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("mixed precision needs a CUDA device"), std::string::npos) << e.what();
  }
  c = kestrel::testing::fashion_mnist_config("bad4");
  c.data_dir = "/nonexistent/data";
  EXPECT_THROW(tools::train(c), IOError);
  c = kestrel::testing::fashion_mnist_config("bad5");
  c.model = "resnet9000";
  EXPECT_THROW(tools::train(c), ValueError);
  c = kestrel::testing::fashion_mnist_config("bad6");
  c.precise_bn = -1;
  EXPECT_THROW(tools::train(c), ValueError);
}

TEST(Train, DeviceFlagResolvesAutoAndRefusesWhatIsNotThere) {
  const bool have_cuda = kestrel::testing::cuda_skip_reason().empty();
  EXPECT_EQ(tools::resolve_device("cpu"), Device::cpu());
  EXPECT_EQ(tools::resolve_device("auto"), have_cuda ? Device::cuda(0) : Device::cpu());
  EXPECT_THROW(tools::resolve_device("tpu"), ValueError);
  EXPECT_THROW(tools::resolve_device("cuda:x"), ValueError);
  if (have_cuda) {
    EXPECT_EQ(tools::resolve_device("cuda"), Device::cuda(0));
    EXPECT_THROW(tools::resolve_device("cuda:4096"), DeviceError);
    return;
  }
  for (const char* flag : {"cuda", "cuda:0", "cuda:1"}) {
    try {
      tools::resolve_device(flag);
      FAIL() << "expected DeviceError for --device " << flag;
    } catch (const DeviceError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("--device ") + flag), std::string::npos) << e.what();
    }
  }
}

TEST(Train, CudaWithoutAGpuFailsBeforeTouchingTheRunFolder) {
  if (kestrel::testing::cuda_skip_reason().empty()) GTEST_SKIP() << "a CUDA device is present";
  tools::TrainConfig c = kestrel::testing::fashion_mnist_config("no_gpu");
  fs::remove_all(c.out);
  c.device = "cuda";
  EXPECT_THROW(tools::train(c), DeviceError);
  EXPECT_FALSE(fs::exists(c.out));
}

TEST(Train, PinMemoryLeavesBatchesAsTheyAreAndStagesThemOnlyWithAGpu) {
  class Synthetic : public data::Dataset {
   public:
    Synthetic() { classes_ = {"a", "b"}; }
    int64_t size() const override { return 11; }
    data::Example get(int64_t i) const override {
      data::Example e;
      e.image = {3, 4, 2, std::vector<uint8_t>(24, static_cast<uint8_t>(i * 9))};
      e.label = i % 2;
      return e;
    }
  };
  auto ds = std::make_shared<Synthetic>();
  data::LoaderOptions lo;
  lo.batch_size = 4;
  lo.num_workers = 1;
  data::LoaderOptions pinned_lo = lo;
  pinned_lo.pin_memory = true;
  data::DataLoader plain(ds, lo, {}, data::cutmix(1.0, 2)), pinned(ds, pinned_lo, {}, data::cutmix(1.0, 2));
  plain.start_epoch(0);
  pinned.start_epoch(0);
  data::Batch a, b;
  int batches = 0;
  while (plain.next(a)) {
    ASSERT_TRUE(pinned.next(b));
    EXPECT_EQ(a.pinned, nullptr);
    EXPECT_EQ(b.pinned != nullptr, data::pinned_memory_available());
    EXPECT_EQ(a.images.to_vector(), b.images.to_vector());
    EXPECT_EQ(a.labels.to_vector_i64(), b.labels.to_vector_i64());
    EXPECT_EQ(a.targets.to_vector(), b.targets.to_vector());
    // On the CPU the "device" batch is the batch itself, no copy.
    const data::DeviceBatch d = data::copy_batch_to_device(b, Device::cpu());
    EXPECT_TRUE(d.images.shares_storage_with(b.images));
    EXPECT_TRUE(d.labels.shares_storage_with(b.labels));
    ++batches;
  }
  EXPECT_EQ(batches, 3);
  EXPECT_EQ(data::pinned_memory_available(), kestrel::testing::cuda_skip_reason().empty());
}

// --limit-train on an image folder (listed class by class) samples every
// class, evenly spaced; on the official (shuffled) files it is the first N.
TEST(Datasets, LimitOnAnImageFolderSpreadsOverItsClasses) {
  const std::string root = kestrel::testing::write_pattern_folder_dataset("limit_folder");
  const auto full = tools::open_dataset("folder", root, data::Split::Train, false, 0);
  const auto limited = tools::open_dataset("folder", root, data::Split::Train, false, 6);
  ASSERT_EQ(limited->size(), 6);
  std::vector<int64_t> per_class(3, 0);
  for (int64_t i = 0; i < limited->size(); ++i) ++per_class[limited->get(i).label];
  EXPECT_EQ(per_class, (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(limited->get(1).image.pixels, full->get(full->size() / 6).image.pixels);
  if (kestrel::testing::fashion_mnist_skip_reason().empty()) {
    const auto fm = tools::open_dataset("fashion-mnist", "", data::Split::Test, false, 3);
    const auto fm_full = tools::open_dataset("fashion-mnist", "", data::Split::Test, false, 0);
    EXPECT_EQ(fm->get(2).image.pixels, fm_full->get(2).image.pixels);
  }
}

// A folder of class folders alone is split per class: --test-split of each
// class is held out, the rest trains, and no image is in both.
TEST(Datasets, TestSplitHoldsOutThatFractionOfEveryClass) {
  const std::string classes_only = kestrel::testing::write_pattern_folder_dataset("split_folder") + "/train";
  const auto train = tools::open_dataset("folder", classes_only, data::Split::Train, false, 0, 0.25);
  const auto test = tools::open_dataset("folder", classes_only, data::Split::Test, false, 0, 0.25);
  ASSERT_EQ(test->size(), 9);  // 3 of each class's 12
  ASSERT_EQ(train->size(), 27);
  std::vector<int64_t> per_class(3, 0);
  for (int64_t i = 0; i < test->size(); ++i) ++per_class[test->label(i)];
  EXPECT_EQ(per_class, (std::vector<int64_t>{3, 3, 3}));
  for (int64_t i = 0; i < test->size(); ++i)
    for (int64_t j = 0; j < train->size(); ++j)
      ASSERT_NE(test->get(i).image.pixels, train->get(j).image.pixels) << "test image " << i << " also trains";
  EXPECT_EQ(tools::open_dataset("folder", classes_only, data::Split::Test, false, 0)->size(), 3);  // 10% by default
}

// eval and qat read a run's test split, not the default one.
TEST(Train, TheRunsTestSplitIsTheOneEvalAndQatRead) {
  const std::string classes_only = kestrel::testing::write_pattern_folder_dataset("split_run") + "/train";
  tools::TrainConfig c = kestrel::testing::pattern_folder_config(classes_only, "split_run_out", "cpu");
  c.epochs = 1;
  c.width_mult = 0.25;
  c.test_split = 0.5;
  ASSERT_TRUE(tools::train(c).completed);
  const nlohmann::json report = eval_report(c.out, "best.safetensors", "eval");
  EXPECT_EQ(report["images"].get<int64_t>(), 18);  // half of each class's 12

  tools::TrainConfig q;
  q.quantize_from = c.out + "/best.safetensors";
  tools::configure_from_float_checkpoint(q, nlohmann::json::object());
  EXPECT_EQ(q.dataset, "folder");
  EXPECT_EQ(q.test_split, 0.5);
}

// Training's validation and kestrel eval read the test images alike, also
// when they shrink them by more than 2x (40 px to 9: 4x4 blocks averaged first).
TEST(Train, ValidationAndEvalResizeTheTestImagesAlike) {
  const std::string folder = kestrel::testing::write_pattern_folder_dataset("resize_alike", 40);
  tools::TrainConfig c = kestrel::testing::pattern_folder_config(folder, "resize_alike_out", "cpu");
  c.epochs = 1;
  c.width_mult = 0.25;
  c.image_size = 9;
  ASSERT_TRUE(tools::train(c).completed);
  const nlohmann::json last = kestrel::testing::read_metrics_jsonl(c.out).back();
  const nlohmann::json report = eval_report(c.out, "best.safetensors", "eval");
  EXPECT_NEAR(report["loss"].get<double>(), last["val_loss"].get<double>(), 1e-5 * last["val_loss"].get<double>());
  EXPECT_NEAR(report["top1"].get<double>(), last["val_top1"].get<double>(), 1e-9);
}

// --crop-pct: validation and eval (and predict: the same model_input_transform)
// read the same centre crop, saved in the checkpoint; eval --crop-pct reads
// another into its own folder. The
// run trains on random resized crops, and qat evaluates as its float model.
TEST(Train, CropPctIsSavedAndReadAlikeByValidationAndEval) {
  const std::string folder = kestrel::testing::write_pattern_folder_dataset("crop_pct", 40);
  tools::TrainConfig c = kestrel::testing::pattern_folder_config(folder, "crop_pct_out", "cpu");
  c.epochs = 1;
  c.width_mult = 0.25;
  c.image_size = 9;
  c.crop_pct = 0.5;
  c.random_resized_crop = "0.2,1";
  ASSERT_TRUE(tools::train(c).completed);
  const tools::ModelInfo info = tools::ModelInfo::from_metadata(
      io::load_safetensors_metadata(c.out + "/best.safetensors"), c.out + "/best.safetensors");
  EXPECT_EQ(info.crop_fraction, 0.5);
  const nlohmann::json last = kestrel::testing::read_metrics_jsonl(c.out).back();
  const double val_loss = last["val_loss"].get<double>();
  const nlohmann::json own = eval_report(c.out, "best.safetensors", "eval");
  EXPECT_NEAR(own["loss"].get<double>(), val_loss, 1e-5 * val_loss);
  EXPECT_EQ(own["crop_pct"].get<double>(), 0.5);
  const nlohmann::json whole = eval_report(c.out, "best.safetensors", "eval-crop1", "--crop-pct 1");
  EXPECT_EQ(whole["crop_pct"].get<double>(), 1.0);
  EXPECT_GT(std::abs(whole["loss"].get<double>() - val_loss), 1e-4) << "the whole image is another input";
  EXPECT_NE(kestrel::testing::read_text(c.out + "/eval-crop1/report.md").find("9x9x3, TTA"), std::string::npos);
  EXPECT_NE(kestrel::testing::read_text(c.out + "/eval/report.md").find("9x9x3 (centre crop 0.5)"),
            std::string::npos);
  for (const std::string command : {"eval", "predict"})
    for (const char* value : {"1.5", "0"}) {
      const auto bad = kestrel::testing::kestrel_cli(command + " -c " + c.out + "/best.safetensors --crop-pct " +
                                                     value + (command == "predict" ? " " + folder : ""));
      EXPECT_NE(bad.rc, 0);
      EXPECT_NE(bad.err.find("(--crop-pct) must be in (0, 1]"), std::string::npos) << command << ": " << bad.err;
    }
  // predict reads the checkpoint's crop, or the one asked for, as eval does.
  const auto json_of = [&](const std::string& flags) {
    const auto r = kestrel::testing::kestrel_cli("predict -c " + c.out + "/best.safetensors --format json " +
                                                 "--no-progress " + flags + " " + folder + "/test");
    EXPECT_EQ(r.rc, 0) << r.err;
    return r.out;
  };
  const std::string own_crop = json_of(""), half = json_of("--crop-pct 0.5"), uncropped = json_of("--crop-pct 1");
  EXPECT_EQ(own_crop, half);
  EXPECT_NE(own_crop, uncropped);

  tools::TrainConfig q;
  q.quantize_from = c.out + "/best.safetensors";
  tools::configure_from_float_checkpoint(q, nlohmann::json::object());
  EXPECT_EQ(q.crop_pct, 0.5);
  EXPECT_EQ(q.random_resized_crop, "0.2,1");
  EXPECT_TRUE(q.random_crop) << "inherited with the resized crop it ran beside";
  // qat asked for a resized crop the float run (here: no run folder) did not use:
  // no padded crop after it, as kestrel train's default.
  const std::string lone = kestrel::testing::temp_path("crop_pct_lone");
  std::filesystem::create_directories(lone);
  std::filesystem::copy_file(c.out + "/best.safetensors", lone + "/model.safetensors");
  tools::TrainConfig q2;
  q2.quantize_from = lone + "/model.safetensors";
  q2.random_resized_crop = "0.5,1";
  tools::configure_from_float_checkpoint(q2, {{"random_resized_crop", "0.5,1"}});
  EXPECT_FALSE(q2.random_crop);
  q2.random_crop = true;
  tools::configure_from_float_checkpoint(q2, {{"random_resized_crop", "0.5,1"}, {"random_crop", true}});
  EXPECT_TRUE(q2.random_crop) << "asked for";
}

// With --ema the averaged weights are validated (and kept as best); the
// plain weights are measured too: their numbers are what eval of
// last.safetensors (the plain weights) reads.
TEST(Train, EmaRunsAlsoReportThePlainWeights) {
  const std::string folder = kestrel::testing::write_pattern_folder_dataset("ema_plain");
  tools::TrainConfig c = kestrel::testing::pattern_folder_config(folder, "ema_plain_out", "cpu");
  c.width_mult = 0.25;
  c.ema = 0.9;
  ASSERT_TRUE(tools::train(c).completed);
  const auto rows = kestrel::testing::read_metrics_jsonl(c.out);
  ASSERT_EQ(rows.size(), 2u);
  ASSERT_TRUE(rows[1].contains("val_top1_plain") && rows[1].contains("val_loss_plain")) << rows[1].dump();
  const nlohmann::json report = eval_report(c.out, "last.safetensors", "eval-last");
  EXPECT_NEAR(report["loss"].get<double>(), rows[1]["val_loss_plain"].get<double>(), 1e-5);
  EXPECT_NE(rows[1]["val_loss_plain"], rows[1]["val_loss"]) << "the EMA and plain weights differ";
  const std::string csv = kestrel::testing::read_text(c.out + "/metrics.csv");
  EXPECT_NE(csv.find(",val_loss_plain,val_top1_plain\n"), std::string::npos) << csv;
}

// The schedule and optimizer knobs timm users reach for: the cosine's floor,
// step decay at given epochs, AdamW's betas and epsilon.
TEST(Train, MinLrMilestonesAndAdamSettingsShapeTheRun) {
  const std::string folder = kestrel::testing::write_pattern_folder_dataset("knobs");
  const auto run = [&](const std::string& name, const std::function<void(tools::TrainConfig&)>& set) {
    tools::TrainConfig c = kestrel::testing::pattern_folder_config(folder, name, "cpu");  // 6 steps an epoch
    c.width_mult = 0.25;
    set(c);
    EXPECT_TRUE(tools::train(c).completed) << name;
    return kestrel::testing::read_metrics_jsonl(c.out);
  };
  // Cosine over 12 steps after a 6-step warmup: the last step is 5/6 of the way down.
  const double last_fraction = 0.5 * (1 + std::cos(M_PI * 5.0 / 6.0));
  const auto floor0 = run("knobs_cos", [](tools::TrainConfig&) {});
  const auto floored = run("knobs_min", [](tools::TrainConfig& c) { c.min_lr = 0.02; });
  EXPECT_NEAR(floor0.back()["lr"].get<double>(), 0.05 * last_fraction, 1e-12);
  EXPECT_NEAR(floored.back()["lr"].get<double>(), 0.02 + (0.05 - 0.02) * last_fraction, 1e-12);

  const auto stepped = run("knobs_steps", [](tools::TrainConfig& c) {
    c.epochs = 3;
    c.schedule = "step";
    c.milestones = "1,2";
    c.warmup_epochs = 0;
  });
  ASSERT_EQ(stepped.size(), 3u);
  EXPECT_NEAR(stepped[0]["lr"].get<double>(), 0.05, 1e-12);
  EXPECT_NEAR(stepped[1]["lr"].get<double>(), 0.005, 1e-12);
  EXPECT_NEAR(stepped[2]["lr"].get<double>(), 0.0005, 1e-12);

  // The warmup starts at --warmup-lr, else at 1% of --lr, whatever the schedule:
  // the first epoch's last step is 5/6 of the way up.
  const auto warm_from = [](double start) { return start + (0.05 - start) * 5.0 / 6.0; };
  EXPECT_NEAR(floor0.front()["lr"].get<double>(), warm_from(0.0005), 1e-12);
  const auto from_set = run("knobs_warm_lr", [](tools::TrainConfig& c) { c.warmup_lr = 0.02; });
  EXPECT_NEAR(from_set.front()["lr"].get<double>(), warm_from(0.02), 1e-12);
  const auto step_warm = run("knobs_step_warm", [](tools::TrainConfig& c) {
    c.epochs = 3;
    c.schedule = "step";
    c.step_size = 2;
  });
  EXPECT_NEAR(step_warm.front()["lr"].get<double>(), warm_from(0.0005), 1e-12);
  EXPECT_NEAR(step_warm[1]["lr"].get<double>(), 0.05, 1e-12);

  const auto adam = run("knobs_adam", [](tools::TrainConfig& c) { c.optimizer = "adamw", c.lr = 1e-3; });
  const auto betas = run("knobs_betas", [](tools::TrainConfig& c) {
    c.optimizer = "adamw", c.lr = 1e-3, c.adam_betas = "0.5,0.9", c.adam_eps = 1e-3;
  });
  EXPECT_NE(adam[0]["train_loss"], betas[0]["train_loss"]) << "the betas and epsilon reach the optimizer";
  const auto rms = run("knobs_rms", [](tools::TrainConfig& c) { c.optimizer = "rmsprop", c.lr = 1e-3; });
  const auto rms_alpha = run("knobs_rms_alpha", [](tools::TrainConfig& c) {
    c.optimizer = "rmsprop", c.lr = 1e-3, c.rmsprop_alpha = 0.9, c.rmsprop_eps = 1e-3;
  });
  EXPECT_NE(rms[0]["train_loss"], adam[0]["train_loss"]);
  EXPECT_NE(rms[0]["train_loss"], rms_alpha[0]["train_loss"]) << "alpha and epsilon reach the optimizer";
  EXPECT_LT(rms.back()["train_loss"].get<double>(), rms.front()["train_loss"].get<double>());

  tools::TrainConfig c = kestrel::testing::pattern_folder_config(folder, "knobs_bad", "cpu");
  const auto message = [&](const std::function<void(tools::TrainConfig&)>& set) {
    tools::TrainConfig bad = c;
    set(bad);
    return kestrel::testing::expect_message_of([&] { tools::train(bad); });
  };
  EXPECT_NE(message([](tools::TrainConfig& b) { b.milestones = "2"; }).find("--milestones are the epochs"),
            std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.schedule = "step", b.milestones = "3,2"; })
                .find("--milestones expects ascending whole epochs"),
            std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.schedule = "onecycle", b.min_lr = 0.01; })
                .find("--min-lr is where --schedule cosine ends"),
            std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.min_lr = 0.5; }).find("--min-lr must be in [0, --lr)"),
            std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.adam_betas = "0.9,0.99"; }).find("are AdamW's"), std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.rmsprop_alpha = 0.9; }).find("are RMSprop's"), std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.optimizer = "rmsprop", b.rmsprop_alpha = 1.0; })
                .find("--rmsprop-alpha must be in [0, 1)"),
            std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.warmup_lr = 0.06; }).find("--warmup-lr must be in [0, --lr]"),
            std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.schedule = "onecycle", b.warmup_lr = 0.01; })
                .find("onecycle ramps up by itself"),
            std::string::npos);
  EXPECT_NE(message([](tools::TrainConfig& b) { b.optimizer = "adamw", b.adam_betas = "0.9,1"; })
                .find("--adam-betas expects B1,B2"),
            std::string::npos);
}

// A run saved before runs recorded their normalization resumes with the one
// its checkpoint holds, not with what the rules would choose today (here the
// initial checkpoint's): the same weights as the run never stopped.
TEST(Train, ARunSavedWithoutItsNormalizationResumesWithItsCheckpoints) {
  const std::string folder = kestrel::testing::write_pattern_folder_dataset("legacy_norm");
  tools::TrainConfig start = kestrel::testing::pattern_folder_config(folder, "legacy_norm_start", "cpu");
  start.width_mult = 0.25;
  start.epochs = 1;
  start.mean = "0.5,0.5,0.5", start.std = "0.25,0.25,0.25";
  ASSERT_TRUE(tools::train(start).completed);
  tools::TrainConfig plain = kestrel::testing::pattern_folder_config(folder, "legacy_norm_plain", "cpu");
  plain.width_mult = 0.25;
  plain.epochs = 1;
  ASSERT_TRUE(tools::train(plain).completed);
  const nlohmann::json data_norm = nlohmann::json::parse(kestrel::testing::read_text(plain.out + "/config.json"));

  // What an older Kestrel ran: the data set's normalization beside an initial checkpoint of another.
  tools::TrainConfig full = kestrel::testing::pattern_folder_config(folder, "legacy_norm_full", "cpu");
  full.width_mult = 0.25;
  full.initial_checkpoint = start.out + "/best.safetensors";
  full.mean = data_norm["mean"], full.std = data_norm["std"];
  ASSERT_TRUE(tools::train(full).completed);
  tools::TrainConfig killed = full;
  killed.out = kestrel::testing::temp_path("legacy_norm_killed");
  killed.stop_after_steps = 9;  // 6 steps an epoch: inside the second
  tools::train(killed);
  // Saved as before: the run state's config has no mean and std.
  save_without_config_keys(killed.out, {"mean", "std"});

  tools::TrainConfig resumed = killed;
  resumed.stop_after_steps = 0;
  resumed.resume = true;
  resumed.overwrite = false;
  resumed.mean = resumed.std = "";
  ASSERT_TRUE(tools::train(resumed).completed);
  kestrel::testing::expect_checkpoints_match(full.out + "/last.safetensors", killed.out + "/last.safetensors", 0.0,
                                             0.0, "resumed with the checkpoint's normalization");
}

// --eval-metric picks the epoch best.safetensors holds (and early stopping
// waits on): the lowest val loss, the highest top-5. A run saved before it
// ranked by top-1 and still does.
TEST(Train, EvalMetricPicksTheBestEpoch) {
  const std::string folder = kestrel::testing::write_pattern_folder_dataset("eval_metric");
  std::map<std::string, int64_t> best_epoch;
  for (const std::string metric : {"loss", "top1"}) {
    tools::TrainConfig c = kestrel::testing::pattern_folder_config(folder, "eval_metric_" + metric, "cpu");
    c.width_mult = 0.25;
    c.epochs = 4;
    c.eval_metric = metric;
    const tools::TrainSummary s = tools::train(c);
    ASSERT_TRUE(s.completed) << metric;
    const auto rows = kestrel::testing::read_metrics_jsonl(c.out);
    ASSERT_EQ(rows.size(), 4u);
    size_t best = 0;
    for (size_t e = 1; e < rows.size(); ++e) {
      const bool better = metric == "loss"   ? rows[e]["val_loss"] < rows[best]["val_loss"]
                          : metric == "top5" ? rows[e]["val_top5"] > rows[best]["val_top5"]
                                             : rows[e]["val_top1"] > rows[best]["val_top1"];
      if (better) best = e;
    }
    EXPECT_EQ(s.best_epoch, static_cast<int64_t>(best) + 1) << metric;
    best_epoch[metric] = s.best_epoch;
    EXPECT_EQ(s.best_top1, rows[best]["val_top1"].get<double>()) << metric;
    const std::string key = metric == "loss" ? "val_loss" : "val_" + metric;
    EXPECT_EQ(metric == "loss" ? -s.best_score : s.best_score, rows[best][key].get<double>()) << metric;
    const io::Metadata meta = io::load_safetensors_metadata(c.out + "/best.safetensors");
    EXPECT_EQ(meta.at("epoch"), std::to_string(best + 1)) << metric;
  }
  EXPECT_NE(best_epoch["loss"], best_epoch["top1"]) << "this run's lowest loss and best top-1 are apart";
  // Three classes: every epoch's top-5 is 100%, so it would rank nothing.
  tools::TrainConfig top5 = kestrel::testing::pattern_folder_config(folder, "eval_metric_top5", "cpu");
  top5.eval_metric = "top5";
  EXPECT_NE(kestrel::testing::expect_message_of([&] { tools::train(top5); })
                .find("--eval-metric top5 ranks nothing with 3 classes"),
            std::string::npos);
  nlohmann::json old = tools::RunState().to_json();
  old.erase("best_score");
  old["best_top1"] = 0.625;
  EXPECT_EQ(tools::RunState::from_json(old).best_score, 0.625);
  tools::TrainConfig bad = kestrel::testing::pattern_folder_config(folder, "eval_metric_bad", "cpu");
  bad.eval_metric = "f1";
  EXPECT_NE(kestrel::testing::expect_message_of([&] { tools::train(bad); }).find("--eval-metric 'f1' is not one of"),
            std::string::npos);
}

// --checkpoint-hist keeps the N best epochs' weights (the files the run state
// names, no others), a killed run resumes to the same files, kestrel average
// writes their mean, and --overwrite clears them with the rest of the run.
TEST(Train, CheckpointHistKeepsTheBestEpochsForKestrelAverage) {
  namespace kt = kestrel::testing;
  const std::string folder = kt::write_pattern_folder_dataset("checkpoint_hist");
  tools::TrainConfig c = kt::pattern_folder_config(folder, "hist_full", "cpu");
  c.width_mult = 0.25;
  c.epochs = 4;
  c.eval_metric = "loss";
  c.checkpoint_hist = 2;
  ASSERT_TRUE(tools::train(c).completed);
  const auto rows = kt::read_metrics_jsonl(c.out);
  ASSERT_EQ(rows.size(), 4u);
  const auto val_loss = [&](int64_t epoch) { return rows[static_cast<size_t>(epoch - 1)]["val_loss"].get<double>(); };
  std::vector<int64_t> best = {1, 2, 3, 4};
  std::stable_sort(best.begin(), best.end(), [&](int64_t a, int64_t b) { return val_loss(a) < val_loss(b); });
  best.resize(2);
  ASSERT_NE(std::set<int64_t>(best.begin(), best.end()), (std::set<int64_t>{1, 2}))
      << "no epoch was pushed out; the test needs one";
  const nlohmann::json state = nlohmann::json::parse(kt::read_text(c.out + "/state.json"));
  std::vector<int64_t> kept;
  for (const auto& k : state.at("kept_checkpoints")) {
    kept.push_back(k["epoch"].get<int64_t>());
    EXPECT_EQ(k["score"].get<double>(), -val_loss(kept.back()));
  }
  EXPECT_EQ(kept, best);
  const auto kept_files = [](const std::string& out) {
    std::set<std::string> files;
    for (const auto& e : fs::directory_iterator(out))
      if (e.path().filename().string().rfind("checkpoint-", 0) == 0) files.insert(e.path().filename().string());
    return files;
  };
  const std::string first = "checkpoint-" + std::to_string(best[0]) + ".safetensors";
  const std::string second = "checkpoint-" + std::to_string(best[1]) + ".safetensors";
  EXPECT_EQ(kept_files(c.out), (std::set<std::string>{first, second})) << "a dropped epoch's file is removed";
  kt::expect_checkpoints_match(c.out + "/best.safetensors", c.out + "/" + first, 0.0, 0.0, "the best kept epoch");

  // Killed in epoch 4 (6 steps an epoch), after epoch 3 may have pushed one
  // out. A file its state does not list (a kill between an epoch's file and
  // its state) goes on resume; a user's own file stays.
  tools::TrainConfig killed_run = c;
  killed_run.out = kt::temp_path("hist_killed");
  killed_run.stop_after_steps = 20;
  ASSERT_FALSE(tools::train(killed_run).completed);
  fs::copy_file(c.out + "/" + first, killed_run.out + "/checkpoint-99.safetensors");
  std::ofstream(killed_run.out + "/checkpoint-final.safetensors") << "mine";
  killed_run.stop_after_steps = 0;
  killed_run.resume = true;
  killed_run.overwrite = false;
  ASSERT_TRUE(tools::train(killed_run).completed);
  const std::string killed = killed_run.out;
  EXPECT_TRUE(fs::exists(killed + "/checkpoint-final.safetensors"));
  fs::remove(killed + "/checkpoint-final.safetensors");
  EXPECT_EQ(nlohmann::json::parse(kt::read_text(killed + "/state.json"))["kept_checkpoints"],
            state["kept_checkpoints"]);
  EXPECT_EQ(kept_files(killed), kept_files(c.out));
  for (const std::string& f : {first, second})
    kt::expect_checkpoints_match(c.out + "/" + f, killed + "/" + f, 0.0, 0.0, "killed and resumed: " + f);

  const kt::CliResult r = kt::kestrel_cli("average " + c.out);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("averaged 2 checkpoints of cifar10_200k (" + first + ", " + second + ") into " + c.out +
                       "/average.safetensors"),
            std::string::npos)
      << r.out;
  const io::SafetensorsContents avg = io::load_safetensors(c.out + "/average.safetensors");
  const io::SafetensorsContents a = io::load_safetensors(c.out + "/" + first);
  const io::SafetensorsContents b = io::load_safetensors(c.out + "/" + second);
  EXPECT_EQ(avg.metadata.at("kestrel.averaged_from"), nlohmann::json({first, second}).dump());
  ASSERT_EQ(avg.tensors.size(), a.tensors.size());
  for (size_t n = 0; n < avg.tensors.size(); ++n) {
    const Tensor& t = avg.tensors[n].second;
    if (!is_floating(t.dtype())) continue;
    ASSERT_EQ(a.tensors[n].first, avg.tensors[n].first);
    const std::vector<double> x = a.tensors[n].second.to_vector_f64(), y = b.tensors[n].second.to_vector_f64();
    const std::vector<float> got = t.to_vector();
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], static_cast<float>((x[i] + y[i]) / 2)) << avg.tensors[n].first << "[" << i << "]";
  }
  EXPECT_GT(eval_report(c.out, "average.safetensors", "eval-average")["top1"].get<double>(), 0.0);
  kt::expect_one_line_error(kt::kestrel_cli("average " + c.out), "average.safetensors exists; pass --overwrite",
                            "averaged again");
  const std::string best_file = c.out + "/best.safetensors";
  const std::pair<std::string, std::string> refused[] = {
      {best_file + " --top 2", "--top picks from a run folder's kept checkpoints"},
      {best_file, "needs a run folder or at least two checkpoints, got one checkpoint"},
      {best_file + " " + c.out + "/none.safetensors", "checkpoint not found: " + c.out + "/none.safetensors"},
      {c.out + " --top 3 --overwrite", "--top must be from 2 to the 2 checkpoints " + c.out + " kept"},
      {c.out + " -o " + c.out + "/" + second + " --overwrite", "is one of the checkpoints averaged"},
      {best_file + " " + c.out + "/" + first + " -o " + c.out, "is a folder; give -o a file path"}};
  for (const auto& [args, message] : refused) kt::expect_one_line_error(kt::kestrel_cli("average " + args), message, args);

  std::ofstream(c.out + "/checkpoint-final.safetensors") << "mine";
  tools::TrainConfig again = c;  // --overwrite: the new run keeps no epochs, and none of the old run's are left
  again.checkpoint_hist = 0;
  again.epochs = 1;
  ASSERT_TRUE(tools::train(again).completed);
  EXPECT_EQ(kept_files(c.out), std::set<std::string>{"checkpoint-final.safetensors"}) << "a user's file stays";
  EXPECT_FALSE(fs::exists(c.out + "/average.safetensors"));
  EXPECT_FALSE(nlohmann::json::parse(kt::read_text(c.out + "/state.json")).contains("kept_checkpoints"));
  tools::TrainConfig qat = c;
  qat.quantize_from = c.out + "/best.safetensors";
  EXPECT_NE(kt::expect_message_of([&] { qat.validate(); }).find("kestrel qat keeps no epoch checkpoints"),
            std::string::npos);
}

// --schedule plateau decays the rate by --step-gamma after more than
// --plateau-patience epochs without a better --eval-metric, as torch's
// ReduceLROnPlateau stepped once an epoch; a killed run replays the saved
// epochs' numbers and resumes to the uninterrupted run's weights.
TEST(Train, PlateauScheduleDecaysWhenValidationStallsAndResumesExactly) {
  namespace kt = kestrel::testing;
  const std::string folder = kt::write_pattern_folder_dataset("plateau");
  tools::TrainConfig c = kt::pattern_folder_config(folder, "plateau_full", "cpu");
  c.width_mult = 0.25;
  c.epochs = 5;
  c.schedule = "plateau";
  c.plateau_patience = 0;
  c.step_gamma = 0.5;
  c.warmup_epochs = 0;
  ASSERT_TRUE(tools::train(c).completed);
  const auto rows = kt::read_metrics_jsonl(c.out);
  ASSERT_EQ(rows.size(), 5u);
  double expected_lr = c.lr, best = -1.0;
  int decays = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    EXPECT_EQ(rows[e]["lr"].get<double>(), expected_lr) << "epoch " << e + 1;
    const double top1 = rows[e]["val_top1"].get<double>();
    if (top1 > best * (1 + 1e-4)) {
      best = top1;
    } else {  // patience 0: the first epoch without a gain decays
      expected_lr *= 0.5;
      ++decays;
    }
  }
  ASSERT_GT(decays, 0) << "no epoch stalled; the test needs one";
  ASSERT_LT(rows[1]["lr"].get<double>() + rows[2]["lr"].get<double>(), 2 * c.lr)
      << "no decay before epoch 3, where the run below is killed; the test needs one";
  const std::string killed = kt::kill_then_resume(c, "plateau_killed", 14);  // in epoch 3 (6 steps an epoch)
  kt::expect_checkpoints_match(c.out + "/last.safetensors", killed + "/last.safetensors", 0.0, 0.0,
                               "killed in epoch 3 and resumed");
  // Epochs that end inside the warmup are not judged: with a 2-epoch warmup,
  // epoch 2 is the first, with nothing to be worse than, so epoch 3 trains at --lr.
  tools::TrainConfig warm = c;
  warm.out = kt::temp_path("plateau_warm");
  warm.epochs = 4;
  warm.warmup_epochs = 2;
  ASSERT_TRUE(tools::train(warm).completed);
  const auto warm_rows = kt::read_metrics_jsonl(warm.out);
  ASSERT_GE(warm_rows[0]["val_top1"].get<double>(), warm_rows[1]["val_top1"].get<double>())
      << "epoch 2 beats epoch 1: judging the warmup's epoch 1 would change nothing; the test needs it not to";
  EXPECT_EQ(warm_rows[2]["lr"].get<double>(), c.lr);
  tools::TrainConfig bad = c;
  bad.step_gamma = 1.5;
  EXPECT_NE(kt::expect_message_of([&] { bad.validate(); }).find("--schedule plateau needs --step-gamma in (0, 1)"),
            std::string::npos);
  bad = c;
  bad.schedule = "cosine";
  EXPECT_NE(kt::expect_message_of([&] { bad.validate(); }).find("--plateau-patience is --schedule plateau's"),
            std::string::npos);
}

// --lr-base sets --lr from the whole batch of a step (batch x --grad-accum),
// linearly, or by its square root for AdamW unless --lr-base-scale says.
TEST(Train, LrBaseScalesWithTheWholeBatch) {
  namespace kt = kestrel::testing;
  const std::string folder = kt::write_pattern_folder_dataset("lr_base");
  tools::TrainConfig c = kt::pattern_folder_config(folder, "lr_base_run", "cpu");
  c.width_mult = 0.25;
  c.epochs = 1;
  c.grad_accum = 2;  // a whole batch of 12
  c.lr_base = 0.1;
  c.lr_base_size = 24;
  c.schedule = "step";  // a constant rate: no decay within the run, no warmup
  c.warmup_epochs = 0;
  ASSERT_TRUE(tools::train(c).completed);
  EXPECT_EQ(kt::read_metrics_jsonl(c.out)[0]["lr"].get<double>(), 0.05);
  const nlohmann::json saved = nlohmann::json::parse(kt::read_text(c.out + "/config.json"));
  EXPECT_EQ(saved["lr"], 0.05) << "the rate the run trained at is its recipe's";
  EXPECT_EQ(saved["lr_base"], 0.1);

  tools::TrainConfig adamw = c;
  adamw.optimizer = "adamw";
  EXPECT_EQ(adamw.lr_from_base(), 0.1 * std::sqrt(0.5));
  adamw.lr_base_scale = "linear";
  EXPECT_EQ(adamw.lr_from_base(), 0.05);
  tools::TrainConfig rmsprop = c;
  rmsprop.optimizer = "rmsprop";  // timm's square root is for the Adam family only
  EXPECT_EQ(rmsprop.lr_from_base(), 0.05);
  tools::TrainConfig off;
  off.lr_base_size = 512;
  EXPECT_NE(kt::expect_message_of([&] { off.validate(); }).find("--lr-base-size and --lr-base-scale shape --lr-base"),
            std::string::npos);
  off = tools::TrainConfig{};
  off.lr_base_scale = "cube";
  EXPECT_NE(kt::expect_message_of([&] { off.validate(); }).find("--lr-base-scale 'cube' is not one of"),
            std::string::npos);
}

// A step-schedule run saved before --warmup-lr warmed up from 0; resumed
// inside its warmup, it goes on from 0's ramp: the weights of the run that
// never stopped.
TEST(Train, AStepRunSavedWithoutItsWarmupLrResumesWithTheOldRamp) {
  const std::string folder = kestrel::testing::write_pattern_folder_dataset("legacy_warmup");
  tools::TrainConfig full = kestrel::testing::pattern_folder_config(folder, "legacy_warmup_full", "cpu");
  full.width_mult = 0.25;
  full.schedule = "step";
  full.step_size = 2;
  full.warmup_lr = 0.0;  // what an older Kestrel ran
  ASSERT_TRUE(tools::train(full).completed);
  tools::TrainConfig killed = full;
  killed.out = kestrel::testing::temp_path("legacy_warmup_killed");
  killed.save_every_steps = 3;  // saved half way up the 6-step warmup
  killed.stop_after_steps = 4;
  tools::train(killed);
  save_without_config_keys(killed.out, {"warmup_lr"});
  EXPECT_TRUE(tools::resume_conflicts(killed.out, {{"warmup_lr", 0.0}}).empty()) << "0 is what it ran with";
  const std::vector<std::string> other = tools::resume_conflicts(killed.out, {{"warmup_lr", 0.01}});
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0], "--warmup-lr 0.01 (the run's: 0.0)");

  tools::TrainConfig resumed = killed;
  resumed.stop_after_steps = 0;
  resumed.resume = true;
  resumed.overwrite = false;
  resumed.warmup_lr = -1.0;
  ASSERT_TRUE(tools::train(resumed).completed);
  kestrel::testing::expect_checkpoints_match(full.out + "/last.safetensors", killed.out + "/last.safetensors", 0.0,
                                             0.0, "resumed with the warmup from 0");
}

TEST(Train, ATestSplitWhereTheDataHasItsOwnIsRefused) {
  tools::TrainConfig c = kestrel::testing::fashion_mnist_config("split_bad");
  c.test_split = 0.2;
  EXPECT_NE(kestrel::testing::expect_message_of([&] { tools::train(c); }).find("has its own test set"),
            std::string::npos);
  const std::string split_folder = kestrel::testing::write_pattern_folder_dataset("split_bad_folder");
  c = kestrel::testing::pattern_folder_config(split_folder, "split_bad_out", "cpu");
  c.test_split = 0.2;
  EXPECT_NE(kestrel::testing::expect_message_of([&] { tools::train(c); }).find("has its own train/ and test/"),
            std::string::npos);
  for (double bad : {0.0, 1.0, -0.1}) {
    c.test_split = bad;
    EXPECT_NE(kestrel::testing::expect_message_of([&] { tools::train(c); }).find("--test-split must be in (0, 1)"),
              std::string::npos)
        << bad;
  }
}
