// kestrel bench: the model it times is the zoo's, both speeds are measured,
// and bad settings are named.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

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
  // Refused before the table starts: stdout stays empty.
  for (const auto& [args, expect] : std::vector<std::pair<std::string, std::string>>{
           {"-m emn_tiny -b 0", "bench: --batch-size must be >= 1, got 0"},
           {"-m emn_tiny --amp fp16 --device cpu", "bench: --amp fp16 needs a CUDA device"},
           {"-m emn_tiny --width-mult 0", "emn_tiny: width_mult must be positive, got 0"},
           {"-m cifar10_200k,resnet7", "unknown model 'resnet7'"}}) {
    const testing::CliResult refused = testing::kestrel_cli("bench --input 3x32x32 " + args);
    testing::expect_one_line_error(refused, expect, args);
    EXPECT_EQ(refused.out, "") << args;
  }
  const testing::CliResult r =
      testing::kestrel_cli("bench -m cifar10_200k --input 1x28x28 -b 2 --iters 1 --warmup 0 --device cpu");
  ASSERT_EQ(r.rc, 0) << r.err;
  // One input channel: the seed's 150,690 less the 3x3 stem's weights for two channels (2 * 9 * 20 outputs).
  EXPECT_NE(r.out.find("| cifar10_200k | " + std::to_string(150690 - 2 * 9 * 20) + " |"), std::string::npos) << r.out;

  // Several models, one row each, and the results as CSV or JSON.
  const std::string csv = testing::temp_path("bench_rows.csv"), json = testing::temp_path("bench_rows.json");
  const std::string two = "bench -m cifar10_200k,emn_tiny --input 3x32x32 -b 2 --iters 1 --warmup 0 --device cpu";
  const testing::CliResult to_csv = testing::kestrel_cli(two + " --no-train -o " + csv);
  ASSERT_EQ(to_csv.rc, 0) << to_csv.err;
  EXPECT_NE(to_csv.out.find("| cifar10_200k | 150690 |"), std::string::npos) << to_csv.out;
  EXPECT_NE(to_csv.out.find("| emn_tiny | "), std::string::npos) << to_csv.out;
  const std::string table = testing::read_text(csv);
  EXPECT_EQ(table.substr(0, table.find('\n')),
            "model,params,macs_per_image,device,batch,input,amp,infer_img_s,infer_ms,train_img_s,train_ms,cuda_graph");
  EXPECT_NE(table.find("\ncifar10_200k,150690,"), std::string::npos) << table;
  EXPECT_NE(table.find(",off,"), std::string::npos) << table;
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 3) << table;
  ASSERT_EQ(testing::kestrel_cli(two + " -o " + json).rc, 0);
  const nlohmann::json rows = nlohmann::json::parse(testing::read_text(json));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1]["model"], "emn_tiny");
  EXPECT_GT(rows[1]["train_img_s"].get<double>(), 0.0);
  EXPECT_EQ(rows[1]["params"].get<int64_t>(), tools::bench_model([] {
              tools::BenchOptions o;
              o.model = "emn_tiny", o.height = o.width = 32, o.batch = 1, o.iters = 1, o.warmup = 0, o.train = false;
              return o;
            }()).params);
  testing::expect_one_line_error(testing::kestrel_cli(two + " -o x.txt"), "--out must end in .csv or .json",
                                 "bad --out");
  testing::expect_one_line_error(testing::kestrel_cli(two + " --profile"), "--profile traces one model", "--profile");
  testing::expect_one_line_error(testing::kestrel_cli("bench -m cifar10_200k,,emn_tiny"), "has an empty name",
                                 "an empty name in the list");
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
