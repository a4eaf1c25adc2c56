// Dropout and drop_path (stochastic depth): statistics of the mask, determinism
// under a seed, eval-mode identity, and gradients through the same mask.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/ops/dropout.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

TEST(Dropout, ZeroFractionIsAboutPAndKeptValuesAreScaledByOneOverKeep) {
  for (double p : {0.1, 0.5, 0.8}) {
    Generator g(1);
    Tensor x = Tensor::full({200, 500}, 2.0);
    const std::vector<float> y = dropout(x, p, true, g).to_vector();
    int64_t zeros = 0;
    for (float v : y) {
      if (v == 0.0f)
        ++zeros;
      else
        EXPECT_FLOAT_EQ(v, static_cast<float>(2.0 / (1.0 - p)));
    }
    const double frac = static_cast<double>(zeros) / y.size();
    // 100000 draws: the standard error of the fraction is below 0.0016.
    EXPECT_NEAR(frac, p, 0.01) << "p = " << p;
  }
}

TEST(Dropout, PreservesTheMeanInExpectation) {
  Generator g(2);
  Tensor x = add_scalar(random_tensor({100000}, 3, DType::F32), 1.0);  // mean about 1
  const Tensor y = dropout(x, 0.3, true, g);
  const double before = mean(x).item(), after = mean(y).item();
  EXPECT_NEAR(after, before, 0.02) << "mean before " << before << ", after " << after;
  // And not by leaving x alone: about 30% of it is zeroed.
  const std::vector<float> kept = y.to_vector();
  const auto zeros = std::count(kept.begin(), kept.end(), 0.0f);
  EXPECT_NEAR(static_cast<double>(zeros) / kept.size(), 0.3, 0.01);
}

TEST(Dropout, SameSeedGivesTheSameMaskAndAnotherSeedDoesNot) {
  Tensor x = Tensor::ones({64, 33});
  Generator a(7), b(7), c(8);
  const std::vector<float> ya = dropout(x, 0.5, true, a).to_vector();
  EXPECT_EQ(ya, dropout(x, 0.5, true, b).to_vector());
  EXPECT_NE(ya, dropout(x, 0.5, true, c).to_vector());
  // The generator advances: the next draw from the same generator differs.
  EXPECT_NE(ya, dropout(x, 0.5, true, a).to_vector());
}

TEST(Dropout, IsTheIdentityInEvalModeAndAtPZero) {
  Generator g(3);
  const uint64_t offset = g.offset();
  Tensor x = random_tensor({4, 5}, 4, DType::F32);
  EXPECT_EQ(dropout(x, 0.5, false, g).to_vector(), x.to_vector());
  EXPECT_EQ(dropout(x, 0.0, true, g).to_vector(), x.to_vector());
  EXPECT_EQ(drop_path(x, 0.5, false, g).to_vector(), x.to_vector());
  EXPECT_EQ(g.offset(), offset) << "eval-mode dropout must not consume random numbers";
}

TEST(Dropout, ProbabilityOneDropsEverythingAndBadProbabilitiesAreRejected) {
  Generator g(4);
  Tensor x = random_tensor({3, 4}, 5, DType::F32);
  for (float v : dropout(x, 1.0, true, g).to_vector()) EXPECT_EQ(v, 0.0f);
  EXPECT_THROW(dropout(x, -0.1, true, g), ValueError);
  EXPECT_THROW(dropout(x, 1.5, true, g), ValueError);
  EXPECT_THROW(drop_path(x, 2.0, true, g), ValueError);
}

TEST(Dropout, BackwardPassesGradientThroughTheSameMask) {
  Tensor x = random_tensor({5, 6}, 6).set_requires_grad();
  // A fresh generator with one seed per call: every evaluation sees the same mask.
  expect_gradcheck(
      [](const std::vector<Tensor>& v) {
        Generator g(11);
        return dropout(v[0], 0.4, true, g);
      },
      {x});
  Generator g(12);
  x.zero_grad();
  Tensor y = dropout(x, 0.4, true, g);
  sum(y).backward();
  const std::vector<double> yv = y.to_vector_f64(), gv = x.grad().to_vector_f64(), xv = x.to_vector_f64();
  for (size_t i = 0; i < yv.size(); ++i) {
    if (yv[i] == 0.0)
      EXPECT_EQ(gv[i], 0.0) << "dropped element " << i << " got a gradient";
    else
      EXPECT_NEAR(gv[i], 1.0 / 0.6, 1e-12);
  }
}

TEST(DropPath, DropsWholeSamplesAndScalesKeptOnesLikeTimm) {
  Generator g(5);
  const int64_t n = 400;
  Tensor x = add_scalar(random_tensor({n, 3, 3, 4}, 8, DType::F64), 2.0);  // no zeros in x
  const double p = 0.25;
  Tensor y = drop_path(x, p, true, g);
  const std::vector<double> xv = x.to_vector_f64(), yv = y.to_vector_f64();
  const int64_t per = 3 * 3 * 4;
  int64_t dropped = 0;
  for (int64_t s = 0; s < n; ++s) {
    const bool first_zero = yv[s * per] == 0.0;
    dropped += first_zero;
    for (int64_t i = 0; i < per; ++i) {
      const double expected = first_zero ? 0.0 : xv[s * per + i] / (1.0 - p);
      ASSERT_NEAR(yv[s * per + i], expected, 1e-12) << "sample " << s << " element " << i;
    }
  }
  EXPECT_NEAR(static_cast<double>(dropped) / n, p, 0.07);
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, n);
}

TEST(DropPath, BackwardMatchesFiniteDifferencesWithAFixedSeed) {
  Tensor x = random_tensor({6, 2, 2, 3}, 9).set_requires_grad();
  expect_gradcheck(
      [](const std::vector<Tensor>& v) {
        Generator g(13);
        return drop_path(v[0], 0.5, true, g);
      },
      {x});
}
