// kestrel eval and kestrel predict, end to end: a small model is trained here on
// generated images of three easily told apart patterns, then evaluated
// (in-process and through the CLI), used to classify images, and the CLI is
// checked to fail with one line for each kind of bad input.
#include <stb_image.h>
#include <stb_image_write.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "engine/io/safetensors.h"
#include "engine/ops/loss.h"
#include "models/fuse.h"
#include "models/registry.h"
#include "test_util.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/datasets.h"
#include "tools/lib/predictor.h"
#include "tools/lib/report.h"
#include "tools/lib/trainer.h"

using namespace kestrel;
using namespace kestrel::tools;
using kestrel::testing::CliResult;
using kestrel::testing::expect_one_line_error;
using kestrel::testing::kestrel_cli;
using kestrel::testing::read_text;
namespace fs = std::filesystem;

namespace {

constexpr int kSize = 16;
const std::vector<std::string> kClasses = {"checker", "hstripes", "vstripes"};

// Options for an eval without a progress bar (and, by default, without timing).
EvalOptions quiet_eval(const std::string& checkpoint, int64_t latency_iters = 0) {
  EvalOptions o;
  o.checkpoint = checkpoint;
  o.latency_iters = latency_iters;
  o.progress = false;
  return o;
}

// One RGB image of class k: horizontal or vertical stripes of period 4, or a
// 4x4 checkerboard, with a random phase, random colours and pixel noise.
data::Image pattern(int k, uint64_t seed, int size = kSize, double noise = 0.15) {
  Generator g(seed);
  const int phase = static_cast<int>(g.uniform() * 4);
  float lo[3], hi[3];
  for (int c = 0; c < 3; ++c) {
    lo[c] = static_cast<float>(0.3 * g.uniform());
    hi[c] = static_cast<float>(0.7 + 0.3 * g.uniform());
  }
  data::Image img;
  img.h = img.w = size;
  img.c = 3;
  img.pixels.resize(static_cast<size_t>(size) * size * 3);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      const int yy = (y + phase) / 2 % 2, xx = (x + phase) / 2 % 2;
      const bool on = k == 0 ? (yy ^ xx) : k == 1 ? yy : xx;
      for (int c = 0; c < 3; ++c) {
        const double v = (on ? hi[c] : lo[c]) + noise * (g.uniform() - 0.5);
        img.pixels[(static_cast<size_t>(y) * size + x) * 3 + c] =
            static_cast<uint8_t>(std::lround(255.0 * std::clamp(v, 0.0, 1.0)));
      }
    }
  return img;
}

void write_png(const std::string& path, const data::Image& img) {
  ASSERT_NE(stbi_write_png(path.c_str(), img.w, img.h, img.c, img.pixels.data(), img.w * img.c), 0) << path;
}


// Writes the three-class PNG folder (train/ and test/) under dir.
void write_pattern_folder(const std::string& dir) {
  for (const char* split : {"train", "test"})
    for (size_t k = 0; k < kClasses.size(); ++k) {
      const std::string class_dir = dir + "/" + split + "/" + kClasses[k];
      fs::create_directories(class_dir);
      const bool train_split = std::string(split) == "train";
      for (int i = 0; i < (train_split ? 64 : 24); ++i)
        write_png(class_dir + "/" + std::to_string(i) + ".png",
                  pattern(static_cast<int>(k), (train_split ? 1000 : 5000) + 100 * k + i));
    }
}

// Moves a finished temporary folder into place; when another test process got
// there first its identical copy is kept.
void publish(const std::string& tmp, const std::string& final_path) {
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  fs::remove_all(tmp, ec);
}

// The generated data set and the run trained on it, shared by every test.
// ctest runs each test in its own process, so the run is kept in the build
// folder, keyed by this test binary's build time: it is trained once per build.
class EvalPredict : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path exe = fs::read_symlink("/proc/self/exe");
    const uint64_t stamp = static_cast<uint64_t>(fs::last_write_time(exe).time_since_epoch().count()) ^
                           static_cast<uint64_t>(fs::file_size(exe));
    const std::string base = std::string(KESTREL_BINARY_DIR) + "/tests";
    const std::string name = "eval_predict_fixture_" + std::to_string(stamp);
    shared_ = new std::string(base + "/" + name);
    scratch_ = new std::string(kestrel::testing::temp_path("evalp"));
    fs::remove_all(*scratch_);
    fs::create_directories(*scratch_);
    ckpt_ = new std::string(*shared_ + "/run/best.safetensors");
    if (fs::exists(*ckpt_)) return;
    for (const auto& e : fs::directory_iterator(base))  // runs of earlier builds
      if (e.path().filename().string().rfind("eval_predict_fixture_", 0) == 0 && e.path().filename() != name) {
        std::error_code ec;
        fs::remove_all(e.path(), ec);
      }
    fs::create_directories(*shared_);
    if (!fs::exists(*shared_ + "/data")) {
      write_pattern_folder(*scratch_ + "/data");
      publish(*scratch_ + "/data", *shared_ + "/data");
    }
    TrainConfig c;
    c.model = "cifar10_200k";
    c.dataset = "folder";
    c.data_dir = *shared_ + "/data";
    c.epochs = 3;
    c.batch_size = 16;  // 12 steps an epoch: BatchNorm's running statistics settle
    c.lr = 0.05;
    c.warmup_epochs = 0;
    c.random_crop = false;
    c.hflip = 0.0;
    c.workers = 1;
    c.progress = false;
    c.out = *scratch_ + "/run";
    c.overwrite = true;
    c.seed = 3;
    const TrainSummary s = train(c);
    ASSERT_TRUE(s.completed);
    publish(*scratch_ + "/run", *shared_ + "/run");
  }
  static void TearDownTestSuite() {
    delete shared_;
    delete scratch_;
    delete ckpt_;
  }
  static std::string* shared_;   // data/ and run/, read-only once made
  static std::string* scratch_;  // this process's own files
  static std::string* ckpt_;
};
std::string* EvalPredict::shared_ = nullptr;
std::string* EvalPredict::scratch_ = nullptr;
std::string* EvalPredict::ckpt_ = nullptr;

TEST_F(EvalPredict, EvalScoresFarAboveChanceAndWritesEveryReportFile) {
  EvalOptions o = quiet_eval(*ckpt_, /*latency_iters=*/5);
  o.batch_size = 32;
  const EvalReport r = run_eval(o);
  EXPECT_EQ(r.images, 72);
  EXPECT_EQ(r.dataset, "folder");
  EXPECT_GT(r.top1, 0.8) << "chance is 1/3";
  EXPECT_DOUBLE_EQ(r.top5, 1.0) << "top-5 of 3 classes always hits";
  EXPECT_GT(r.macro_f1, 0.75);
  EXPECT_EQ(r.classes, kClasses);
  int64_t total = 0, diagonal = 0;
  for (size_t t = 0; t < r.confusion.size(); ++t)
    for (size_t p = 0; p < r.confusion[t].size(); ++p) total += r.confusion[t][p], diagonal += t == p ? r.confusion[t][p] : 0;
  EXPECT_EQ(total, 72);
  EXPECT_NEAR(static_cast<double>(diagonal) / 72.0, r.top1, 1e-12);
  EXPECT_GT(r.latency_median_ms, 0.0);
  EXPECT_GE(r.latency_p95_ms, r.latency_median_ms);
  EXPECT_GT(r.throughput, 0.0);
  EXPECT_EQ(r.parameters, load_checkpoint(*ckpt_).model->num_parameters());

  const std::string dir = *scratch_ + "/report";
  write_report(r, dir);
  const nlohmann::json j = nlohmann::json::parse(read_text(dir + "/report.json"));
  EXPECT_DOUBLE_EQ(j["top1"].get<double>(), r.top1);
  EXPECT_EQ(j["per_class"].size(), 3u);
  EXPECT_EQ(j["confusion"].size(), 3u);
  EXPECT_EQ(j["latency_ms"]["iterations"].get<int64_t>(), 5);
  const std::string md = read_text(dir + "/report.md");
  EXPECT_NE(md.find("| Model | Params | Top-1 (%) | Top-5 (%) | Macro F1 (%) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| cifar10_200k | "), std::string::npos) << md;
  const std::string csv = read_text(dir + "/confusion.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "true\\predicted,checker,hstripes,vstripes");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
  int w = 0, h = 0, c = 0;
  unsigned char* png = stbi_load((dir + "/confusion.png").c_str(), &w, &h, &c, 3);
  ASSERT_NE(png, nullptr) << "confusion.png does not decode";
  stbi_image_free(png);
  EXPECT_GT(w, 50);
  EXPECT_GT(h, 50);
}

// Beside the checkpoint by default, in a folder naming what differs from the
// canonical eval/ (the whole test set, best.safetensors, no TTA): no
// evaluation replaces another.
TEST_F(EvalPredict, EvalCliPrintsTheMarkdownTableAndWritesBesideTheCheckpointByDefault) {
  // Tests run in parallel processes sharing run/: this one works on its own copy.
  const std::string run = *scratch_ + "/run_copy";
  fs::create_directories(run);
  fs::copy_file(*ckpt_, run + "/best.safetensors");
  fs::copy_file(*shared_ + "/run/config.json", run + "/config.json");
  fs::copy_file(*ckpt_, run + "/last.safetensors");
  const std::string common = " --no-progress --latency-iters 3 --batch-size 16";
  const CliResult r = kestrel_cli("eval --checkpoint " + run + "/best.safetensors --tta" + common);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| Model | Params |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TTA on"), std::string::npos) << r.out;
  for (const char* f : {"report.json", "report.md", "confusion.csv", "confusion.png"})
    EXPECT_TRUE(fs::exists(run + "/eval-tta/" + f)) << f;
  const nlohmann::json j = nlohmann::json::parse(read_text(run + "/eval-tta/report.json"));
  EXPECT_GT(j["top1"].get<double>(), 0.8);
  EXPECT_EQ(j["throughput"]["batch"].get<int64_t>(), 16);

  ASSERT_EQ(kestrel_cli("eval --checkpoint " + run + "/best.safetensors" + common).rc, 0);
  ASSERT_EQ(kestrel_cli("eval --checkpoint " + run + "/last.safetensors --limit 10" + common).rc, 0);
  const nlohmann::json whole = nlohmann::json::parse(read_text(run + "/eval/report.json"));
  EXPECT_FALSE(whole["tta"].get<bool>());
  EXPECT_EQ(whole["limit"].get<int64_t>(), 0);
  const nlohmann::json part = nlohmann::json::parse(read_text(run + "/eval-last-first10/report.json"));
  EXPECT_EQ(part["images"].get<int64_t>(), 10);
  EXPECT_EQ(part["checkpoint"].get<std::string>(), run + "/last.safetensors");
  EXPECT_TRUE(fs::exists(run + "/eval-tta/report.json")) << "kept";
  EvalOptions relative;
  relative.checkpoint = "best.safetensors";
  EXPECT_EQ(default_report_dir(relative), "eval");
  relative.data_dir = "/data/flat/";  // other images never replace the run's own report
  relative.test_split = 0.0;
  EXPECT_EQ(default_report_dir(relative), "eval-flat-split0");

  // kestrel table reads run/eval/ and marks a report of part of the test set.
  const CliResult table = kestrel_cli("table " + run + " " + run + "/eval-last-first10");
  ASSERT_EQ(table.rc, 0) << table.err;
  EXPECT_EQ(table.out.find("(first 72)"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("folder (first 10)"), std::string::npos) << table.out;

  // Several checkpoints: each report beside its checkpoint, then one table
  // whose rows name the checkpoint when it is not the run's best.
  fs::remove_all(run + "/eval");
  const CliResult both = kestrel_cli("eval -c " + run + "/best.safetensors " + run + "/last.safetensors" + common);
  ASSERT_EQ(both.rc, 0) << both.err;
  EXPECT_EQ(both.out.find("| Model | Params |"), std::string::npos) << "no single report: " << both.out;
  EXPECT_TRUE(fs::exists(run + "/eval/report.json"));
  const nlohmann::json last_report = nlohmann::json::parse(read_text(run + "/eval-last/report.json"));
  EXPECT_EQ(last_report["checkpoint"].get<std::string>(), run + "/last.safetensors");
  const size_t best_row = both.out.find("| run_copy | cifar10_200k |");
  const size_t last_row = both.out.find("| run_copy/last | cifar10_200k |");
  ASSERT_NE(best_row, std::string::npos) << both.out;
  ASSERT_NE(last_row, std::string::npos) << both.out;
  EXPECT_LT(best_row, last_row) << "in the order given";
  char top1[16];
  std::snprintf(top1, sizeof(top1), "| %.2f |", 100.0 * last_report["top1"].get<double>());
  EXPECT_NE(both.out.find(top1, last_row), std::string::npos) << top1 << " in " << both.out;
  expect_one_line_error(kestrel_cli("eval -c " + run + "/best.safetensors " + run + "/./best.safetensors" + common),
                        "is given twice", "the same checkpoint twice");
  expect_one_line_error(
      kestrel_cli("eval -c " + run + "/best.safetensors " + run + "/last.safetensors -o " + *scratch_ + "/one" + common),
      "eval: --out names one report folder; with 2 checkpoints leave it out", "one --out for two");
}

// A labelled folder without train/ and test/: the run never read it, so it is
// evaluated whole; --test-split takes part of it; with no run beside the
// checkpoint the split is kestrel train's, and a note says so.
TEST_F(EvalPredict, EvalReadsAnotherFlatFolderWholeUnlessToldOtherwise) {
  const std::string flat = *scratch_ + "/flat";
  fs::remove_all(flat);
  fs::copy(*shared_ + "/data/test", flat, fs::copy_options::recursive);  // 3 classes x 24 images
  const auto images_of = [](const std::string& out) {
    return nlohmann::json::parse(read_text(out + "/report.json"))["images"].get<int64_t>();
  };
  const std::string common = " --data-dir " + flat + " --latency-iters 0 --no-progress -o ";
  const CliResult whole = kestrel_cli("eval -c " + *ckpt_ + common + *scratch_ + "/flat_whole");
  ASSERT_EQ(whole.rc, 0) << whole.err;
  EXPECT_EQ(images_of(*scratch_ + "/flat_whole"), 72);
  EXPECT_NE(whole.err.find("note: " + flat + " is not the folder the run beside"), std::string::npos) << whole.err;
  ASSERT_EQ(kestrel_cli("eval -c " + *ckpt_ + " --test-split 0.25" + common + *scratch_ + "/flat_quarter").rc, 0);
  EXPECT_EQ(images_of(*scratch_ + "/flat_quarter"), 18);

  const std::string alone = *scratch_ + "/alone";
  fs::create_directories(alone);
  fs::copy_file(*ckpt_, alone + "/best.safetensors", fs::copy_options::overwrite_existing);
  const CliResult guessed = kestrel_cli("eval -c " + alone + "/best.safetensors" + common + *scratch_ + "/flat_guess");
  ASSERT_EQ(guessed.rc, 0) << guessed.err;
  EXPECT_EQ(images_of(*scratch_ + "/flat_guess"), 6) << "10% of each class's 24";
  EXPECT_NE(guessed.err.find("note: no training run beside " + alone + "/best.safetensors says how " + flat +
                             " was split"),
            std::string::npos)
      << guessed.err;
  expect_one_line_error(kestrel_cli("eval -c " + *ckpt_ + " --test-split 1" + common + *scratch_ + "/x"),
                        "--test-split must be in [0, 1) (0: the whole folder), got 1", "a split of 1");
}

TEST_F(EvalPredict, TtaShiftAveragesTheShiftedViewsAndTheirMirrors) {
  EvalOptions o = quiet_eval(*ckpt_);
  o.batch_size = 32;
  o.tta = true;
  o.tta_shift = 2;
  const EvalReport r = run_eval(o);
  EXPECT_TRUE(r.tta);
  EXPECT_EQ(r.tta_views, 10);
  EXPECT_NE(report_markdown(r).find("TTA on (flip, 4 shifts of 2 px: 10 views)"), std::string::npos);
  EXPECT_EQ(report_json(r).at("tta_views"), 10);

  // The same mean of logits by hand, image by image: each view through the model.
  Predictor p(*ckpt_);
  const auto test_set = open_dataset("folder", *shared_ + "/data", data::Split::Test, false, 0);
  NoGradGuard no_grad;
  double loss_sum = 0;
  for (int64_t i = 0; i < test_set->size(); ++i) {
    const data::Example e = test_set->get(i);
    std::vector<Tensor> logits;
    for (const Tensor& v : data::tta_views(p.preprocess(e.image), *tta_options(true, 2, p.info())))
      logits.push_back(p.model()(v));
    loss_sum += cross_entropy(data::tta_average(logits), Tensor::from_vector_i64({e.label}, {1})).item();
  }
  EXPECT_NEAR(r.loss, loss_sum / static_cast<double>(test_set->size()), 1e-5);

  o.tta_shift = 0;  // the mirror alone: another average
  const EvalReport flip_only = run_eval(o);
  EXPECT_EQ(flip_only.tta_views, 2);
  EXPECT_GT(std::fabs(flip_only.loss - r.loss), 1e-4);
  o.tta = false;
  o.tta_shift = 2;  // the shifts alone
  EXPECT_EQ(run_eval(o).tta_views, 5);

  expect_one_line_error(kestrel_cli("eval --checkpoint " + *ckpt_ + " --tta-shift 16 --no-progress"),
                        "--tta-shift must be in [0, 16) pixels for 16x16 inputs, got 16", "shift of the whole image");
}

TEST_F(EvalPredict, PredictorTtaIsTheSoftmaxOfTheViewsMeanLogits) {
  Predictor p(*ckpt_);
  const std::string path = list_images(*shared_ + "/data/test").front();
  const data::Image image = p.load_image(path);
  const std::vector<float> plain = p.probabilities({image})[0];
  p.set_tta(tta_options(true, 2, p.info()));
  const std::vector<float> averaged = p.probabilities({image})[0];
  NoGradGuard no_grad;
  std::vector<Tensor> logits;
  const data::TTAOptions views = *tta_options(true, 2, p.info());
  ASSERT_EQ(views.fill.size(), p.info().mean.size());
  for (size_t c = 0; c < views.fill.size(); ++c)
    EXPECT_FLOAT_EQ(views.fill[c], -p.info().mean[c] / p.info().std[c]) << "shifted-in pixels are black";
  for (const Tensor& v : data::tta_views(p.preprocess(image), views)) logits.push_back(p.model()(v));
  const std::vector<float> by_hand = softmax(data::tta_average(logits), 1).to_vector();
  ASSERT_EQ(averaged.size(), by_hand.size());
  double moved = 0;
  for (size_t k = 0; k < by_hand.size(); ++k) {
    EXPECT_NEAR(averaged[k], by_hand[k], 1e-6) << "class " << k;
    moved = std::max(moved, static_cast<double>(std::fabs(averaged[k] - plain[k])));
  }
  EXPECT_GT(moved, 1e-4) << "the ten views should move the probabilities";
  EXPECT_FALSE(tta_options(false, 0, p.info()).has_value());

  const CliResult r = kestrel_cli("predict -c " + *ckpt_ + " --tta --tta-shift 2 --format json -k 3 " + path);
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json top = nlohmann::json::parse(r.out).at("predictions").at(0).at("top_k");
  for (const auto& c : top)
    EXPECT_NEAR(c.at("probability").get<double>(), by_hand[c.at("class_index").get<size_t>()], 1e-6);
  expect_one_line_error(kestrel_cli("predict -c " + *ckpt_ + " --tta-shift 40 " + path),
                        "--tta-shift must be in [0, 16) pixels for 16x16 inputs, got 40", "a shift past the image");
}

TEST_F(EvalPredict, PredictorProbabilitiesSumToOneAndEasyImagesGetTheirClass) {
  Predictor p(*ckpt_);
  EXPECT_EQ(p.info().classes, kClasses);
  for (int k = 0; k < 3; ++k) {
    const data::Image clean = pattern(k, 77 + k, kSize, 0.0);
    const std::vector<float> probs = p.probabilities({clean})[0];
    ASSERT_EQ(probs.size(), 3u);
    EXPECT_NEAR(std::accumulate(probs.begin(), probs.end(), 0.0), 1.0, 1e-5);
    const TopK top = p.predict(clean, 2);
    ASSERT_EQ(top.size(), 2u);
    EXPECT_EQ(top[0].class_index, k) << "clean " << kClasses[k] << " image predicted as " << top[0].class_name;
    EXPECT_EQ(top[0].class_name, kClasses[k]);
    EXPECT_GE(top[0].probability, top[1].probability);
  }
  // Top-k larger than the class count gives every class once.
  EXPECT_EQ(p.predict(pattern(0, 1, kSize, 0.0), 10).size(), 3u);

  // On the CPU the predictor folds the batch norms; unfolded, the same probabilities.
  EXPECT_TRUE(models::is_fused_for_inference(p.model()));
  Predictor as_built(*ckpt_, Device::cpu(), /*fuse=*/false);
  EXPECT_FALSE(models::is_fused_for_inference(as_built.model()));
  EXPECT_EQ(p.num_parameters(), as_built.model().num_parameters());
  const data::Image noisy = pattern(1, 5, kSize, 0.3);
  const std::vector<float> a = p.probabilities({noisy})[0], b = as_built.probabilities({noisy})[0];
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << "class " << i;
}

TEST_F(EvalPredict, PredictorConvertsChannelsAndResizesAnyImage) {
  Predictor p(*ckpt_);
  // A 64x64 grey image of horizontal stripes of period 16: shrunk 4x it is the
  // 16x16 period-4 pattern; grey is copied into R, G and B.
  data::Image grey;
  grey.h = grey.w = 64;
  grey.c = 1;
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) grey.pixels.push_back(y / 8 % 2 ? 230 : 20);
  const TopK top = p.predict(grey, 3);
  double sum = 0;
  for (const auto& c : top) sum += c.probability;
  EXPECT_NEAR(sum, 1.0, 1e-5);
  EXPECT_EQ(top[0].class_name, "hstripes");

  data::FImage rgb(2, 2, 3, 0.5f);
  rgb.at(0, 0, 0) = 1.0f;
  const data::FImage g = convert_channels(rgb, 1);
  EXPECT_NEAR(g.at(0, 0, 0), 0.299f + 0.5f * (0.587f + 0.114f), 1e-6);
  EXPECT_EQ(convert_channels(g, 3).c, 3);
  data::Image bad = grey;
  bad.pixels.resize(10);
  EXPECT_THROW(p.predict(bad), ValueError);
}

// torchvision's evaluation framing: scale to cover the input size over the
// crop fraction, then the centre. On a horizontal ramp (bilinear resizing is
// exact on it) each output column holds the source column it maps back to.
TEST(ModelInput, ResizeAndCenterCropKeepsTheMiddleOfTheImage) {
  data::FImage ramp(40, 60, 1);
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 60; ++x) ramp.at(y, x, 0) = static_cast<float>(x);
  // Cover 16x16 / 0.5 = 32x32: scale max(32/40, 32/60) = 0.8 -> 32x48; the
  // centred 16x16 starts at row 8, column 16 of that.
  const data::FImage out = data::resize_center_crop(ramp, 16, 16, 0.5);
  ASSERT_EQ(out.h, 16);
  ASSERT_EQ(out.w, 16);
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x)
      ASSERT_NEAR(out.at(y, x, 0), (16 + x + 0.5) / 0.8 - 0.5, 1e-4) << "row " << y << " column " << x;
  // A fraction of 1 on a square image is the plain resize.
  data::FImage square(30, 30, 1);
  for (int i = 0; i < 900; ++i) square.data[i] = static_cast<float>(i % 7);
  const data::FImage plain = data::resize_image(square, 12, 12), framed = data::resize_center_crop(square, 12, 12, 1.0);
  EXPECT_EQ(plain.data, framed.data);
  EXPECT_THROW(data::resize_center_crop(square, 12, 12, 0.0), ValueError);

  // The checkpoint metadata carries it; model_input_transform applies it.
  tools::ModelInfo info;
  info.model = "cifar10_200k";
  info.num_classes = 2;
  info.in_channels = 1;
  info.height = info.width = 16;
  info.crop_fraction = 0.5;
  const tools::ModelInfo back = tools::ModelInfo::from_metadata(info.to_metadata(), "metadata");
  EXPECT_EQ(back.crop_fraction, 0.5);
  data::FImage img = ramp;
  Generator gen(1);
  model_input_transform(back)(img, gen);
  EXPECT_EQ(img.data, out.data);
  info.crop_fraction = 1.5;
  EXPECT_THROW(tools::ModelInfo::from_metadata(info.to_metadata(), "metadata"), IOError);
}

TEST_F(EvalPredict, PredictBatchMatchesOneAtATimeAndReadsFiles) {
  Predictor p(*ckpt_);
  std::vector<data::Image> imgs;
  for (int i = 0; i < 7; ++i) imgs.push_back(pattern(i % 3, 900 + i));
  const std::vector<TopK> batched = p.predict_batch(imgs, 3, 3);
  ASSERT_EQ(batched.size(), 7u);
  for (size_t i = 0; i < imgs.size(); ++i) {
    const TopK one = p.predict(imgs[i], 3);
    EXPECT_EQ(batched[i][0].class_index, one[0].class_index) << "image " << i;
    EXPECT_NEAR(batched[i][0].probability, one[0].probability, 1e-5) << "image " << i;
  }
  const std::string file = *shared_ + "/data/test/vstripes/0.png";
  const std::vector<TopK> from_files = p.predict_batch(std::vector<std::string>{file, file}, 1);
  ASSERT_EQ(from_files.size(), 2u);
  EXPECT_EQ(from_files[0][0].class_index, p.predict(file, 1)[0].class_index);
  EXPECT_THROW(p.predict(*scratch_ + "/no_such.png"), IOError);
}

TEST_F(EvalPredict, PredictCliPrintsAnAlignedTableAndMachineReadableJson) {
  const std::string folder = *shared_ + "/data/test/hstripes";
  const CliResult table = kestrel_cli("predict --checkpoint " + *ckpt_ + " " + folder + "/1.png --top-k 2");
  ASSERT_EQ(table.rc, 0) << table.err;
  std::vector<std::string> lines;
  std::stringstream ss(table.out);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 3u) << table.out;  // header + 2 ranks
  EXPECT_EQ(lines[0].find("rank"), lines[1].find("   1")) << table.out;
  EXPECT_EQ(lines[1].size(), lines[2].size()) << "rows of one table have one width:\n" << table.out;
  EXPECT_NE(lines[1].find("hstripes"), std::string::npos) << table.out;

  const CliResult json = kestrel_cli("predict --checkpoint " + *ckpt_ + " " + folder + " --format json -k 3");
  ASSERT_EQ(json.rc, 0) << json.err;
  const nlohmann::json j = nlohmann::json::parse(json.out);
  ASSERT_EQ(j["predictions"].size(), 24u);
  EXPECT_EQ(j["predictions"][0]["image"].get<std::string>(), folder + "/0.png");
  EXPECT_EQ(j["predictions"][1]["image"].get<std::string>(), folder + "/1.png") << "sorted by path";
  int right = 0;
  for (const auto& pred : j["predictions"]) {
    double sum = 0;
    for (const auto& c : pred["top_k"]) sum += c["probability"].get<double>();
    EXPECT_NEAR(sum, 1.0, 1e-5);
    right += pred["top_k"][0]["class_name"] == "hstripes";
  }
  EXPECT_GE(right, 18) << "of 24 horizontal-stripe images";

  // CSV on stdout, or any format into a file (named by its extension), holding the same answers.
  const CliResult csv = kestrel_cli("predict --checkpoint " + *ckpt_ + " " + folder + " --format csv -k 3");
  ASSERT_EQ(csv.rc, 0) << csv.err;
  std::stringstream rows(csv.out);
  std::string line;
  std::getline(rows, line);
  EXPECT_EQ(line, "image,rank,class_index,class_name,probability");
  std::vector<std::string> csv_lines;
  while (std::getline(rows, line)) csv_lines.push_back(line);
  ASSERT_EQ(csv_lines.size(), 72u) << "3 rows for each of 24 images";
  const auto& first = j["predictions"][0]["top_k"][0];
  char prob[32];
  std::snprintf(prob, sizeof(prob), "%.6f", first["probability"].get<double>());
  EXPECT_EQ(csv_lines[0], folder + "/0.png,1," + std::to_string(first["class_index"].get<int>()) + "," +
                              first["class_name"].get<std::string>() + "," + prob);
  const std::string file = kestrel::testing::temp_path("predictions.csv");
  const CliResult to_file = kestrel_cli("predict --checkpoint " + *ckpt_ + " " + folder + " -k 3 -o " + file);
  ASSERT_EQ(to_file.rc, 0) << to_file.err;
  EXPECT_EQ(to_file.out, "");
  EXPECT_EQ(kestrel::testing::read_text(file), csv.out);
  EXPECT_NE(to_file.err.find("predictions for 24 images written to " + file), std::string::npos) << to_file.err;
  const std::string json_file = kestrel::testing::temp_path("predictions.json");
  ASSERT_EQ(kestrel_cli("predict --checkpoint " + *ckpt_ + " " + folder + " -k 3 -o " + json_file).rc, 0);
  EXPECT_EQ(nlohmann::json::parse(kestrel::testing::read_text(json_file)), j);
  const std::string odd = kestrel::testing::temp_path("odd_names");
  std::filesystem::create_directories(odd);
  std::filesystem::copy_file(folder + "/0.png", odd + "/x,\"y\".png", std::filesystem::copy_options::overwrite_existing);
  const CliResult quoted = kestrel_cli("predict --checkpoint " + *ckpt_ + " " + odd + " --format csv -k 1");
  ASSERT_EQ(quoted.rc, 0) << quoted.err;
  EXPECT_NE(quoted.out.find("\n\"" + odd + "/x,\"\"y\"\".png\",1,"), std::string::npos) << quoted.out;
  kestrel::testing::expect_one_line_error(
      kestrel_cli("predict --checkpoint " + *ckpt_ + " " + folder + " -o " + kestrel::testing::temp_path("no/such") +
                  "/p.csv"),
      "no/such", "an output file in a missing folder");
}

TEST_F(EvalPredict, CliFailsWithOneLineForEachBadInput) {
  const std::string img = *shared_ + "/data/test/checker/0.png";
  expect_one_line_error(kestrel_cli("predict --checkpoint " + *scratch_ + "/nope.safetensors " + img),
                        "checkpoint not found", "missing checkpoint (predict)");
  expect_one_line_error(kestrel_cli("eval --checkpoint " + *scratch_ + "/nope.safetensors"), "checkpoint not found",
                        "missing checkpoint (eval)");
  expect_one_line_error(kestrel_cli("predict --checkpoint " + *ckpt_ + " " + *scratch_ + "/missing.png"),
                        "missing.png", "missing image");
  const std::string corrupt = *scratch_ + "/corrupt.png";
  {
    std::ofstream f(corrupt, std::ios::binary);
    const std::string bytes = read_text(img);
    f << bytes.substr(0, bytes.size() / 3);  // a truncated PNG
  }
  for (const char* format : {"table", "csv"}) {
    const CliResult unreadable =
        kestrel_cli("predict --checkpoint " + *ckpt_ + " --format " + format + " " + corrupt);
    expect_one_line_error(unreadable, "corrupt.png", "corrupt image");
    EXPECT_EQ(unreadable.out, "") << format << ": no header before the error";
  }
  const std::string not_ckpt = *scratch_ + "/not_a_checkpoint.safetensors";
  std::ofstream(not_ckpt) << "this is not a safetensors file";
  expect_one_line_error(kestrel_cli("predict --checkpoint " + not_ckpt + " " + img), "not_a_checkpoint",
                        "corrupt checkpoint");
  const std::string run = *shared_ + "/run";
  expect_one_line_error(kestrel_cli("predict --checkpoint " + run + " " + img),
                        run + " is a folder; give a checkpoint file: " + run + "/best.safetensors",
                        "a run folder for a checkpoint");
  expect_one_line_error(kestrel_cli("eval --checkpoint " + run + "/config.json"),
                        run + "/config.json is JSON, not a checkpoint; give " + run + "/best.safetensors",
                        "a run's config.json for a checkpoint");
  const std::string graph = *scratch_ + "/model.onnx";
  std::ofstream(graph) << "not read";
  expect_one_line_error(kestrel_cli("predict --checkpoint " + graph + " " + img),
                        graph + " is an ONNX graph (kestrel export's output), not a checkpoint",
                        "an ONNX file for a checkpoint");
  expect_one_line_error(kestrel_cli("predict --checkpoint " + img + " " + img), img + " is an image, not a checkpoint",
                        "an image for a checkpoint");
  expect_one_line_error(kestrel_cli("eval --checkpoint " + *ckpt_ + " --device cpu --cuda-graph --no-progress"),
                        "eval: --cuda-graph needs a CUDA device (it is cpu)", "--cuda-graph on the CPU");
}

// A folder with an unreadable image: without --skip-bad predict stops naming it
// (and the flag); with it the others are answered and the bad one listed.
TEST_F(EvalPredict, PredictSkipsUnreadableImagesOnlyWhenAsked) {
  const std::string folder = *scratch_ + "/with_bad";
  fs::create_directories(folder);
  for (const char* name : {"0.png", "1.png", "2.png"})
    fs::copy_file(*shared_ + "/data/test/vstripes/" + name, folder + "/" + name);
  const std::string bytes = read_text(folder + "/0.png");
  std::ofstream(folder + "/1b.png", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  expect_one_line_error(kestrel_cli("predict -c " + *ckpt_ + " " + folder), "1b.png",
                        "an unreadable image in the folder");
  const CliResult stopped = kestrel_cli("predict -c " + *ckpt_ + " " + folder);
  EXPECT_NE(stopped.err.find("--skip-bad skips unreadable images"), std::string::npos) << stopped.err;

  const CliResult json = kestrel_cli("predict -c " + *ckpt_ + " --skip-bad --format json -k 1 -b 2 " + folder);
  ASSERT_EQ(json.rc, 0) << json.err;
  const nlohmann::json j = nlohmann::json::parse(json.out);
  ASSERT_EQ(j.at("predictions").size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(j["predictions"][i]["image"], folder + "/" + std::to_string(i) + ".png");
    EXPECT_EQ(j["predictions"][i]["top_k"][0]["class_name"], "vstripes");
  }
  ASSERT_EQ(j.at("skipped").size(), 1u);
  EXPECT_EQ(j["skipped"][0]["image"], folder + "/1b.png");
  EXPECT_NE(json.err.find("1 unreadable image skipped"), std::string::npos) << json.err;

  const CliResult table = kestrel_cli("predict -c " + *ckpt_ + " --skip-bad -k 1 -b 1 --no-progress " + folder);
  ASSERT_EQ(table.rc, 0) << table.err;
  EXPECT_EQ(std::count(table.out.begin(), table.out.end(), '\n'), 4) << "a header and three rows:\n" << table.out;
  EXPECT_EQ(table.out.find("1b.png"), std::string::npos) << table.out;
  // Every image skipped: the header alone.
  const CliResult none = kestrel_cli("predict -c " + *ckpt_ + " --skip-bad --format csv " + folder + "/1b.png");
  ASSERT_EQ(none.rc, 0) << none.err;
  EXPECT_EQ(none.out, "image,rank,class_index,class_name,probability\n");
}

TEST_F(EvalPredict, MismatchedCheckpointsNameTheFirstMismatchingTensors) {
  const io::SafetensorsContents good = io::load_safetensors(*ckpt_);
  ModelInfo info = ModelInfo::from_metadata(good.metadata, *ckpt_);

  // Class count: metadata says 5 classes, the classifier weights hold 3.
  ModelInfo five = info;
  five.num_classes = 5;
  io::Metadata meta = good.metadata;
  meta["kestrel.model_info"] = five.to_metadata().at("kestrel.model_info");
  const std::string classes_path = *scratch_ + "/five_classes.safetensors";
  io::save_safetensors(classes_path, good.tensors, meta);
  try {
    Predictor p(classes_path);
    ADD_FAILURE() << "a 3-class checkpoint loaded as a 5-class model";
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("five_classes.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("has shape [3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("5 classes"), std::string::npos) << msg;
  }
  expect_one_line_error(kestrel_cli("eval --checkpoint " + classes_path), "does not match the model",
                        "class-count mismatch (eval)");

  // Architecture: another zoo model's weights saved under this model's name.
  models::ModelOptions mo;
  mo.num_classes = 3;
  mo.cifar_stem = true;
  const nn::ModulePtr other = models::build_model("emn_tiny", mo);
  const std::string arch_path = *scratch_ + "/emn_as_cifar.safetensors";
  save_checkpoint(arch_path, *other, info);
  const CliResult r = kestrel_cli("predict --checkpoint " + arch_path + " " + *shared_ + "/data/test/checker/0.png");
  expect_one_line_error(r, "does not match the model", "architecture mismatch (predict)");
  EXPECT_NE(r.err.find("missing "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("model 'cifar10_200k'"), std::string::npos) << r.err;
}

// A copy of the fixture's checkpoint whose metadata says `change(info)`.
std::string checkpoint_with(const std::string& ckpt, const std::string& path,
                            const std::function<void(ModelInfo&)>& change) {
  const io::SafetensorsContents good = io::load_safetensors(ckpt);
  ModelInfo info = ModelInfo::from_metadata(good.metadata, ckpt);
  change(info);
  io::Metadata meta = good.metadata;
  meta["kestrel.model_info"] = info.to_metadata().at("kestrel.model_info");
  io::save_safetensors(path, good.tensors, meta);
  return path;
}

// Code points: the columns a terminal gives UTF-8 text.
size_t code_points(const std::string& s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char ch) { return (ch & 0xC0) != 0x80; }));
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  return lines;
}

TEST_F(EvalPredict, EvalRefusesDataWhoseClassesDifferFromTheCheckpoints) {
  const std::string renamed = checkpoint_with(*ckpt_, *scratch_ + "/renamed.safetensors",
                                              [](ModelInfo& i) { i.classes = {"checker", "hstripes", "zebra"}; });
  const std::string eval =
      " --data-dir " + *shared_ + "/data --no-progress --latency-iters 0 --out " + *scratch_ + "/ev";
  expect_one_line_error(kestrel_cli("eval --checkpoint " + renamed + eval),
                        "class 2 of folder at " + *shared_ +
                            "/data is 'vstripes' but the checkpoint's class 2 is 'zebra'",
                        "class names differ (eval)");
  // A test/ split that lacks one of train/'s classes.
  const std::string data = *scratch_ + "/two_test_classes";
  fs::remove_all(data);
  fs::create_directories(data + "/test");
  fs::create_directory_symlink(*shared_ + "/data/train", data + "/train");
  for (const char* c : {"checker", "hstripes"})
    fs::create_directory_symlink(*shared_ + "/data/test/" + c, data + "/test/" + c);
  expect_one_line_error(kestrel_cli("eval --checkpoint " + *ckpt_ + " --data-dir " + data + " --no-progress"),
                        "test/ lacks class 'vstripes' that train/ has", "splits with different classes (eval)");
}

TEST_F(EvalPredict, ModelWithMoreOutputsThanItsDataHasClassesIsEvaluatedAndItsExtraOutputsNamed) {
  // As kestrel train --num-classes 5 on the 3-class data leaves it: 5 outputs, 3 names.
  ModelInfo info = load_checkpoint(*ckpt_).info;
  info.num_classes = 5;
  const std::string five = *scratch_ + "/five_outputs.safetensors";
  save_checkpoint(five, *build_from_info(info), info);
  EvalOptions o = quiet_eval(five);
  o.data_dir = *shared_ + "/data";
  const EvalReport r = run_eval(o);
  EXPECT_EQ(r.images, 72);
  EXPECT_EQ(r.classes, (std::vector<std::string>{"checker", "hstripes", "vstripes", "class 3 (unnamed)",
                                                 "class 4 (unnamed)"}));
  EXPECT_EQ(r.confusion.size(), 5u);

  const CliResult json =
      kestrel_cli("predict --checkpoint " + five + " " + *shared_ + "/data/test/checker/0.png -k 5 --format json");
  ASSERT_EQ(json.rc, 0) << json.err;
  const nlohmann::json top = nlohmann::json::parse(json.out)["predictions"][0]["top_k"];
  ASSERT_EQ(top.size(), 5u);
  for (const auto& c : top) {
    const int64_t k = c["class_index"].get<int64_t>();
    EXPECT_EQ(c["class_name"].get<std::string>(), k < 3 ? kClasses[k] : "class " + std::to_string(k) + " (unnamed)");
  }
}

TEST_F(EvalPredict, PredictRejectsATopKOrBatchSizeBelowOneInOneClearLine) {
  const std::string img = " " + *shared_ + "/data/test/checker/0.png";
  expect_one_line_error(kestrel_cli("predict --checkpoint " + *ckpt_ + img + " -k 0"),
                        "--top-k must be at least 1, got 0", "top-k 0");
  expect_one_line_error(kestrel_cli("predict --checkpoint " + *ckpt_ + img + " --batch-size 0"),
                        "--batch-size must be at least 1, got 0", "batch size 0");
}

TEST_F(EvalPredict, PredictTableAlignsClassNamesOfManyBytesPerCharacter) {
  const std::string german = checkpoint_with(*ckpt_, *scratch_ + "/strasse.safetensors",
                                             [](ModelInfo& i) { i.classes = {"Straße", "hstripes", "vstripes"}; });
  const CliResult table =
      kestrel_cli("predict --checkpoint " + german + " " + *shared_ + "/data/test/checker/0.png -k 3");
  ASSERT_EQ(table.rc, 0) << table.err;
  const std::vector<std::string> lines = lines_of(table.out);
  ASSERT_EQ(lines.size(), 4u) << table.out;
  EXPECT_NE(table.out.find("Straße"), std::string::npos) << table.out;
  for (const std::string& line : lines)
    EXPECT_EQ(code_points(line), code_points(lines[0])) << "rows of one table have one width:\n" << table.out;
}

TEST_F(EvalPredict, PredictTakesTheFormatsTrainingTakesAndFollowsSymlinkedFolders) {
  const std::string folder = *scratch_ + "/predict_folder";
  fs::remove_all(folder);
  fs::create_directories(folder);
  fs::create_directory_symlink(*shared_ + "/data/test/checker", folder + "/linked");
  const data::Image img = pattern(1, 42);
  std::string ppm = "P6\n" + std::to_string(img.w) + " " + std::to_string(img.h) + "\n255\n";
  ppm.append(img.pixels.begin(), img.pixels.end());
  std::ofstream(folder + "/stripes.ppm", std::ios::binary) << ppm;
  const CliResult json = kestrel_cli("predict --checkpoint " + *ckpt_ + " " + folder + " --format json -k 1");
  ASSERT_EQ(json.rc, 0) << json.err;
  const nlohmann::json preds = nlohmann::json::parse(json.out)["predictions"];
  ASSERT_EQ(preds.size(), 25u) << "24 images through the link and the PPM";
  EXPECT_EQ(preds[0]["image"].get<std::string>(), folder + "/linked/0.png");
  EXPECT_EQ(preds[24]["image"].get<std::string>(), folder + "/stripes.ppm");
}

}  // namespace
