// kestrel bench: the model it times is the zoo's, both speeds are measured,
// and bad settings are named.
#include <gtest/gtest.h>

#include "models/registry.h"
#include "models/summary.h"
#include "test_util.h"
#include "tools/lib/model_bench.h"

namespace kestrel {
namespace {

TEST(ModelBench, TimesTheZooModelItDescribes) {
  tools::BenchOptions o;
  o.model = "cifar10_200k";
  o.height = o.width = 32;
  o.batch = 4;
  o.warmup = 1;
  o.iters = 2;
  const tools::BenchResult r = tools::bench_model(o);
  EXPECT_EQ(r.params, 150690);  // the CIFAR net's published size at its default 10 classes
  models::ModelOptions mo;
  mo.num_classes = 10;
  mo.cifar_stem = true;
  auto m = models::build_model("cifar10_200k", mo);
  EXPECT_EQ(r.macs, models::summarize(*m, {1, 32, 32, 3}).total_macs);
  EXPECT_GT(r.infer_ms, 0.0);
  EXPECT_NEAR(r.infer_img_s, 4000.0 / r.infer_ms, 1e-6 * r.infer_img_s);
  // Not compared with the inference time: on a loaded CI machine either can spike.
  EXPECT_GT(r.train_ms, 0.0);
  EXPECT_NEAR(r.train_img_s, 4000.0 / r.train_ms, 1e-6 * r.train_img_s);
  o.train = false;
  EXPECT_EQ(tools::bench_model(o).train_ms, 0.0);
}

TEST(ModelBench, ProfileSplitsInferenceAndTrainingStepsByOp) {
  const testing::CliResult r = testing::kestrel_cli(
      "bench -m cifar10_200k --input 3x32x32 -b 2 --iters 2 --warmup 0 --device cpu --profile --profile-layers 4");
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* want : {"Inference, per batch:", "Training step, per batch:", "| conv2d 3x3 dw |",
                           "| conv2d 3x3 dw backward |", "| optimizer step | 1 |", "| layer | calls | ms |"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  tools::BenchOptions o;
  o.model = "cifar10_200k";
  o.height = o.width = 32;
  o.batch = 2;
  o.warmup = 0;
  o.iters = 1;
  o.profile = true;
  const tools::BenchResult b = tools::bench_model(o);
  EXPECT_GT(b.infer_profile.total_ms, 0.0);
  EXPECT_GT(b.train_profile.total_ms, 0.0);
  EXPECT_GT(b.train_profile.layers.size(), b.infer_profile.layers.size()) << "backward rows too";
}

TEST(ModelBench, BadSettingsAreNamed) {
  tools::BenchOptions o;
  o.model = "cifar10_200k";
  o.height = o.width = 32;
  o.amp = "fp16";
  EXPECT_THROW(tools::bench_model(o), ValueError);  // mixed precision is for CUDA
  o.amp = "fp8";
  EXPECT_THROW(tools::bench_model(o), ValueError);
  o.amp = "off";
  o.cuda_graph = true;
  EXPECT_EQ(testing::expect_message_of([&] { tools::bench_model(o); }),
            "bench: --cuda-graph needs a CUDA device (it is cpu)");
  o.cuda_graph = false;
  o.batch = 0;
  EXPECT_THROW(tools::bench_model(o), ValueError);
  testing::expect_one_line_error(testing::kestrel_cli("bench --input 3x224"), "--input must look like 3x224x224",
                                 "a malformed input size");
  testing::expect_one_line_error(testing::kestrel_cli("bench -m resnet7 --input 3x32x32"), "resnet7",
                                 "an unknown model");
  const testing::CliResult r =
      testing::kestrel_cli("bench -m cifar10_200k --input 1x28x28 -b 2 --iters 1 --warmup 0 --device cpu");
  ASSERT_EQ(r.rc, 0) << r.err;
  // One input channel: the seed's 150,690 less the 3x3 stem's weights for two channels (2 * 9 * 20 outputs).
  EXPECT_NE(r.out.find("| cifar10_200k | " + std::to_string(150690 - 2 * 9 * 20) + " |"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kestrel

namespace kestrel {
namespace {

// bench/torch_model_bench.py, the PyTorch side of the GPU check's model table:
// it runs, and its models have kestrel bench's class counts and parameters.
TEST(ModelBench, PyTorchTwinTimesTheSameModels) {
  const std::string py = testing::python_with("torchvision");
  if (py.empty()) GTEST_SKIP() << "python3 with torch and torchvision not found; skipping bench/torch_model_bench.py";
  const std::string out = testing::temp_path("torch_model_bench.txt");
  ASSERT_EQ(testing::run_python(py, "bench/torch_model_bench.py",
                                "emn_tiny mobilenet_v3_small --input 3x32x32 -b 2 --iters 1 --warmup 0 --device cpu > " +
                                    out),
            0);
  const std::string table = testing::read_text(out);
  for (const char* name : {"emn_tiny", "mobilenet_v3_small"}) {
    tools::BenchOptions o;
    o.model = name;
    o.height = o.width = 32;
    o.batch = 2;
    o.warmup = 0;
    o.iters = 1;
    o.train = false;
    const std::string row = std::string("| ") + name + " | " + std::to_string(tools::bench_model(o).params) + " | cpu | 2 |";
    EXPECT_NE(table.find(row), std::string::npos) << row << " not in:\n" << table;
  }
}

}  // namespace
}  // namespace kestrel
