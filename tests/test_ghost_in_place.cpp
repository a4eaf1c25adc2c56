// ghost_in_place: a fused ghost module's two convolutions written into one
// output (no concat) give conv2d_act's results bit for bit, alone and inside
// fused EfficientMicroNet and GhostNet.
#include <gtest/gtest.h>

#include "engine/autograd.h"
#include "engine/cpu/conv_gemm.h"
#include "engine/ops/conv.h"
#include "engine/ops/ghost.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"
#include "models/fuse.h"
#include "models/registry.h"
#include "test_util.h"

namespace kestrel {
namespace {

using testing::random_tensor;

Tensor frozen(const Shape& shape, uint64_t seed) {
  Tensor t = random_tensor(shape, seed, DType::F32);
  t.storage()->freeze();
  return t;
}

struct GhostCase {
  int64_t n, h, w, in, primary, cheap, kernel;
  Activation act;
};

TEST(GhostInPlace, EqualsTheConvolutionsAndConcatBitForBit) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  // The depthwise kernel's paths: sliding rows (3x3, 5x5), the per-pixel loop
  // (7x7), thin layers (under 8 channels), edges; and a hard-swish applied
  // after the GEMM's tiles rather than in registers.
  const std::vector<GhostCase> cases = {
      {2, 9, 11, 16, 24, 24, 3, Activation::HardSwish},
      {1, 32, 32, 24, 48, 48, 3, Activation::ReLU},
      {3, 5, 7, 8, 6, 6, 5, Activation::None},
      {1, 7, 7, 40, 36, 20, 3, Activation::ReLU6},
      {1, 14, 14, 16, 20, 20, 7, Activation::HardSwish},
      {1, 1, 1, 5, 3, 2, 3, Activation::ReLU},
  };
  NoGradGuard no_grad;
  for (const GhostCase& c : cases) {
    const Tensor x = random_tensor({c.n, c.h, c.w, c.in}, 1, DType::F32);
    const Tensor wp = frozen({c.primary, 1, 1, c.in}, 10), bp = frozen({c.primary}, 11);
    const Tensor wc = frozen({c.cheap, c.kernel, c.kernel, 1}, 20), bc = frozen({c.cheap}, 21);
    ASSERT_TRUE(ghost_in_place_applies(x, wp, bp, wc, bc));
    const Tensor y = ghost_in_place(x, wp, bp, wc, bc, c.act);
    Conv2dParams dw;
    dw.pad_h = dw.pad_w = c.kernel / 2;
    dw.groups = c.cheap;
    const Tensor p = conv2d_act(x, wp, bp, {}, c.act);
    const Tensor q = conv2d_act(p.narrow(3, 0, c.cheap).contiguous(), wc, bc, dw, c.act);
    const Tensor expected = concat({p, q}, 3);
    ASSERT_EQ(y.shape(), expected.shape());
    EXPECT_EQ(y.to_vector(), expected.to_vector())
        << c.n << "x" << c.h << "x" << c.w << "x" << c.in << " -> " << c.primary << " + " << c.cheap << ", "
        << c.kernel << "x" << c.kernel << " " << activation_name(c.act);
    EXPECT_EQ(ghost_module(x, wp, bp, wc, bc, c.act).to_vector(), expected.to_vector()) << "through the op";
  }
}

TEST(GhostInPlace, AppliesOnlyWhereItIsExact) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  const Tensor x = random_tensor({1, 6, 6, 8}, 1, DType::F32);
  const Tensor wp = frozen({12, 1, 1, 8}, 10), bp = frozen({12}, 11);
  const Tensor wc = frozen({12, 3, 3, 1}, 20), bc = frozen({12}, 21);
  {
    NoGradGuard no_grad;
    EXPECT_TRUE(ghost_in_place_applies(x, wp, bp, wc, bc));
    EXPECT_TRUE(ghost_in_place_applies(x, wp, Tensor(), wc, Tensor())) << "no biases";
    EXPECT_FALSE(ghost_in_place_applies(x, wp, bp, wc.clone(), bc)) << "weights that may change";
    EXPECT_FALSE(ghost_in_place_applies(x.to(DType::F64), wp, bp, wc, bc));
    EXPECT_FALSE(ghost_in_place_applies(x, wp, bp, frozen({13, 3, 3, 1}, 30), frozen({13}, 31)))
        << "more cheap channels than primary ones";
    EXPECT_FALSE(ghost_in_place_applies(x, wp, bp, frozen({12, 2, 2, 1}, 30), bc)) << "an even kernel";
    EXPECT_FALSE(ghost_in_place_applies(x, wp, bp, frozen({1, 3, 3, 1}, 30), frozen({1}, 31))) << "one channel";
    EXPECT_THROW(ghost_in_place(x, wp, bp, wc.clone(), bc, Activation::ReLU), ValueError);
    {
      TraceRecorder summary;  // a trace that names each layer sees them one by one
      EXPECT_FALSE(ghost_in_place_applies(x, wp, bp, wc, bc));
      ghost_module(x, wp, bp, wc, bc, Activation::ReLU);
      EXPECT_EQ(testing::count_ops(summary, "ghost_module"), 0);
      EXPECT_EQ(testing::count_ops(summary, "concat"), 1);
    }
    TraceRecorder profile(/*keep_tensors=*/false, /*timed=*/true);  // the profile sees the op
    ghost_module(x, wp, bp, wc, bc, Activation::ReLU);
    EXPECT_EQ(testing::count_ops(profile, "ghost_module"), 1);
  }
  Tensor trainable = random_tensor({1, 6, 6, 8}, 2, DType::F32);
  trainable.set_requires_grad(true);
  EXPECT_FALSE(ghost_in_place_applies(trainable, wp, bp, wc, bc)) << "a gradient to record";
}

// Fused for inference, EMN's ghost modules (ratio 2, 3x3 cheap convs) and
// GhostNet's run in place; the logits equal the layer-by-layer ones.
TEST(GhostInPlace, FusedGhostModelsGiveTheSameLogits) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  for (const char* name : {"emn_tiny", "ghostnet_100"}) {
    nn::ModulePtr model = testing::fused_cifar_stem_model(name, 32);
    const Tensor x = random_tensor({2, 32, 32, 3}, 5, DType::F32);
    NoGradGuard no_grad;
    Tensor in_place, layers;
    int64_t ghosts = 0, concats = 0;
    {
      TraceRecorder profile(/*keep_tensors=*/false, /*timed=*/true);
      in_place = (*model)(x);
      ghosts = testing::count_ops(profile, "ghost_module");
    }
    {
      TraceRecorder plain;  // layer by layer
      layers = (*model)(x);
      concats = testing::count_ops(plain, "concat");
    }
    EXPECT_GT(ghosts, 0) << name;
    EXPECT_GE(concats, ghosts) << name;
    EXPECT_EQ(in_place.to_vector(), layers.to_vector()) << name;
  }
}

}  // namespace
}  // namespace kestrel
