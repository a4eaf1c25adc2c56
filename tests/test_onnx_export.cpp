// ONNX export: every model family's graph runs in onnxruntime and gives
// Kestrel's logits; weights keep their state_dict names; ops with no ONNX form
// and bad CLI input are named.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/io/onnx_export.h"
#include "engine/ops/reduce.h"
#include "models/fuse.h"
#include "models/registry.h"
#include "test_util.h"
#include "tools/lib/checkpoint.h"
#include "train_run_util.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;
using testing::eval_logits;
using testing::temp_path;
using testing::zoo_options;

struct ExportCase {
  std::string model;
  Shape input;  // NHWC
  models::ModelOptions options;
  bool fused = false;  // exported after inference fusion (models/fuse.h), as the predictor runs it
};

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// One model of each family (and EMN on Fashion-MNIST's 1x28x28): exported with
// a free batch dim, then run by tests/interop/check_onnx.py at batch 3, which
// the trace (batch 2) never saw.
TEST(OnnxExport, EveryFamilyMatchesOnnxruntimeAtAnotherBatchSize) {
  KESTREL_REQUIRE_ONNX();
  const std::string py = testing::python_with("onnxruntime");
  if (py.empty()) GTEST_SKIP() << "python3 with onnxruntime not found (tools/setup.sh installs it)";
  const std::string dir = temp_path("onnx_zoo");
  fs::create_directories(dir);
  const std::vector<ExportCase> cases = {
      {"cifar10_200k", {3, 32, 32, 3}, zoo_options(10)},
      {"emn_tiny", {3, 28, 28, 1}, zoo_options(10, true, 1)},
      {"emn_small", {3, 32, 32, 3}, zoo_options(100, true)},
      {"efficientnet_b0", {3, 64, 64, 3}, zoo_options(10)},
      {"mobilenet_v2", {3, 64, 64, 3}, zoo_options(10)},
      {"mobilenet_v3_small", {3, 64, 64, 3}, zoo_options(10, false, 3, 0.5)},
      {"ghostnet_100", {3, 64, 64, 3}, zoo_options(10)},
      {"resnet18", {3, 64, 64, 3}, zoo_options(10)},
      {"densenet121", {3, 32, 32, 3}, zoo_options(10, true)},
      // Norms folded into the convs, residual adds and ReLUs in their epilogues.
      {"cifar10_200k", {3, 32, 32, 3}, zoo_options(10), true},
      {"resnet18", {3, 64, 64, 3}, zoo_options(10), true},
  };
  std::ofstream list(dir + "/models.txt");
  uint64_t seed = 100;
  for (const ExportCase& c : cases) {
    SCOPED_TRACE(c.model);
    models::ModelOptions o = c.options;
    o.drop_path = 0.0;
    auto m = models::build_model(c.model, o);
    const Tensor x = testing::random_tensor(c.input, seed++, DType::F32);
    testing::calibrate_batch_norms(*m, x, seed);
    seed += 1000;
    if (c.fused) models::fuse_for_inference(*m, c.input);
    const std::string name = c.model + (c.fused ? "_fused" : "");
    const io::OnnxExportSummary s = io::export_onnx(*m, c.input, dir + "/" + name + ".onnx");
    EXPECT_GT(s.op_counts.at("Conv"), 0);
    if (c.fused) {
      EXPECT_EQ(s.op_counts.count("BatchNormalization"), 0u);
    }
    EXPECT_EQ(s.file_bytes, static_cast<int64_t>(fs::file_size(dir + "/" + name + ".onnx")));
    testing::save_npy(dir + "/" + name + "_x.npy", x);
    testing::save_npy(dir + "/" + name + "_logits.npy", eval_logits(*m, x));
    list << name << "\n";
  }
  list.close();
  EXPECT_EQ(testing::run_python(py, "tests/interop/check_onnx.py", dir), 0)
      << "tests/interop/check_onnx.py found a mismatch (see its output above)";
}

// Weights used as they are keep their state_dict names (PyTorch's), so a graph
// can be matched against the checkpoint it came from; the batch norms stay
// BatchNormalization nodes, and the model comes back in training mode.
TEST(OnnxExport, InitializersCarryTheStateDictNames) {
  KESTREL_REQUIRE_ONNX();
  auto m = models::build_model("resnet18", zoo_options(10));
  m->train();
  const std::string path = temp_path("resnet18_names.onnx");
  const io::OnnxExportSummary s = io::export_onnx(*m, {1, 32, 32, 3}, path);
  EXPECT_TRUE(m->is_training());
  EXPECT_EQ(s.op_counts.at("Conv"), 20);
  EXPECT_EQ(s.op_counts.at("BatchNormalization"), 20);
  EXPECT_EQ(s.op_counts.at("Gemm"), 1);
  const std::string bytes = read_bytes(path);
  int64_t named = 0;
  for (const auto& [name, t] : m->state_dict()) {
    if (name.find("num_batches_tracked") != std::string::npos) continue;
    EXPECT_NE(bytes.find(name), std::string::npos) << name << " is not an initializer name";
    ++named;
  }
  EXPECT_EQ(named, 20 * 4 + 20 + 2);  // BN: weight, bias, mean, var; conv weights; fc weight and bias
}

// A module whose forward uses an op with no ONNX form here.
class SumsOverWidth : public nn::Module {
 public:
  Tensor forward(const Tensor& x) override { return sum(x, {2}, false); }
  std::string type_name() const override { return "SumsOverWidth"; }
};

TEST(OnnxExport, AnOpWithNoOnnxFormIsNamedAndNothingIsWritten) {
  KESTREL_REQUIRE_ONNX();
  SumsOverWidth m;
  const std::string path = temp_path("sums.onnx");
  fs::remove(path);
  try {
    io::export_onnx(m, {1, 4, 4, 2}, path);
    FAIL() << "export should have thrown";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("op 'sum' in '(model)' has no ONNX form yet"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(path));
  auto resnet = models::build_model("resnet18", zoo_options(10));
  EXPECT_THROW(io::export_onnx(*resnet, {1, 32, 32, 3}, temp_path("no_such_folder") + "/m.onnx"), IOError);
  EXPECT_THROW(io::export_onnx(*resnet, {32, 32, 3}, temp_path("m.onnx")), ShapeError);
}

// kestrel export on a checkpoint: it writes beside it by default, refuses to
// replace a file without --overwrite, and names a missing checkpoint.
TEST(OnnxExport, CliWritesBesideTheCheckpointAndNeverOverwritesSilently) {
  KESTREL_REQUIRE_ONNX();
  const std::string dir = temp_path("onnx_cli");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const tools::ModelInfo info = testing::fashion_mnist_model_info("emn_tiny");
  auto m = tools::build_from_info(info);
  const std::string ckpt = dir + "/best.safetensors";
  tools::save_checkpoint(ckpt, *m, info);

  testing::CliResult r = testing::kestrel_cli("export -c " + ckpt);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir + "/best.onnx"));
  EXPECT_NE(r.out.find("exported emn_tiny (10 classes) to " + dir + "/best.onnx"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("input  'input' [batch, 1, 28, 28] float32"), std::string::npos) << r.out;
  const std::string bytes = read_bytes(dir + "/best.onnx");
  EXPECT_NE(bytes.find("input_layout"), std::string::npos) << "the normalization is not in the metadata";

  if (const std::string py = testing::python_with("onnxruntime"); !py.empty()) {  // tools/onnx_latency.py times it
    EXPECT_EQ(testing::run_python(py, "tools/onnx_latency.py", dir + "/best.onnx --iters 3 --batch 4"), 0);
  }

  testing::expect_one_line_error(testing::kestrel_cli("export -c " + ckpt), "pass --overwrite to replace it",
                                 "export onto an existing file");
  r = testing::kestrel_cli("export --overwrite --batch 4 -c " + ckpt + " -o " + dir + "/fixed.onnx");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("[4, 1, 28, 28]"), std::string::npos) << r.out;
  testing::expect_one_line_error(testing::kestrel_cli("export -c " + dir + "/missing.safetensors"),
                                 "checkpoint not found", "a missing checkpoint");
  testing::expect_one_line_error(testing::kestrel_cli("export --batch -2 -c " + ckpt + " -o " + dir + "/n.onnx"),
                                 "--batch must be >= 1", "a negative batch");
  testing::expect_one_line_error(testing::kestrel_cli("export --overwrite -c " + ckpt + " -o " + dir),
                                 "is a folder; give -o a file path (e.g. " + dir + "/best.onnx)", "a folder as -o");
  EXPECT_TRUE(fs::is_directory(dir)) << "the folder given as -o must survive";
}

}  // namespace
}  // namespace kestrel

namespace kestrel {
namespace {

// tools/onnx_report.py and tools/torch_weights.py as a user runs them: every
// bad input one line on stderr, and onnx_report's images (resized, cropped,
// --limit) the ones kestrel eval and predict read.
TEST(PythonTools, OnnxReportAndTorchWeightsBehaveAsKestrel) {
  const std::string py = testing::python_with("numpy");
  if (py.empty()) GTEST_SKIP() << "no python3 with numpy";
  const int rc = testing::run_python(py, "tests/interop/check_python_tools.py",
                                     std::string(KESTREL_BINARY_DIR) + "/tools/kestrel " + temp_path("python_tools"));
  if (rc == 77) GTEST_SKIP() << "check_python_tools.py passed what it could run and skipped the rest (named above)";
  EXPECT_EQ(rc, 0) << "tests/interop/check_python_tools.py failed (its output above)";
}

}  // namespace
}  // namespace kestrel
