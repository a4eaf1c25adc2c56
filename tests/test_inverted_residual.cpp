// inverted_residual_banded: an inverted-residual block's three convolutions
// in bands of rows give the chained conv2d_act results bit for bit, alone and
// inside fused MobileNets.
#include <gtest/gtest.h>

#include "engine/autograd.h"
#include "engine/cpu/conv_gemm.h"
#include "engine/ops/attention.h"
#include "engine/ops/conv.h"
#include "engine/trace.h"
#include "models/fuse.h"
#include "models/registry.h"
#include "test_util.h"

namespace kestrel {
namespace {

using testing::random_tensor;

// A stage with frozen f32 weights, as a model fused for inference holds them.
ConvStage frozen_stage(const Shape& weight_shape, Conv2dParams p, Activation act, uint64_t seed) {
  ConvStage s;
  s.weight = random_tensor(weight_shape, seed, DType::F32);
  s.bias = random_tensor({weight_shape[0]}, seed + 1, DType::F32);
  s.weight.storage()->freeze();
  s.bias.storage()->freeze();
  s.params = p;
  s.act = act;
  return s;
}

struct BlockCase {
  int64_t n, h, w, in, mid, out, kernel, stride;
  bool expand;
};

TEST(InvertedResidualBanded, EqualsTheChainedConvolutionsBitForBit) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  // Rows of 64 x 400 floats (100 KB): bands of one to a few rows, so bands,
  // the rows they share, strips and the padding at both ends are all crossed.
  const std::vector<BlockCase> cases = {
      {1, 20, 64, 16, 400, 16, 3, 1, true},   // residual
      {2, 19, 64, 16, 400, 24, 3, 2, true},   // odd height, stride 2
      {1, 17, 40, 24, 640, 24, 5, 1, true},   // 5x5: two rows of padding
      {1, 21, 64, 400, 400, 32, 3, 2, false}, // no expansion: the input's own rows
      {3, 5, 7, 8, 24, 8, 3, 1, true},        // one band per image
  };
  NoGradGuard no_grad;
  for (const BlockCase& c : cases) {
    const Tensor x = random_tensor({c.n, c.h, c.w, c.in}, 1, DType::F32);
    Conv2dParams dwp;
    dwp.stride_h = dwp.stride_w = c.stride;
    dwp.pad_h = dwp.pad_w = c.kernel / 2;
    dwp.groups = c.mid;
    const ConvStage e = frozen_stage({c.mid, 1, 1, c.in}, {}, Activation::ReLU6, 10);
    const ConvStage d = frozen_stage({c.mid, c.kernel, c.kernel, 1}, dwp, Activation::HardSwish, 20);
    const ConvStage p = frozen_stage({c.out, 1, 1, c.mid}, {}, Activation::None, 30);
    const ConvStage* ep = c.expand ? &e : nullptr;
    const bool residual = c.stride == 1 && c.in == c.out;
    // A squeeze-excite squeezing to a quarter, as EfficientNet's and MobileNetV3's.
    const int64_t squeeze = std::max<int64_t>(1, c.mid / 4);
    const SqueezeExciteStage se{frozen_stage({squeeze, 1, 1, c.mid}, {}, Activation::None, 40).weight,
                                frozen_stage({squeeze, 1, 1, c.mid}, {}, Activation::None, 40).bias,
                                frozen_stage({c.mid, 1, 1, squeeze}, {}, Activation::None, 50).weight,
                                frozen_stage({c.mid, 1, 1, squeeze}, {}, Activation::None, 50).bias,
                                Activation::SiLU, Activation::HardSigmoid};
    for (const SqueezeExciteStage* sp : {static_cast<const SqueezeExciteStage*>(nullptr), &se}) {
      const std::string what = "case " + shape_str({c.n, c.h, c.w, c.in, c.mid, c.out, c.kernel, c.stride}) +
                               (sp != nullptr ? " with squeeze-excite" : "");
      ASSERT_TRUE(inverted_residual_banded_applies(x, ep, d, sp, p, 0)) << what;

      Tensor chained = c.expand ? conv2d_act(x, e.weight, e.bias, e.params, e.act) : x;
      chained = conv2d_act(chained, d.weight, d.bias, d.params, d.act);
      if (sp != nullptr) chained = squeeze_excite(chained, se.w1, se.b1, se.w2, se.b2, se.act, se.gate);
      chained = conv2d_act(chained, p.weight, p.bias, p.params, p.act, residual ? x : Tensor());
      const Tensor banded = inverted_residual_banded(x, ep, d, sp, p, residual ? x : Tensor());
      ASSERT_EQ(banded.shape(), chained.shape()) << what;
      EXPECT_EQ(banded.to_vector(), chained.to_vector()) << what;
    }
  }
}

TEST(InvertedResidualBanded, AppliesOnlyWhereItIsExact) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  const Tensor x = random_tensor({1, 16, 16, 8}, 1, DType::F32);
  Conv2dParams dwp;
  dwp.pad_h = dwp.pad_w = 1;
  dwp.groups = 32;
  const ConvStage e = frozen_stage({32, 1, 1, 8}, {}, Activation::ReLU, 10);
  const ConvStage d = frozen_stage({32, 3, 3, 1}, dwp, Activation::ReLU, 20);
  const ConvStage p = frozen_stage({8, 1, 1, 32}, {}, Activation::None, 30);
  {
    NoGradGuard no_grad;
    EXPECT_TRUE(inverted_residual_banded_applies(x, &e, d, nullptr, p, 0));
    EXPECT_FALSE(inverted_residual_banded_applies(x, &e, d, nullptr, p)) << "32 KB expanded: fits in L2";
    TraceRecorder summary;  // a trace that names each layer sees them one by one
    EXPECT_FALSE(inverted_residual_banded_applies(x, &e, d, nullptr, p, 0));
  }
  {
    NoGradGuard no_grad;
    TraceRecorder profile(/*keep_tensors=*/false, /*timed=*/true);  // the profile sees the op
    EXPECT_TRUE(inverted_residual_banded_applies(x, &e, d, nullptr, p, 0));
  }
  NoGradGuard no_grad;
  ConvStage thawed = d;
  thawed.weight = d.weight.clone();  // weights that may change: no cached forms
  EXPECT_FALSE(inverted_residual_banded_applies(x, &e, thawed, nullptr, p, 0));
  EXPECT_FALSE(inverted_residual_banded_applies(x.to(DType::F64), &e, d, nullptr, p, 0));
  EXPECT_FALSE(inverted_residual_banded_applies(x, &p, d, nullptr, e, 0)) << "stages out of order";
  EXPECT_THROW(inverted_residual_banded(x, &p, d, nullptr, e), ValueError);

  const ConvStage reduce = frozen_stage({8, 1, 1, 32}, {}, Activation::None, 40);
  const ConvStage restore = frozen_stage({32, 1, 1, 8}, {}, Activation::None, 50);
  const SqueezeExciteStage se{reduce.weight, reduce.bias, restore.weight, restore.bias, Activation::ReLU,
                              Activation::Sigmoid};
  EXPECT_TRUE(inverted_residual_banded_applies(x, &e, d, &se, p, 0));
  const SqueezeExciteStage swapped{restore.weight, restore.bias, reduce.weight, reduce.bias, Activation::ReLU,
                                   Activation::Sigmoid};
  EXPECT_FALSE(inverted_residual_banded_applies(x, &e, d, &swapped, p, 0)) << "squeeze weights of other widths";
  SqueezeExciteStage thawed_se = se;
  thawed_se.w2 = se.w2.clone();
  EXPECT_FALSE(inverted_residual_banded_applies(x, &e, d, &thawed_se, p, 0)) << "squeeze weights that may change";
}

TEST(InvertedResidualBanded, FusedMobileNetsGiveTheSameLogitsWithBands) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  for (const char* name : {"mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"}) {
    nn::ModulePtr model = testing::fused_cifar_stem_model(name, 64);
    const Tensor x = random_tensor({4, 64, 64, 3}, 5, DType::F32);  // V3-Small's first block: 1 MiB expanded
    NoGradGuard no_grad;
    Tensor banded, layers;
    // Poolings: the head's, and one per squeeze-excite outside a banded block.
    int64_t banded_blocks = 0, banded_pools = 0, layer_pools = 0;
    {
      TraceRecorder profile(/*keep_tensors=*/false, /*timed=*/true);
      banded = (*model)(x);
      banded_blocks = testing::count_ops(profile, "inverted_residual");
      banded_pools = testing::count_ops(profile, "global_avg_pool");
    }
    {
      TraceRecorder plain;  // layer by layer
      layers = (*model)(x);
      layer_pools = testing::count_ops(plain, "global_avg_pool");
    }
    EXPECT_GT(banded_blocks, 0) << name << ": some 64-pixel blocks' expanded tensors pass 1 MiB";
    if (std::string(name) != "mobilenet_v2") {
      EXPECT_LT(banded_pools, layer_pools) << name << ": no squeeze-excite block banded";
    }
    EXPECT_EQ(banded.to_vector(), layers.to_vector()) << name;
  }
}

}  // namespace
}  // namespace kestrel
