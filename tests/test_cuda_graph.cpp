// CUDA graphs (engine/cuda/graph.h, engine/nn/graphed_forward.h): a model's
// inference pass captured once and replayed gives, on every new input, exactly
// the eager pass's output (the same kernels on the same data: compared bit for
// bit); the graph's memory is never handed to other work while it lives; a
// capture that waits for the device or strays onto the legacy stream fails,
// naming the call. Skips without a CUDA device (runs on the CPU emulator).
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/nn/graphed_forward.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"
#include "models/registry.h"
#include "test_util.h"
#include "tools/lib/model_bench.h"
#include "tools/lib/report.h"
#include "tools/lib/trainer.h"
#include "train_run_util.h"

#if defined(KESTREL_HAVE_CUDA)
#include "engine/cuda/graph.h"
#include "engine/cuda/runtime.h"
#endif

namespace kestrel::testing {
namespace {

const Device kCuda = Device::cuda(0);

void expect_same_bits(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const Tensor a = actual.cpu().contiguous(), e = expected.cpu().contiguous();
  const std::vector<float> av = a.to_vector(), ev = e.to_vector();
  size_t differ = 0;
  for (size_t i = 0; i < av.size(); ++i) differ += std::memcmp(&av[i], &ev[i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << av.size() << " values differ";
}

nn::ModulePtr cuda_model(const std::string& name) {
  nn::ModulePtr m = models::build_model(name, zoo_options(10, /*cifar_stem=*/true));
  calibrate_batch_norms(*m, random_tensor({4, 16, 16, 3}, 5, DType::F32), 6);
  m->eval();
  m->to(kCuda);
  return m;
}

Tensor eager(nn::Module& m, const Tensor& x) {
  NoGradGuard no_grad;
  return m(x);
}

// The fused blocks (emn_tiny: ghost, coordinate attention, dilated
// aggregation), squeeze-and-excitation and hard-swish (mobilenet_v3_small),
// cuDNN convolutions and cuBLAS (resnet18): each new input, and a second
// shape, against the eager pass.
TEST(CudaGraph, ReplaysGiveTheEagerOutputOnEveryNewInput) {
  KESTREL_REQUIRE_CUDA();
  for (const char* name : {"emn_tiny", "mobilenet_v3_small", "resnet18"}) {
    nn::ModulePtr m = cuda_model(name);
    nn::GraphedForward graphed(*m, kCuda);
    for (uint64_t seed : {11, 12, 13}) {
      const Tensor x = random_tensor({2, 16, 16, 3}, seed, DType::F32).to(kCuda);
      expect_same_bits(graphed(x), eager(*m, x), std::string(name) + ", input " + std::to_string(seed));
    }
    EXPECT_EQ(graphed.captures(), 1) << name << ": one capture serves every input of one shape";
    const Tensor one = random_tensor({1, 16, 16, 3}, 14, DType::F32).to(kCuda);
    expect_same_bits(graphed(one), eager(*m, one), std::string(name) + ", batch 1");
    EXPECT_EQ(graphed.captures(), 2) << name;
  }
}

// Mixed precision: the autocast casts are captured with the pass.
TEST(CudaGraph, ReplaysUnderBf16AutocastGiveTheEagerOutput) {
  KESTREL_REQUIRE_CUDA();
  nn::ModulePtr m = cuda_model("emn_tiny");
  nn::GraphedForward graphed(*m, kCuda);
  AutocastGuard bf16(DType::BF16);
  for (uint64_t seed : {51, 52}) {
    const Tensor x = random_tensor({2, 16, 16, 3}, seed, DType::F32).to(kCuda);
    const Tensor y = graphed(x);
    EXPECT_EQ(y.dtype(), eager(*m, x).dtype());
    expect_same_bits(y.to(DType::F32), eager(*m, x).to(DType::F32), "bf16 input " + std::to_string(seed));
  }
}

// kestrel bench --cuda-graph times replays of the whole model.
TEST(CudaGraph, BenchTimesGraphReplays) {
  KESTREL_REQUIRE_CUDA();
  tools::BenchOptions o;
  o.model = "cifar10_200k";
  o.height = o.width = 16;
  o.batch = 2;
  o.warmup = 1;
  o.iters = 2;
  o.train = false;
  o.device = kCuda;
  o.cuda_graph = true;
  const tools::BenchResult r = tools::bench_model(o);
  EXPECT_GT(r.infer_ms, 0.0);
  o.profile = true;
  EXPECT_THROW(tools::bench_model(o), ValueError) << "a replay has no ops to profile";
}

// kestrel eval --cuda-graph: latency and throughput from replays, the same
// scores (the accuracy pass runs as without), and the report says so.
TEST(CudaGraph, EvalTimesGraphReplaysAndScoresAsWithout) {
  KESTREL_REQUIRE_CUDA();
  const std::string data = write_pattern_folder_dataset("cuda_graph_eval_data");
  tools::TrainConfig c = pattern_folder_config(data, "cuda_graph_eval_run", "cpu");
  c.epochs = 1;
  ASSERT_TRUE(tools::train(c).completed);
  tools::EvalOptions o;
  o.checkpoint = c.out + "/best.safetensors";
  o.device = "cuda";
  o.latency_iters = 3;
  o.batch_size = 16;
  o.progress = false;
  o.cuda_graph = true;
  const tools::EvalReport graphed = tools::run_eval(o);
  EXPECT_TRUE(graphed.cuda_graph);
  EXPECT_GT(graphed.latency_median_ms, 0.0);
  EXPECT_GT(graphed.throughput, 0.0);
  EXPECT_TRUE(tools::report_json(graphed)["cuda_graph"].get<bool>());
  EXPECT_NE(tools::report_markdown(graphed).find("timed as CUDA graph replays"), std::string::npos);
  o.cuda_graph = false;
  const tools::EvalReport eager_report = tools::run_eval(o);
  EXPECT_FALSE(eager_report.cuda_graph);
  EXPECT_EQ(graphed.top1, eager_report.top1);
  EXPECT_EQ(graphed.loss, eager_report.loss);
}

// Each call's output is the caller's own: the next replay does not change it.
TEST(CudaGraph, OutputsSurviveLaterReplays) {
  KESTREL_REQUIRE_CUDA();
  nn::ModulePtr m = cuda_model("mobilenet_v3_small");
  nn::GraphedForward graphed(*m, kCuda);
  const Tensor a = random_tensor({2, 16, 16, 3}, 21, DType::F32).to(kCuda);
  const Tensor b = random_tensor({2, 16, 16, 3}, 22, DType::F32).to(kCuda);
  const Tensor out_a = graphed(a);
  const Tensor out_b = graphed(b);
  expect_same_bits(out_a, eager(*m, a), "first output after a second replay");
  expect_same_bits(out_b, eager(*m, b), "second output");
}

#if defined(KESTREL_HAVE_CUDA)

// The allocator keeps the graph's blocks while it lives, even through
// empty_cache(), which gives every other free block back to the driver: eager
// work in between then gets other memory, and neither overwrites the other.
TEST(CudaGraph, TheGraphsMemoryIsNotHandedToOtherWork) {
  KESTREL_REQUIRE_CUDA();
  nn::ModulePtr m = cuda_model("emn_tiny");
  const Tensor x = random_tensor({2, 16, 16, 3}, 31, DType::F32).to(kCuda);
  const Tensor expected = eager(*m, x);
  {
    nn::GraphedForward graphed(*m, kCuda);
    expect_same_bits(graphed(x), expected, "first replay");
    cuda::empty_cache();
    const Tensor y = random_tensor({2, 16, 16, 3}, 32, DType::F32).to(kCuda);
    const Tensor held = eager(*m, y);
    const Tensor held_copy = held.clone();
    expect_same_bits(graphed(x), expected, "replay after empty_cache and eager work");
    expect_same_bits(held, held_copy, "eager output after a replay");
  }
  // The graph gone, its pool is released and eager work goes on.
  cuda::empty_cache();
  expect_same_bits(eager(*m, x), expected, "eager pass after the graph was destroyed");
}

// A capture that reads a value back to the host waits for the capturing
// stream: refused, with the call named; the device is usable afterwards.
TEST(CudaGraph, ACaptureThatWaitsForTheDeviceFailsNamingTheCall) {
  KESTREL_REQUIRE_CUDA();
  const Tensor x = Tensor::ones({8}, DType::F32, kCuda);
  cuda::Graph graph(0);
  double read = 0.0;
  const std::string message =
      expect_message_of<DeviceError>([&] { graph.capture([&] { read = sum(add_scalar(x, 1.0)).item(); }); });
  // The copy to the host (the emulator refuses it) or the wait for it (a GPU refuses that).
  EXPECT_NE(message.find("capturing"), std::string::npos) << message;
  EXPECT_FALSE(graph.captured());
  EXPECT_EQ(sum(add_scalar(x, 1.0)).item(), 16.0) << "eager work after the failed capture";
}

#if defined(KESTREL_CUDA_EMULATOR)
// Work queued on the legacy stream while a stream captures is not part of
// the graph: on a GPU it runs once, uncaptured, beside a non-blocking
// capturing stream, and replays go without it. The emulator fails the capture.
TEST(CudaGraph, WorkOnTheLegacyStreamDuringACaptureFailsIt) {
  KESTREL_REQUIRE_CUDA();
  const Tensor x = Tensor::ones({8}, DType::F32, kCuda);
  cuda::Graph graph(0);
  Tensor y;
  const std::string message = expect_message_of<DeviceError>([&] {
    graph.capture([&] {
      cuda::StreamScope legacy(nullptr, 0);
      y = add_scalar(x, 1.0);
    });
  });
  EXPECT_NE(message.find("capturing"), std::string::npos) << message;
  EXPECT_FALSE(graph.captured());
}
#endif  // KESTREL_CUDA_EMULATOR

#endif  // KESTREL_HAVE_CUDA

// On the CPU, GraphedForward is the plain forward pass.
TEST(GraphedForward, OnTheCpuIsThePlainForwardPass) {
  nn::ModulePtr m = models::build_model("emn_tiny", zoo_options(10, true));
  m->eval();
  nn::GraphedForward graphed(*m, Device::cpu());
  const Tensor x = random_tensor({2, 16, 16, 3}, 41, DType::F32);
  expect_same_bits(graphed(x), eager(*m, x), "CPU");
  EXPECT_EQ(graphed.captures(), 0);
}

}  // namespace
}  // namespace kestrel::testing
