// The fake-quantize ops of int8 training against direct arithmetic: rounding,
// clamping, the grids of activations and per-channel weights, and the
// straight-through gradient.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/ops/elementwise.h"
#include "engine/ops/quantize.h"
#include "test_util.h"

namespace kestrel {
namespace {

TEST(FakeQuantize, RoundsHalfToEvenOnTheGridAndClampsToIt) {
  // scale 0.5, zero point 3, grid [0, 10]: real values -1.5 .. 3.5 in steps of 0.5.
  const Tensor x = Tensor::from_vector({0.25f, 0.75f, -0.2f, 1.1f, -1.5f, -2.0f, 3.5f, 9.0f, 0.0f}, {9});
  const std::vector<float> y = fake_quantize(x, 0.5, 3, 0, 10).to_vector();
  // 0.25/0.5 = 0.5 rounds to 0 (even); 0.75/0.5 = 1.5 rounds to 2; -2 and 9 clamp.
  const std::vector<float> expected = {0.0f, 1.0f, 0.0f, 1.0f, -1.5f, -1.5f, 3.5f, 3.5f, 0.0f};
  for (size_t i = 0; i < y.size(); ++i) EXPECT_FLOAT_EQ(y[i], expected[i]) << "element " << i;
  EXPECT_THROW(fake_quantize(x, 0.0, 0, 0, 255), ValueError);
  EXPECT_THROW(fake_quantize(x, 0.1, 300, 0, 255), ValueError);
}

TEST(FakeQuantize, GradientPassesStraightThroughInsideTheGridOnly) {
  Tensor x = Tensor::from_vector({-3.0f, -1.4f, 0.3f, 3.4f, 3.8f}, {5});
  x.set_requires_grad(true);
  sum(mul_scalar(fake_quantize(x, 0.5, 3, 0, 10), 2.0)).backward();
  // Levels: -3 -> -3 (clamped), -1.4 -> 0.2, 0.3 -> 4, 3.4 -> 10 (7 - 0.2 rounds inside), 3.8 -> 10.6 (clamped).
  const std::vector<float> g = x.grad().to_vector();
  const std::vector<float> expected = {0.0f, 2.0f, 2.0f, 2.0f, 0.0f};
  for (size_t i = 0; i < g.size(); ++i) EXPECT_FLOAT_EQ(g[i], expected[i]) << "element " << i;
}

TEST(FakeQuantize, ActivationGridHoldsZeroExactlyAndSpansTheRange) {
  const QuantGrid g = activation_grid(-1.0f, 3.0f);
  EXPECT_FLOAT_EQ(g.scale, 4.0f / 255.0f);
  EXPECT_EQ(g.zero_point, 64);  // round(1 / (4/255)) = round(63.75)
  const QuantGrid relu = activation_grid(0.5f, 6.0f);  // widened down to 0
  EXPECT_EQ(relu.zero_point, 0);
  EXPECT_FLOAT_EQ(relu.scale, 6.0f / 255.0f);
  const QuantGrid zeros = activation_grid(0.0f, 0.0f);
  EXPECT_FLOAT_EQ(zeros.scale, 1.0f);
  EXPECT_THROW(activation_grid(1.0f, -1.0f), ValueError);
  const Tensor x = Tensor::from_vector({0.0f, -1.0f, 3.0f}, {3});
  const std::vector<float> y = fake_quantize(x, g.scale, g.zero_point, 0, 255).to_vector();
  EXPECT_EQ(y[0], 0.0f);  // zero (padding) is exact
  EXPECT_NEAR(y[1], -1.0f, g.scale / 2);
  EXPECT_NEAR(y[2], 3.0f, g.scale / 2);
}

TEST(FakeQuantize, WeightsUse127LevelsPerOutputChannel) {
  // Two output channels of very different size: each gets its own scale.
  Tensor w = testing::random_tensor({2, 3, 3, 4}, 5, DType::F32);
  w = mul(w, Tensor::from_vector({1.0f, 0.01f}, {2, 1, 1, 1}));
  w.set_requires_grad(true);
  const std::vector<float> scales = weight_scales(w).to_vector();
  const std::vector<float> values = w.to_vector();
  for (int c = 0; c < 2; ++c) {
    float absmax = 0;
    for (int i = 0; i < 36; ++i) absmax = std::max(absmax, std::fabs(values[c * 36 + i]));
    EXPECT_FLOAT_EQ(scales[c], absmax / 127.0f) << "channel " << c;
  }
  const Tensor q = fake_quantize_weight(w, weight_scales(w));
  const std::vector<float> qv = q.to_vector();
  for (int i = 0; i < 72; ++i) {
    const float s = scales[i / 36];
    const float level = qv[i] / s;
    EXPECT_NEAR(level, std::nearbyint(level), 1e-3) << "element " << i << " is off its channel's grid";
    EXPECT_LE(std::fabs(qv[i] - values[i]), s / 2 * 1.0001f) << "element " << i;
  }
  sum(q).backward();  // straight through: every weight is inside its grid
  testing::expect_close(w.grad(), Tensor::ones({2, 3, 3, 4}), 1e-5, 0, "weight gradient");
}

}  // namespace
}  // namespace kestrel
