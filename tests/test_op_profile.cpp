// The op profile: a timed trace times forward ops and autograd nodes, and
// summarize_profile adds them up by kind and by layer.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "engine/autograd.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/loss.h"
#include "engine/trace.h"
#include "models/registry.h"
#include "test_util.h"
#include "tools/lib/op_profile.h"

namespace kestrel {
namespace {

const tools::ProfileRow* find_row(const std::vector<tools::ProfileRow>& rows, const std::string& name) {
  for (const tools::ProfileRow& r : rows)
    if (r.name == name) return &r;
  return nullptr;
}

TEST(OpProfile, ConvolutionKindsNameWindowDepthwiseGroupsStrideAndDilation) {
  TraceEvent e;
  e.op = "conv2d";
  e.input_shapes = {{2, 8, 8, 32}};
  e.attrs = {{"kernel", "3x3"}, {"stride", "2x2"}, {"dilation", "1x1"}, {"groups", "32"}};
  EXPECT_EQ(tools::op_kind(e), "conv2d 3x3 dw s2");
  e.attrs["groups"] = "4";
  e.attrs["stride"] = "1x1";
  e.attrs["dilation"] = "2x2";
  EXPECT_EQ(tools::op_kind(e), "conv2d 3x3 g4 d2");
  e.attrs["groups"] = "1";
  e.attrs["stride"] = "2x1";
  e.attrs["dilation"] = "1x1";
  EXPECT_EQ(tools::op_kind(e), "conv2d 3x3 s2x1");
  e.op = "add";
  e.attrs.clear();
  EXPECT_EQ(tools::op_kind(e), "add");
}

TEST(OpProfile, AnOpIsTimedFromThePreviousEventUnlessTheClockRestarts) {
  const Tensor a = Tensor::ones({4});
  TraceRecorder trace(/*keep_tensors=*/false, /*timed=*/true);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  add(a, a);  // untraced work before it counts as its own
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  trace.restart_clock(Device::cpu());
  add(a, a);
  ASSERT_EQ(trace.events().size(), 2u);
  EXPECT_GE(trace.events()[0].seconds, 0.2);
  EXPECT_LT(trace.events()[1].seconds, 0.1);
  trace_region("optimizer step", Device::cpu());
  ASSERT_EQ(trace.events().size(), 3u);
  EXPECT_EQ(trace.events()[2].op, "optimizer step");
}

TEST(OpProfile, ATrainingStepIsSplitIntoForwardOpsAndBackwardNodesByKindAndLayer) {
  models::ModelOptions mo;
  mo.num_classes = 10;
  mo.cifar_stem = true;
  manual_seed(0);
  nn::ModulePtr model = models::build_model("cifar10_200k", mo);
  model->train();
  Generator gen(3);
  const Tensor images = Tensor::randn({2, 16, 16, 3}, gen);
  const Tensor labels = Tensor::from_vector_i64({1, 7}, {2});

  // What one forward runs, from an untimed trace.
  int64_t depthwise_convs = 0, macs = 0, forward_ops = 0;
  {
    TraceRecorder plain;
    cross_entropy((*model)(images), labels);
    forward_ops = static_cast<int64_t>(plain.events().size());
    for (const TraceEvent& e : plain.events()) {
      depthwise_convs += tools::op_kind(e) == "conv2d 3x3 dw" ? 1 : 0;
      macs += e.macs;
    }
  }
  ASSERT_GT(depthwise_convs, 0);

  const int64_t passes = 2;
  TraceRecorder trace(/*keep_tensors=*/false, /*timed=*/true);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < passes; ++i) {
    trace.restart_clock(Device::cpu());
    cross_entropy((*model)(images), labels).backward();
  }
  const double wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const tools::OpProfile p = tools::summarize_profile(trace.events(), passes);
  int64_t timed_forward_ops = 0;
  for (const TraceEvent& e : trace.events()) timed_forward_ops += e.backward ? 0 : 1;
  EXPECT_EQ(timed_forward_ops, passes * forward_ops) << "the ops a backward runs are inside its node's time";

  const tools::ProfileRow* dw = find_row(p.kinds, "conv2d 3x3 dw");
  const tools::ProfileRow* dw_back = find_row(p.kinds, "conv2d 3x3 dw backward");
  ASSERT_NE(dw, nullptr);
  ASSERT_NE(dw_back, nullptr) << "a backward node takes its forward op's kind";
  EXPECT_EQ(dw->calls, static_cast<double>(depthwise_convs));
  EXPECT_EQ(dw_back->calls, static_cast<double>(depthwise_convs));
  EXPECT_EQ(dw_back->macs, 0.0);

  double kinds_ms = 0, layers_ms = 0, fwd_macs = 0;
  for (const tools::ProfileRow& r : p.kinds) {
    kinds_ms += r.ms;
    fwd_macs += r.macs;
  }
  for (const tools::ProfileRow& r : p.layers) layers_ms += r.ms;
  EXPECT_NEAR(kinds_ms, p.total_ms, 1e-9 * p.total_ms);
  EXPECT_NEAR(layers_ms, p.total_ms, 1e-9 * p.total_ms);
  EXPECT_EQ(fwd_macs, static_cast<double>(macs)) << "per pass, as one forward";
  EXPECT_GT(p.total_ms, 0.0);
  EXPECT_LE(p.total_ms * passes, wall_ms);
  for (size_t i = 1; i < p.kinds.size(); ++i) EXPECT_GE(p.kinds[i - 1].ms, p.kinds[i].ms) << "slowest first";

  // Layers are named by module path, op and output shape.
  bool named = false;
  for (const tools::ProfileRow& r : p.layers) named = named || r.name.find(" conv2d backward [2,") != std::string::npos;
  EXPECT_TRUE(named);
  const std::string md = tools::profile_markdown(p, 3);
  EXPECT_NE(md.find("| conv2d 3x3 dw backward |"), std::string::npos) << md;
  EXPECT_NE(md.find("| layer | calls | ms | share | GMAC/s |"), std::string::npos) << md;
}

}  // namespace
}  // namespace kestrel
