// Compound-scaling search: the constrained grid, the measured strategies,
// budgets, and proxy training whose checkpoints carry the scaled model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "models/registry.h"
#include "models/scaling.h"
#include "test_util.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/scale_search.h"
#include "train_run_util.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;
using tools::ScaleCandidate;

TEST(ScaleSearch, GridHoldsOnlyPointsThatMeetTheConstraint) {
  tools::ScaleGrid g;
  g.step = 0.05;
  const auto points = tools::constrained_grid(g);
  ASSERT_FALSE(points.empty());
  bool has_paper = false, has_depth_only = false;
  for (const auto& c : points) {
    EXPECT_LE(std::fabs(models::flops_per_phi(c) - 2.0), g.tolerance + 1e-12);
    EXPECT_GE(c.alpha, 1.0);
    EXPECT_LE(c.alpha, g.alpha_max + 1e-12);
    has_paper |= std::fabs(c.alpha - 1.2) < 1e-9 && std::fabs(c.beta - 1.1) < 1e-9 && std::fabs(c.gamma - 1.15) < 1e-9;
    has_depth_only |= std::fabs(c.alpha - 2.0) < 1e-9 && c.beta == 1.0 && c.gamma == 1.0;
  }
  EXPECT_TRUE(has_paper) << "the paper's 1.2 / 1.1 / 1.15 (1.92) is on the 0.05 grid within 0.1 of 2";
  EXPECT_TRUE(has_depth_only);
  g.tolerance = 0.01;
  EXPECT_LT(tools::constrained_grid(g).size(), points.size());
  g.step = 0;
  EXPECT_THROW(tools::constrained_grid(g), ValueError);
}

tools::ScaleSearchOptions small_search(const std::string& out) {
  tools::ScaleSearchOptions o;
  o.model = "cifar10_200k";
  o.base_resolution = 16;
  o.num_classes = 10;
  o.grid.step = 0.2;  // a handful of grid points
  o.out = testing::temp_path(out);
  o.overwrite = true;  // a test may search its folder again
  o.progress = false;
  return o;
}

const ScaleCandidate& row(const std::vector<ScaleCandidate>& rows, const std::string& name) {
  for (const ScaleCandidate& r : rows)
    if (r.name == name) return r;
  throw std::runtime_error("no row " + name);
}

TEST(ScaleSearch, StrategiesAreMeasuredAsTheyScale) {
  const tools::ScaleSearchOptions o = small_search("scale_measure");
  const std::vector<ScaleCandidate> rows = tools::scale_search(o);
  ASSERT_GE(rows.size(), 5u);
  EXPECT_EQ(rows[0].name, "depth only");
  EXPECT_EQ(rows[3].name, "compound (paper)");
  const ScaleCandidate& res = row(rows, "resolution only");
  const ScaleCandidate& width = row(rows, "width only");
  const ScaleCandidate& depth = row(rows, "depth only");
  EXPECT_EQ(res.resolution, 23);  // round(16 * sqrt 2)
  EXPECT_EQ(depth.resolution, 16);
  EXPECT_DOUBLE_EQ(depth.depth_mult, 2.0);
  // Resolution changes no weights and, in a convolutional net ending in a
  // global pool, scales the work by the pixel count.
  models::ModelOptions mo;
  mo.num_classes = 10;
  mo.cifar_stem = true;
  EXPECT_EQ(res.params, models::build_model("cifar10_200k", mo)->num_parameters());
  EXPECT_NEAR(res.macs_ratio, 23.0 * 23.0 / 256.0, 0.1 * 23.0 * 23.0 / 256.0);
  EXPECT_GT(width.params, res.params);
  EXPECT_GT(width.macs_ratio, 1.6);
  EXPECT_LT(width.macs_ratio, 2.4);
  EXPECT_GT(depth.params, res.params);
  // search.csv: a header and one line per row.
  std::ifstream csv(o.out + "/search.csv");
  int64_t lines = 0;
  for (std::string l; std::getline(csv, l);) ++lines;
  EXPECT_EQ(lines, static_cast<int64_t>(rows.size()) + 1);
  EXPECT_TRUE(fs::exists(o.out + "/search.md"));
}

TEST(ScaleSearch, BudgetsDropWhatDoesNotFit) {
  tools::ScaleSearchOptions o = small_search("scale_budget");
  const std::vector<ScaleCandidate> all = tools::scale_search(o);
  const int64_t unscaled_params = row(all, "resolution only").params;
  o.max_params = unscaled_params;  // only resolution scaling adds no parameters
  const std::vector<ScaleCandidate> kept = tools::scale_search(o);
  ASSERT_FALSE(kept.empty());
  EXPECT_LT(kept.size(), all.size());
  for (const ScaleCandidate& r : kept) {
    EXPECT_LE(r.params, unscaled_params) << r.name;
    EXPECT_DOUBLE_EQ(r.coefficients.beta, 1.0) << r.name;
  }
  EXPECT_NO_THROW(row(kept, "resolution only"));
  EXPECT_THROW(row(kept, "depth only"), std::runtime_error);
  o.model = "no_such_model";
  EXPECT_THROW(tools::scale_search(o), ValueError);
}

TEST(ScaleSearch, AnExistingSearchIsKeptWithoutOverwrite) {
  tools::ScaleSearchOptions o = small_search("scale_existing");
  tools::scale_search(o);
  o.overwrite = false;
  try {
    tools::scale_search(o);
    FAIL() << "a second search into the same folder replaced the first";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("pass --overwrite"), std::string::npos) << e.what();
  }
  o.grid.step = 1e-4;
  o.overwrite = true;
  EXPECT_THROW(tools::scale_search(o), ValueError);  // a grid of 10^12 points, refused before any is built
}

// Candidates on either side of 64 px keep the base model's stem, so their
// multiply-adds compare: resolution alone scales them by the pixel count.
TEST(ScaleSearch, CandidatesKeepTheBaseModelsStemAcrossSixtyFourPixels) {
  tools::ScaleSearchOptions o = small_search("scale_stem");
  o.base_resolution = 56;  // CIFAR stem; resolution only: round(56 sqrt 2) = 79 px
  const std::vector<ScaleCandidate> rows = tools::scale_search(o);
  const ScaleCandidate& res = row(rows, "resolution only");
  EXPECT_EQ(res.resolution, 79);
  EXPECT_NEAR(res.macs_ratio, 79.0 * 79.0 / (56.0 * 56.0), 0.1 * 2.0);
}

// A model whose table lists every block has no depth multiplier: the search
// keeps alpha at 1 instead of failing, and lists each coefficient set once.
TEST(ScaleSearch, FixedDepthModelsSearchWidthAndResolutionOnly) {
  tools::ScaleSearchOptions o = small_search("scale_fixed_depth");
  o.model = "mobilenet_v3_small";
  o.base_resolution = 32;
  const std::vector<ScaleCandidate> rows = tools::scale_search(o);
  ASSERT_FALSE(rows.empty());
  std::set<std::string> seen;
  for (const ScaleCandidate& r : rows) {
    EXPECT_EQ(r.coefficients.alpha, 1.0) << r.name;
    char tag[64];
    std::snprintf(tag, sizeof(tag), "%g/%g/%g", r.coefficients.alpha, r.coefficients.beta, r.coefficients.gamma);
    EXPECT_TRUE(seen.insert(tag).second) << "listed twice: " << tag;
  }
  EXPECT_NO_THROW(row(rows, "width only"));
  EXPECT_THROW(row(rows, "depth only"), std::runtime_error);
}

// Each candidate within budget is trained briefly at its own depth, width and
// input size; its checkpoint rebuilds exactly that model.
TEST(ScaleSearch, ProxyTrainingRecordsAccuracyAndTheScaledModel) {
  if (const std::string why = testing::fashion_mnist_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  tools::ScaleSearchOptions o = small_search("scale_train");
  o.in_channels = 1;
  o.max_params = row(tools::scale_search(o), "resolution only").params;
  o.num_classes = 0;  // trained: the classes and channels are the data's
  o.in_channels = 0;
  o.train_epochs = 1;
  o.train.dataset = "fashion-mnist";
  o.train.limit_train = 256;
  o.train.limit_test = 200;
  o.train.batch_size = 64;
  o.train.lr = 0.05;
  o.train.workers = 1;
  o.train.device = "cpu";
  const std::vector<ScaleCandidate> rows = tools::scale_search(o);
  ASSERT_FALSE(rows.empty());
  for (const ScaleCandidate& r : rows) {
    // The accuracy recorded is the candidate run's best validation top-1, as its metrics.jsonl has it.
    std::ifstream metrics(r.run_dir + "/metrics.jsonl");
    double best = -1.0;
    for (std::string line; std::getline(metrics, line);)
      best = std::max(best, nlohmann::json::parse(line).at("val_top1").get<double>());
    EXPECT_GT(best, 0.0) << r.name << ": no epoch in " << r.run_dir << "/metrics.jsonl";
    EXPECT_DOUBLE_EQ(r.top1, best) << r.name;
    const tools::LoadedModel m = tools::load_checkpoint(r.run_dir + "/best.safetensors");
    EXPECT_EQ(m.info.num_classes, 10) << r.name;
    EXPECT_EQ(m.info.in_channels, 1) << r.name;
    EXPECT_EQ(m.info.height, r.resolution) << r.name;
    EXPECT_EQ(m.info.width, r.resolution) << r.name;
    EXPECT_DOUBLE_EQ(m.info.depth_mult, r.depth_mult) << r.name;
    EXPECT_EQ(m.model->num_parameters(), r.params) << r.name;
  }
  std::ifstream md(o.out + "/search.md");
  const std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("top-1"), std::string::npos) << text;

  // Interrupted in its first candidate, the search stops there and says so, its tables written.
  o.train.interrupt_after_steps = 2;
  try {
    tools::scale_search(o);
    ADD_FAILURE() << "an interrupted search went on";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scale-search: interrupted at candidate 1/"), std::string::npos) << e.what();
  }
  std::ifstream partial(o.out + "/search.csv");
  int64_t lines = 0;
  for (std::string l; std::getline(partial, l);) ++lines;
  EXPECT_EQ(lines, 1) << "the header alone: no candidate finished";
}

// Proxy training checks its data before measuring anything.
TEST(ScaleSearch, MissingProxyDataStopsTheSearchBeforeItMeasures) {
  tools::ScaleSearchOptions o = small_search("scale_no_data");
  o.overwrite = false;
  o.train_epochs = 1;
  o.train.dataset = "folder";
  o.train.data_dir = testing::temp_path("no_such_data");
  EXPECT_THROW(tools::scale_search(o), IOError);
  EXPECT_FALSE(std::filesystem::exists(o.out)) << "nothing written";
  o.train.dataset = "fashion-mnist";
  o.train.data_dir = "";
  o.num_classes = 5;
  if (testing::fashion_mnist_skip_reason().empty()) {
    const std::string message = testing::expect_message_of([&] { tools::scale_search(o); });
    EXPECT_NE(message.find("--num-classes 5 is fewer than the proxy data's 10 classes"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace kestrel
