// Inference fusion (models/fuse.h): batch norms folded into convolutions and
// their activations moved into the convolutions' epilogues, for every zoo
// model, against the unfused eval-mode model.
#include <gtest/gtest.h>

#include <map>

#include "engine/autograd.h"
#include "engine/nn/layers.h"
#include "engine/trace.h"
#include "models/fuse.h"
#include "models/quantize.h"
#include "models/registry.h"
#include "test_util.h"

namespace kestrel {
namespace {

using testing::eval_logits;
using testing::zoo_options;

// with_residual: count only ops given a residual (conv2d_act's fourth input).
int count_ops(nn::Module& m, const Tensor& x, const std::string& op, bool with_residual = false) {
  TraceRecorder rec;
  NoGradGuard g;
  m(x);
  int n = 0;
  for (const TraceEvent& e : rec.events())
    n += e.op == op && (!with_residual || (e.input_shapes.size() > 3 && !e.input_shapes[3].empty())) ? 1 : 0;
  return n;
}

double max_abs_diff(const Tensor& a, const Tensor& b) { return max(abs(sub(a, b)).reshape({-1}), 0).item(); }

TEST(InferenceFusion, FoldsEveryNormOfTheCifarNetAndKeepsItsLogits) {
  auto m = models::build_model("cifar10_200k", zoo_options(10, true, 1));
  const Shape input{4, 28, 28, 1};
  const Tensor x = testing::random_tensor(input, 1, DType::F32);
  testing::calibrate_batch_norms(*m, x, 2);  // running statistics far from 0 and 1
  const Tensor before = eval_logits(*m, x);
  EXPECT_EQ(count_ops(*m, x, "batch_norm_act") + count_ops(*m, x, "batch_norm"), 20);

  const models::InferenceFusion r = models::fuse_for_inference(*m, input);
  // A BN after the stem, every pointwise conv and every shortcut conv: 20.
  // The 8 that end a block add its residual before their ReLU: that add moves
  // into the conv's epilogue too (models::conv_bn_forward).
  EXPECT_EQ(r.folded_norms, 20);
  EXPECT_EQ(r.fused_activations, 17);  // all but the shortcuts', which have none
  EXPECT_TRUE(models::is_fused_for_inference(*m));
  EXPECT_FALSE(m->is_training());
  EXPECT_EQ(count_ops(*m, x, "batch_norm_act") + count_ops(*m, x, "batch_norm"), 0);
  EXPECT_EQ(count_ops(*m, x, "conv2d_act"), 17);
  EXPECT_EQ(count_ops(*m, x, "conv2d_act", /*with_residual=*/true), 8);

  const Tensor after = eval_logits(*m, x);
  EXPECT_LT(max_abs_diff(after, before), 1e-4 * (1.0 + max(abs(before).reshape({-1}), 0).item()));
  EXPECT_GT(max_abs_diff(after, before), 0.0) << "bit-identical: were the norms really folded?";
}

TEST(InferenceFusion, EveryZooModelKeepsItsEvalLogits) {
  for (const models::ModelEntry& entry : models::model_registry()) {
    SCOPED_TRACE(entry.name);
    if (entry.name.rfind("efficientnet_b", 0) == 0 && entry.name != "efficientnet_b0") continue;  // same blocks
    if (entry.name == "resnet152" || entry.name == "densenet201") continue;  // deeper copies of 50 and 121
    auto m = models::build_model(entry.name, zoo_options(10, true));
    const Shape input{2, 32, 32, 3};
    const Tensor x = testing::random_tensor(input, 3, DType::F32);
    testing::calibrate_batch_norms(*m, x, 4);
    const Tensor before = eval_logits(*m, x);
    const models::InferenceFusion r = models::fuse_for_inference(*m, input);
    EXPECT_GT(r.folded_norms, 0);
    const Tensor after = eval_logits(*m, x);
    const double scale = 1.0 + max(abs(before).reshape({-1}), 0).item();
    EXPECT_LT(max_abs_diff(after, before), 1e-4 * scale) << r.folded_norms << " norms folded";
    // Residual adds in a conv's epilogue: where a norm adds the block's
    // residual (ResNets, the CIFAR net). Inverted-residual blocks add theirs
    // after the norm, as a separate add: moving it measured no faster.
    const std::map<std::string, int> residual_blocks = {{"resnet18", 8}, {"resnet50", 16}, {"cifar10_200k", 8}};
    const auto expected = residual_blocks.find(entry.name);
    EXPECT_EQ(count_ops(*m, x, "conv2d_act", /*with_residual=*/true),
              expected == residual_blocks.end() ? 0 : expected->second);
    if (entry.name.rfind("resnet", 0) == 0) {  // and its last norm with them
      EXPECT_EQ(count_ops(*m, x, "batch_norm_act") + count_ops(*m, x, "batch_norm"), 0);
    }
  }
}

TEST(InferenceFusion, AFusedModelRefusesToTrainOrBeQuantizedOrFusedAgain) {
  auto m = models::build_model("cifar10_200k", zoo_options(10, true, 1));
  const Shape input{2, 28, 28, 1};
  models::fuse_for_inference(*m, input);
  EXPECT_THROW(models::fuse_for_inference(*m, input), ValueError);
  EXPECT_THROW(models::prepare_quantization(*m, input), ValueError);
  m->train();
  const std::string msg =
      testing::expect_message_of([&] { (*m)(testing::random_tensor(input, 5, DType::F32)); });
  EXPECT_NE(msg.find("folded into its convolution for inference"), std::string::npos) << msg;
}

TEST(InferenceFusion, AQuantizedModelIsNotFused) {
  auto m = models::build_model("cifar10_200k", zoo_options(10, true, 1));
  const Shape input{2, 28, 28, 1};
  models::prepare_quantization(*m, input);
  EXPECT_THROW(models::fuse_for_inference(*m, input), ValueError);
}

// A norm that reads a conv's output which something else reads too (here the
// conv's output is also returned) must not fold: the other reader needs the
// unnormalized values.
class SharedConvOutput : public nn::Module {
 public:
  SharedConvOutput() {
    conv = register_module("conv", std::make_shared<nn::Conv2d>(3, 4, 3, nn::Conv2dOptions{1, 1, 1, 1, false}));
    bn = register_module("bn", std::make_shared<nn::BatchNorm2d>(4));
  }
  Tensor forward(const Tensor& x) override {
    const Tensor y = (*conv)(x);
    return add(bn->forward_fused(y, Activation::ReLU), y);
  }
  std::shared_ptr<nn::Conv2d> conv;
  std::shared_ptr<nn::BatchNorm2d> bn;
};

TEST(InferenceFusion, LeavesANormWhoseInputHasAnotherReader) {
  SharedConvOutput m;
  const Shape input{2, 5, 5, 3};
  const Tensor x = testing::random_tensor(input, 7, DType::F32);
  testing::calibrate_batch_norms(m, x, 8);
  const Tensor before = eval_logits(m, x);
  EXPECT_EQ(models::fuse_for_inference(m, input).folded_norms, 0);
  EXPECT_EQ(max_abs_diff(eval_logits(m, x), before), 0.0);
}

}  // namespace
}  // namespace kestrel
