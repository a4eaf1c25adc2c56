// kestrel train as a data-parallel job: two processes under mpirun, on real
// data (Fashion-MNIST), against the same job killed and resumed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/test_util.h"
#include "tests/train_run_util.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;
using testing::kestrel_cli;
using testing::temp_path;

// Two ranks sharing the machine's cores: one OpenMP thread each.
std::string mpirun2() {
#if defined(KESTREL_MPIEXEC)
  return std::string(KESTREL_MPIEXEC) + " --oversubscribe --allow-run-as-root -np 2 -x OMP_NUM_THREADS=1";
#else
  return "";
#endif
}

#define KESTREL_REQUIRE_MPI_AND_DATA()                                                                      \
  do {                                                                                                      \
    if (mpirun2().empty()) GTEST_SKIP() << "this build has no MPI (tools/setup.sh installs libopenmpi-dev)"; \
    if (const std::string why = testing::fashion_mnist_skip_reason(); !why.empty()) GTEST_SKIP() << why;    \
  } while (0)

std::string job(const std::string& out, int64_t train_images, int64_t epochs) {
  return "train --config " + testing::source_path("tools/recipes/fashion_mnist_quickstart.toml") + " --data-dir " +
         testing::kFashionMnistDir + " --limit-train " + std::to_string(train_images) +
         " --limit-test 1000 --epochs " + std::to_string(epochs) + " --lr 0.05 --schedule cosine --workers 1 --no-progress --overwrite --out " + out;
}

int64_t count_lines(const std::string& text, const std::string& needle) {
  int64_t n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

TEST(DistTrain, TwoRanksLearnFashionMnistAndRankZeroAloneReportsAndWrites) {
  KESTREL_REQUIRE_MPI_AND_DATA();
  const std::string out = temp_path("dist_learn");
  const testing::CliResult r = kestrel_cli(job(out, 4000, 3), mpirun2());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(count_lines(r.err, "x 2 processes"), 1) << r.err;
  EXPECT_EQ(count_lines(r.err, "epoch 3/3"), 1) << r.err;
  EXPECT_EQ(count_lines(r.out, "best top-1"), 1) << r.out;
  std::ifstream metrics(out + "/metrics.jsonl");
  std::string line, last;
  int64_t rows = 0;
  while (std::getline(metrics, line)) last = line, ++rows;
  ASSERT_EQ(rows, 3);
  const nlohmann::json rec = nlohmann::json::parse(last);
  // 10 classes: chance is 10%. Both ranks' 1000 test images are counted once.
  EXPECT_GT(rec["val_top1"].get<double>(), 0.6) << last;
  EXPECT_GT(rec["train_top1"].get<double>(), 0.6) << last;
  EXPECT_TRUE(fs::exists(out + "/best.safetensors"));
}

TEST(DistTrain, KilledAndResumedJobEndsWithTheUninterruptedJobsWeights) {
  KESTREL_REQUIRE_MPI_AND_DATA();
  // 1200 images in batches of 128: 9 steps an epoch; killed in epoch 2.
  const std::string full = temp_path("dist_full"), killed = temp_path("dist_killed");
  testing::CliResult r = kestrel_cli(job(full, 1200, 2), mpirun2());
  ASSERT_EQ(r.rc, 0) << r.err;
  r = kestrel_cli(job(killed, 1200, 2) + " --stop-after-steps 13", mpirun2());
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_EQ(count_lines(r.out, "best top-1"), 0) << "the killed job completed: " << r.out;
  r = kestrel_cli("train --resume --no-progress --out " + killed, mpirun2());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("resuming"), std::string::npos) << r.err;
  testing::expect_checkpoints_match(full + "/last.safetensors", killed + "/last.safetensors", 0.0, 0.0,
                                    "two ranks, killed at step 13 and resumed");

  // Saving every 4 steps: killed at step 13, resumed from step 12 (epoch 2,
  // batch 3), with the epoch's sums over both ranks saved there.
  const std::string saving = temp_path("dist_killed_saving");
  r = kestrel_cli(job(saving, 1200, 2) + " --save-every-steps 4 --stop-after-steps 13", mpirun2());
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json state = nlohmann::json::parse(testing::read_text(saving + "/state.json"));
  EXPECT_EQ(state["global_step"], 12);
  EXPECT_EQ(state["resume_batch"], 3);
  r = kestrel_cli("train --resume --no-progress --out " + saving, mpirun2());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("at epoch 2, batch 4 (step 12)"), std::string::npos) << r.err;
  testing::expect_checkpoints_match(full + "/last.safetensors", saving + "/last.safetensors", 0.0, 0.0,
                                    "two ranks, saved at step 12, killed at 13, resumed");
  const auto full_rows = testing::read_metrics_jsonl(full), saving_rows = testing::read_metrics_jsonl(saving);
  ASSERT_EQ(saving_rows.size(), 2u);
  EXPECT_EQ(saving_rows[1]["train_top1"], full_rows[1]["train_top1"]);
  // Both ranks' loss sums meet in another order: equal to rounding.
  EXPECT_NEAR(saving_rows[1]["train_loss"].get<double>(), full_rows[1]["train_loss"].get<double>(), 1e-12);
}

TEST(DistTrain, BatchThatDoesNotSplitOverTheRanksIsNamedAndEndsTheJob) {
  KESTREL_REQUIRE_MPI_AND_DATA();
  const testing::CliResult r = kestrel_cli(job(temp_path("dist_bad"), 1000, 1) + " --batch-size 127", mpirun2());
  EXPECT_NE(r.rc, 0);
  // Every rank meets this error; rank 0 usually reports it first, but which
  // rank's line arrives is up to the launcher.
  EXPECT_NE(r.err.find("kestrel: error (rank "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("): --batch-size 127 does not split evenly over 2 processes"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kestrel
