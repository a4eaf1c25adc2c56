// int8 quantization of whole models: batch norm folding and range
// calibration, quantized checkpoints, the int8 ONNX graph in onnxruntime, and
// kestrel qat end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/io/onnx_export.h"
#include "engine/nn/layers.h"
#include "engine/nn/quant.h"
#include "engine/ops/conv.h"
#include "models/quantize.h"
#include "models/registry.h"
#include "test_util.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/trainer.h"
#include "train_run_util.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;
using testing::eval_logits;
using testing::temp_path;
using testing::zoo_options;

// Eval mode over a few batches under a CalibrationGuard, as kestrel qat calibrates.
void calibrate(nn::Module& m, const Shape& input, uint64_t seed, int batches = 3) {
  m.eval();
  nn::CalibrationGuard calibrating;
  NoGradGuard g;
  for (int i = 0; i < batches; ++i) m(testing::random_tensor(input, seed + i, DType::F32));
}

double span(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
}

// Folding and quantizing keeps what the network computes, up to int8 rounding:
// the calibrated model's logits stay near the float model's.
TEST(PrepareQuantization, FoldsEveryConvBatchNormPairAndStaysNearTheFloatModel) {
  auto m = models::build_model("cifar10_200k", zoo_options(10, true, 1));
  const Shape input{8, 28, 28, 1};
  const Tensor x = testing::random_tensor(input, 1, DType::F32);
  testing::calibrate_batch_norms(*m, x, 2);
  const Tensor float_logits = eval_logits(*m, x);
  const size_t float_tensors = m->state_dict().size();

  const models::QuantizationReport r = models::prepare_quantization(*m, input);
  // 1 stem + 8 blocks x 4 + 3 shortcuts convs; a BN after every conv but the depthwise ones.
  EXPECT_EQ(r.convs, 36);
  EXPECT_EQ(r.folded_norms, 20);
  EXPECT_EQ(r.linears, 1);
  EXPECT_TRUE(r.float_layers.empty());
  EXPECT_TRUE(models::is_quantized(*m));
  EXPECT_THROW(models::prepare_quantization(*m, input), ValueError);
  // Folded BNs lose weight, bias, mean, var and count but keep a range (and the
  // 8 with a residual a second one); convs gain ranges and, folded, a bias.
  EXPECT_EQ(m->state_dict().size(), float_tensors - 20 * 5 + 20 + 8 + 37 + 16 + 20 + 1);

  try {
    eval_logits(*m, x);
    FAIL() << "an uncalibrated model should not run in eval mode";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("range was never observed"), std::string::npos) << e.what();
  }
  calibrate(*m, input, 10);
  const Tensor int8_logits = eval_logits(*m, x);
  const double diff = span(sub(int8_logits, float_logits)) + 0.0;
  const double worst = max(abs(sub(int8_logits, float_logits)).reshape({-1}), 0).item();
  EXPECT_LT(worst, 0.2 * span(float_logits)) << "int8 logits drift from the float ones (span of the diff " << diff
                                             << ")";
  EXPECT_GT(worst, 0.0) << "nothing was quantized";
}

TEST(PrepareQuantization, ReachesSqueezeExciteConvsButNotOtherFusedOps) {
  // MobileNetV3's SE blocks run their convs as modules once prepared: all quantized.
  auto m = models::build_model("mobilenet_v3_small", zoo_options(10, false, 3, 0.5));
  const models::QuantizationReport r = models::prepare_quantization(*m, {1, 64, 64, 3});
  EXPECT_EQ(r.convs, 52);  // 34 conv-BN-act + 9 SE blocks x 2
  EXPECT_EQ(r.folded_norms, 34);
  EXPECT_EQ(r.linears, 2);
  EXPECT_TRUE(r.float_layers.empty()) << r.float_layers[0];
}

// A conv called as a function, not through a Conv2d module, stays float and is named.
class FunctionalConv : public nn::Module {
 public:
  FunctionalConv() {
    layer = register_module("layer", std::make_shared<nn::Conv2d>(1, 4, 3));
    raw_weight = register_parameter("raw_weight", Tensor::ones({4, 1, 1, 4}), true);
  }
  Tensor forward(const Tensor& x) override { return conv2d((*layer)(x), raw_weight, Tensor(), {}); }
  std::shared_ptr<nn::Conv2d> layer;
  Tensor raw_weight;
};

TEST(PrepareQuantization, NamesTheConvolutionsItCannotReach) {
  FunctionalConv m;
  const models::QuantizationReport r = models::prepare_quantization(m, {1, 8, 8, 1});
  EXPECT_EQ(r.convs, 1);
  ASSERT_EQ(r.float_layers.size(), 1u);
  EXPECT_EQ(r.float_layers[0], " (conv2d)");
}

TEST(PrepareQuantization, RejectsAnInputThatIsNotNhwc) {
  auto m = models::build_model("cifar10_200k", zoo_options(10, true, 1));
  EXPECT_THROW(models::prepare_quantization(*m, {28, 28, 1}), ShapeError);
}

// A quantized checkpoint rebuilds the prepared model: same logits after loading.
TEST(QuantizedCheckpoint, RoundTripsThroughBuildFromInfo) {
  tools::ModelInfo info = testing::fashion_mnist_model_info("cifar10_200k");
  auto m = tools::build_from_info(info);
  const Shape input{4, 28, 28, 1};
  testing::calibrate_batch_norms(*m, testing::random_tensor(input, 3, DType::F32), 4);
  models::prepare_quantization(*m, input);
  calibrate(*m, input, 20);
  info.quantized = true;
  const std::string path = temp_path("quantized.safetensors");
  tools::save_checkpoint(path, *m, info);
  const tools::LoadedModel loaded = tools::load_checkpoint(path);
  EXPECT_TRUE(loaded.info.quantized);
  EXPECT_TRUE(models::is_quantized(*loaded.model));
  const Tensor x = testing::random_tensor(input, 30, DType::F32);
  testing::expect_close(eval_logits(*loaded.model, x), eval_logits(*m, x), 0, 0, "logits after reloading");
}

// The exported int8 graph: QDQ pairs around every quantized layer, int8
// weights (about a quarter of the float graph's bytes), and onnxruntime both
// as written and with its integer kernels gives Kestrel's fake-quantized logits.
TEST(QuantizedExport, OnnxruntimeRunsTheInt8GraphAsKestrelSimulatesIt) {
  KESTREL_REQUIRE_ONNX();
  const std::string py = testing::python_with("onnxruntime");
  if (py.empty()) GTEST_SKIP() << "python3 with onnxruntime not found (tools/setup.sh installs it)";
  const std::string dir = temp_path("onnx_int8");
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct Case {
    std::string model;
    Shape input;
    models::ModelOptions options;
    int min_int8;             // layers onnxruntime must run as integer kernels
    double max_weight_ratio;  // of the float graph's weight bytes
    // How far onnxruntime may move the logits, as a fraction of their span:
    // running the QDQ graph as written (float sums in another order can land a
    // value on the neighbouring grid point; ResNet-18's 3x3x512 sums do), and
    // with its integer kernels. MobileNetV3's random-init logits span only
    // ~0.04, and integer requantization in its SE path (pool, two 1x1 convs on
    // 1x1 maps) moves them by 0.005-0.01 (up to 0.31 of the span), depending
    // on the calibrated scales: float rounding in the calibration pass moves
    // those (a change of global pooling's summation order took it from 0.23
    // to 0.31). Its QDQ-as-written logits still match Kestrel's exactly.
    double simulated_rtol, int8_rtol;
  };
  const std::vector<Case> cases = {
      {"cifar10_200k", {3, 28, 28, 1}, zoo_options(10, true, 1), 46, 0.3, 0.02, 0.03},
      {"mobilenet_v3_small", {3, 64, 64, 3}, zoo_options(10, false, 3, 0.5), 55, 0.3, 0.02, 0.4},
      {"resnet18", {3, 32, 32, 3}, zoo_options(10, true, 3), 30, 0.3, 0.05, 0.05},
  };
  std::ofstream list(dir + "/models.txt");
  uint64_t seed = 300;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.model);
    manual_seed(seed);  // the same weights whichever tests ran before
    auto m = models::build_model(c.model, c.options);
    const Tensor x = testing::random_tensor(c.input, seed++, DType::F32);
    testing::calibrate_batch_norms(*m, x, seed++);
    const std::string float_path = dir + "/" + c.model + "_float.onnx";
    const io::OnnxExportSummary f = io::export_onnx(*m, c.input, float_path);
    models::prepare_quantization(*m, c.input);
    calibrate(*m, c.input, seed);
    seed += 10;
    const io::OnnxExportSummary q = io::export_onnx(*m, c.input, dir + "/" + c.model + ".onnx");
    EXPECT_GE(q.op_counts.at("QuantizeLinear"), c.min_int8);
    EXPECT_EQ(q.op_counts.count("BatchNormalization"), 0u);
    EXPECT_LT(q.weight_bytes, c.max_weight_ratio * static_cast<double>(f.weight_bytes));
    testing::save_npy(dir + "/" + c.model + "_x.npy", x);
    testing::save_npy(dir + "/" + c.model + "_logits.npy", eval_logits(*m, x));
    list << c.model << " " << c.min_int8 << " " << c.simulated_rtol << " " << c.int8_rtol << "\n";
  }
  list.close();
  EXPECT_EQ(testing::run_python(py, "tests/interop/check_onnx_int8.py", dir), 0)
      << "tests/interop/check_onnx_int8.py found a mismatch (see its output above)";
}

// A float model trained on a little Fashion-MNIST, once for the tests below.
class QatRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::fashion_mnist_skip_reason().empty()) return;
    tools::TrainConfig c = testing::fashion_mnist_config("qat_float");
    c.limit_train = 2048;
    c.epochs = 3;
    float_top1_ = tools::train(c).best_top1;
    float_checkpoint_ = c.out + "/best.safetensors";
  }
  void SetUp() override {
    if (const std::string why = testing::fashion_mnist_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  }
  // What kestrel qat runs, on 512 of the float run's images (8 steps an epoch), at a small rate.
  static tools::TrainConfig qat_config(const std::string& name) {
    tools::TrainConfig c = testing::fashion_mnist_config(name);
    c.quantize_from = float_checkpoint_;
    c.limit_train = 512;
    c.lr = 0.001;
    c.warmup_epochs = 0;
    c.calib_batches = 4;
    return c;
  }
  static inline std::string float_checkpoint_;
  static inline double float_top1_ = 0;
};

// kestrel qat: the calibrated int8 model holds the float accuracy, the
// fine-tuned one too, and both checkpoints come back quantized for eval.
TEST_F(QatRun, CliCalibratesFineTunesAndWritesQuantizedCheckpoints) {
  const std::string out = temp_path("qat_cli");
  testing::CliResult r = testing::kestrel_cli(
      "qat --checkpoint " + float_checkpoint_ + " --limit-train 1024 --limit-test 500 --batch-size 64 --epochs 1 " +
      "--calib-batches 4 --workers 1 --no-progress --overwrite --out " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("quantized 36 convolutions and 1 linear layers to int8 (20 batch norms folded)"),
            std::string::npos)
      << r.err;
  double float_top1 = 0, calibrated = 0, best = 0;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "float top-1 %lf%%; int8 after calibration %lf%%; best top-1 %lf%%", &float_top1,
                        &calibrated, &best),
            3)
      << r.out;
  EXPECT_NEAR(float_top1, 100 * float_top1_, 1e-6);
  EXPECT_GT(float_top1, 60.0);
  EXPECT_GT(calibrated, float_top1 - 3.0) << "post-training int8 lost too much";
  EXPECT_GT(best, float_top1 - 3.0) << "fine-tuned int8 lost too much";
  for (const char* f : {"ptq.safetensors", "best.safetensors", "last.safetensors"}) {
    const tools::LoadedModel m = tools::load_checkpoint(out + "/" + f);
    EXPECT_TRUE(m.info.quantized) << f;
    EXPECT_TRUE(models::is_quantized(*m.model)) << f;
  }
  r = testing::kestrel_cli("eval -c " + out + "/best.safetensors --limit 500 --latency-iters 0 --no-progress");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("Top-1 (%)"), std::string::npos) << r.out;
  // kestrel table takes an int8 run: the float model's multiply-adds (its own are uncalibrated when built fresh).
  // --limit wrote beside the checkpoint under its own name; the table marks the part evaluated.
  r = testing::kestrel_cli("table " + out + "/eval-first500");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| cifar10_200k int8 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" (first "), std::string::npos) << r.out;

  // The float and int8 graphs side by side in onnxruntime (tools/onnx_report.py).
  if (io::onnx_export_available()) {
    ASSERT_EQ(testing::kestrel_cli("export -c " + float_checkpoint_ + " --overwrite -o " + out + "/float.onnx").rc, 0);
    ASSERT_EQ(testing::kestrel_cli("export -c " + out + "/best.safetensors --overwrite -o " + out + "/int8.onnx").rc, 0);
    EXPECT_LT(fs::file_size(out + "/int8.onnx"), fs::file_size(out + "/float.onnx") / 2);
    if (const std::string py = testing::python_with("onnxruntime"); !py.empty()) {
      EXPECT_EQ(testing::run_python(py, "tools/onnx_report.py",
                                    out + "/float.onnx " + out + "/int8.onnx --limit 300 --iters 3 --batch 64"),
                0);
    }
  }

  // --epochs 0: post-training quantization alone (and -c, as eval and export take it).
  const std::string ptq = temp_path("qat_ptq_only");
  r = testing::kestrel_cli("qat -c " + float_checkpoint_ +
                           " --limit-train 1024 --limit-test 500 --batch-size 64 --epochs 0 --calib-batches 2 "
                           "--workers 1 --no-progress --overwrite --out " + ptq);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("(ptq.safetensors)"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(ptq + "/ptq.safetensors"));
  EXPECT_TRUE(fs::exists(ptq + "/best.safetensors")) << "the calibrated model is the best so far";
  EXPECT_FALSE(fs::exists(ptq + "/last.safetensors"));
}

// qat fine-tunes on the images the float model saw: the float run's data
// folder, --skip-bad and augmentation (from its config.json) unless a flag says otherwise.
TEST_F(QatRun, KeepsTheFloatRunsAugmentationUnlessAFlagSetsIt) {
  const std::string run = temp_path("qat_float_copy");
  fs::create_directories(run);
  fs::copy_file(float_checkpoint_, run + "/best.safetensors", fs::copy_options::overwrite_existing);
  nlohmann::json cfg =
      nlohmann::json::parse(testing::read_text(fs::path(float_checkpoint_).parent_path().string() + "/config.json"));
  cfg["random_crop"] = false;
  cfg["hflip"] = false;
  cfg["cutout"] = 0.25;
  std::ofstream(run + "/config.json") << cfg.dump();
  const std::string base = "qat -c " + run + "/best.safetensors --limit-train 256 --limit-test 100 --epochs 0 "
                           "--calib-batches 1 --workers 1 --no-progress --overwrite --out " + temp_path("qat_keep");
  testing::CliResult r = testing::kestrel_cli(base);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("augmentation: cutout"), std::string::npos) << r.err;
  const nlohmann::json saved = nlohmann::json::parse(testing::read_text(temp_path("qat_keep") + "/config.json"));
  EXPECT_FALSE(saved["random_crop"].get<bool>());
  EXPECT_EQ(saved["cutout"].get<double>(), 0.25);
  EXPECT_EQ(saved["data_dir"], cfg["data_dir"]);
  r = testing::kestrel_cli(base + " --random-crop true");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("augmentation: crop"), std::string::npos) << r.err;
}

TEST_F(QatRun, BadRequestsAreNamedInOneLine) {
  const std::string out = " --no-progress --overwrite --out " + temp_path("qat_bad");
  testing::expect_one_line_error(testing::kestrel_cli("qat" + out), "kestrel qat needs --checkpoint", "no checkpoint");
  testing::expect_one_line_error(
      testing::kestrel_cli("qat --config " + testing::source_path("tools/recipes/qat_mobilenet_v3_small_w0.5_cifar10.toml") +
                           out),
      "float checkpoint not found: runs/distill_mobilenet_v3_small_w0.5_cifar10/best.safetensors",
      "the recipe, before its float model is trained");
  testing::expect_one_line_error(testing::kestrel_cli("qat --checkpoint /nonexistent.safetensors" + out),
                                 "float checkpoint not found: /nonexistent.safetensors", "a missing checkpoint");
  testing::expect_one_line_error(testing::kestrel_cli("qat --amp bf16 --checkpoint " + float_checkpoint_ + out),
                                 "--amp must be off", "mixed precision");
  testing::expect_one_line_error(testing::kestrel_cli("qat --epochs -1 --checkpoint " + float_checkpoint_ + out),
                                 "--epochs must be 0 (calibration alone) or more, got -1", "negative epochs");
  const std::string rgb = testing::write_pattern_folder_dataset("qat_rgb_folder");
  testing::expect_one_line_error(
      testing::kestrel_cli("qat --dataset folder --data-dir " + rgb + " --checkpoint " + float_checkpoint_ + out),
      "reads 1x28x28 images but this run's data gives 3x28x28", "another data set");
  const tools::LoadedModel f = tools::load_checkpoint(float_checkpoint_);
  tools::ModelInfo info = f.info;
  models::prepare_quantization(*f.model, {1, 28, 28, 1});
  info.quantized = true;
  const std::string quantized = temp_path("already_quantized.safetensors");
  tools::save_checkpoint(quantized, *f.model, info);
  testing::expect_one_line_error(testing::kestrel_cli("qat --checkpoint " + quantized + out), "is already quantized",
                                 "a quantized checkpoint");
}

// tools/onnx_report.py reads image folders by the model's class names, and
// names what is wrong with one.
TEST(OnnxReport, ReadsAnImageFolderAndNamesAMissingOne) {
  KESTREL_REQUIRE_ONNX();
  const std::string py = testing::python_with("onnxruntime");
  if (py.empty()) GTEST_SKIP() << "python3 with onnxruntime not found (tools/setup.sh installs it)";
  const std::string data = testing::write_pattern_folder_dataset("onnx_report_folder");
  tools::ModelInfo info;
  info.model = "cifar10_200k";
  info.num_classes = 3;
  info.height = info.width = 12;
  info.cifar_stem = true;
  info.dataset = "folder";
  info.classes = {"a", "b", "c"};
  info.mean = {0.5f, 0.5f, 0.5f};
  info.std = {0.25f, 0.25f, 0.25f};
  auto m = tools::build_from_info(info);
  const std::string path = temp_path("folder_model.onnx");
  io::OnnxExportOptions o;
  o.metadata = info.to_metadata();
  io::export_onnx(*m, {1, 12, 12, 3}, path, o);
  EXPECT_EQ(testing::run_python(py, "tools/onnx_report.py", path + " --data-dir " + data + " --iters 3 --batch 8"), 0);
  EXPECT_NE(testing::run_python(py, "tools/onnx_report.py", path + " --iters 3"), 0) << "no --data-dir for a folder";
  EXPECT_NE(testing::run_python(py, "tools/onnx_report.py", path + " --data-dir " + temp_path("nowhere")), 0);
}

// A qat run killed in its second epoch and resumed ends with the
// uninterrupted run's weights and ranges, bit for bit.
TEST_F(QatRun, ResumeIsExact) {
  tools::TrainConfig c = qat_config("qat_full");
  const tools::TrainSummary s = tools::train(c);
  ASSERT_TRUE(s.completed);
  EXPECT_NEAR(s.float_top1, float_top1_, 1e-12);
  EXPECT_GT(s.calibrated_top1, s.float_top1 - 0.05) << "post-training int8 lost too much (top-1 as fractions)";
  const std::string resumed = testing::kill_then_resume(c, "qat_killed", 11);
  testing::expect_checkpoints_match(c.out + "/last.safetensors", resumed + "/last.safetensors", 0.0, 0.0,
                                    "qat resumed after 11 steps");
}

}  // namespace
}  // namespace kestrel
