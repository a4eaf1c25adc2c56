// The f32 implicit-GEMM convolution (engine/cpu/conv_gemm.h): against the f64
// im2col path (which test_conv checks against naive loops) at shapes that
// reach every tile height, panel width and reduction block, with poisoned
// outputs and guard words; independence from the thread count; and the packed
// weights that a frozen (fused) model keeps.
#include <omp.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "engine/cpu/conv.h"
#include "engine/cpu/conv_gemm.h"
#include "engine/ops/conv.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "models/fuse.h"
#include "models/registry.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_message_of;
using kestrel::testing::random_tensor;

namespace {

struct GemmCase {
  std::string name;
  cpu::ConvGeom g;
};

cpu::ConvGeom geom(int64_t n, int64_t h, int64_t w, int64_t c_in, int64_t c_out, int64_t k, int64_t stride,
                   int64_t pad, int64_t dilation = 1, int64_t groups = 1) {
  cpu::ConvGeom g;
  g.n = n, g.h = h, g.w = w, g.c_in = c_in, g.c_out = c_out;
  g.kh = g.kw = k;
  g.sh = g.sw = stride;
  g.ph = g.pw = pad;
  g.dh = g.dw = dilation;
  g.groups = groups;
  g.oh = (h + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
  g.ow = (w + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
  return g;
}

// Tiles are 12 output pixels by a 32-channel panel, of which the last may use
// 8, 16 or 24; the reduction goes in blocks of at most 128; tasks are 96
// pixels.
std::vector<GemmCase> cases() {
  return {
      {"pointwise_k300_cout33_m25", geom(1, 5, 5, 300, 33, 1, 1, 0)},  // 3 blocks, panels 32 + 1, tiles 12+12+1
      {"pointwise_cin1_cout64", geom(2, 3, 5, 1, 64, 1, 1, 0)},
      {"pointwise_cout16_m1", geom(1, 1, 1, 24, 16, 1, 1, 0)},
      {"pointwise_cout20_m784", geom(1, 28, 28, 20, 20, 1, 1, 0)},  // the CIFAR net's first stage, 9 tasks
      {"3x3_cin20_blocks_split_taps", geom(2, 9, 9, 20, 20, 3, 1, 1)},  // K 180: a block ends inside a tap
      {"3x3_stride2_dilation2_cout48", geom(1, 13, 11, 17, 48, 3, 2, 2, 2)},
      {"3x3_groups2_og17", geom(2, 7, 6, 40, 34, 3, 1, 1, 1, 2)},
      {"5x5_stem_cin1", geom(3, 12, 10, 1, 16, 5, 1, 2)},
      {"7x7_stride2_pad3_cin3", geom(1, 33, 33, 3, 24, 7, 2, 3)},
      // Wide enough that whole tiles sit inside the input: runs span window rows
      // (K 27; K 147 splits a block inside a row).
      {"3x3_stride2_stem_w40", geom(2, 30, 40, 3, 16, 3, 2, 1)},
      {"7x7_stride2_stem_w64", geom(1, 20, 64, 3, 32, 7, 2, 3)},
      {"3x3_dilation2_w60", geom(1, 6, 60, 8, 16, 3, 1, 2, 2)},       // dilated taps are not contiguous
      {"3x3_groups2_w40", geom(1, 4, 40, 16, 16, 3, 1, 1, 1, 2)},     // nor are one group's channels
      {"3x3_h1w1", geom(5, 1, 1, 7, 40, 3, 1, 1)},
      {"1x1_stride2", geom(2, 9, 9, 8, 12, 1, 2, 0)},
      {"3x3_nopad_k1152", geom(1, 6, 7, 128, 65, 3, 1, 0)},  // 9 blocks of 128, panels 32 + 32 + 1
  };
}

std::vector<float> random_floats(int64_t count, uint64_t seed) {
  const Tensor t = random_tensor({count}, seed, DType::F32);
  const float* p = t.data<float>();
  return std::vector<float>(p, p + count);
}

// y from the f64 path, activated, as floats.
std::vector<double> reference(const cpu::ConvGeom& g, const std::vector<float>& x, const std::vector<float>& w,
                              const std::vector<float>* bias, Activation act) {
  const std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end());
  std::vector<double> bd;
  if (bias != nullptr) bd.assign(bias->begin(), bias->end());
  std::vector<double> y(static_cast<size_t>(g.n * g.oh * g.ow * g.c_out));
  cpu::conv2d_forward<double>(g, xd.data(), wd.data(), bias != nullptr ? bd.data() : nullptr, y.data(), act);
  return y;
}

constexpr int64_t kGuard = 40;  // floats past the output that must stay untouched

}  // namespace

TEST(ConvGemm, EveryTileHeightPanelAndReductionBlockMatchesTheFloat64Path) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  uint64_t seed = 100;
  for (const GemmCase& c : cases())
    for (Activation act : {Activation::None, Activation::ReLU, Activation::ReLU6, Activation::HardSwish,
                           Activation::SiLU})
      for (bool with_bias : {true, false}) {
        const cpu::ConvGeom& g = c.g;
        const std::string what = c.name + " " + activation_name(act) + (with_bias ? " bias" : " no bias");
        std::vector<float> x = random_floats(g.n * g.h * g.w * g.c_in, ++seed);
        for (float& v : x) v *= 3.0f;  // reach ReLU6's cap
        const std::vector<float> w = random_floats(g.c_out * g.k(), ++seed);
        const std::vector<float> b = random_floats(g.c_out, ++seed);
        const int64_t count = g.n * g.oh * g.ow * g.c_out;
        std::vector<float> y(static_cast<size_t>(count + kGuard), std::numeric_limits<float>::quiet_NaN());
        for (int64_t i = count; i < count + kGuard; ++i) y[i] = 12345.0f;
        cpu::implicit_gemm_conv(g, x.data(), cpu::pack_conv_weights(g, w.data()), with_bias ? b.data() : nullptr,
                                y.data(), act);
        const std::vector<double> ref = reference(g, x, w, with_bias ? &b : nullptr, act);
        const double tol = 2e-6 * static_cast<double>(g.k());
        int64_t bad = 0;
        for (int64_t i = 0; i < count; ++i)
          if (!(std::fabs(y[i] - ref[i]) <= tol)) {
            if (++bad <= 3) ADD_FAILURE() << what << ": element " << i << " is " << y[i] << ", expected " << ref[i];
          }
        EXPECT_EQ(bad, 0) << what;
        for (int64_t i = count; i < count + kGuard; ++i) ASSERT_EQ(y[i], 12345.0f) << what << ": wrote past the end";
      }
}

TEST(ConvGemm, ResultsDoNotDependOnTheThreadCount) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  const int threads = omp_get_max_threads();
  for (const GemmCase& c : cases()) {
    const cpu::ConvGeom& g = c.g;
    const std::vector<float> x = random_floats(g.n * g.h * g.w * g.c_in, 1);
    const std::vector<float> w = random_floats(g.c_out * g.k(), 2), b = random_floats(g.c_out, 3);
    const cpu::PackedConvWeights packed = cpu::pack_conv_weights(g, w.data());
    std::vector<std::vector<float>> ys;
    for (int t : {1, 3}) {
      omp_set_num_threads(t);
      ys.emplace_back(static_cast<size_t>(g.n * g.oh * g.ow * g.c_out));
      cpu::implicit_gemm_conv(g, x.data(), packed, b.data(), ys.back().data(), Activation::SiLU);
    }
    omp_set_num_threads(threads);
    EXPECT_EQ(ys[0], ys[1]) << c.name;
  }
}

// The weight gradient's kernel: every tile height (12, 8, 4, 2, 1 in sums)
// and panel width, several reduction chunks, taps in the padding, strides
// and dilations, against f64 sums over naive loops; bit-identical at 1 and 3
// threads; NaN-poisoned outputs are all written.
TEST(ConvGemm, WeightGradientMatchesFloat64SumsAtAnyThreadCount) {
  if (!cpu::implicit_gemm_enabled()) GTEST_SKIP() << "this CPU has no AVX-512 (or KESTREL_NO_CONV_GEMM is set)";
  const int threads = omp_get_max_threads();
  const std::vector<GemmCase> cases = {
      {"1x1 M1", geom(1, 1, 1, 1, 1, 1, 1, 0)},
      {"1x1 5x23x9", geom(1, 1, 5, 9, 23, 1, 1, 0)},
      {"1x1 37x12x32", geom(1, 37, 1, 32, 12, 1, 1, 0)},
      {"1x1 chunks 47x40", geom(4, 20, 40, 40, 47, 1, 1, 0)},
      {"1x1 chunks 31x72", geom(5, 20, 50, 72, 31, 1, 1, 0)},
      {"1x1 160x17", geom(3, 25, 40, 17, 160, 1, 1, 0)},
      {"3x3 pad1 c16", geom(2, 9, 11, 16, 20, 3, 1, 1)},
      {"3x3 stride2 c40", geom(3, 33, 17, 40, 13, 3, 2, 1)},
      {"3x3 dilation2 c33", geom(1, 12, 10, 33, 25, 3, 1, 2, 2)},
      {"5x5 nopad c24", geom(2, 9, 8, 24, 7, 5, 1, 0)},
      {"1x1 stride2 c64", geom(2, 14, 14, 64, 36, 1, 2, 0)},
      {"7x7 stride2 pad3 c16", geom(1, 23, 21, 16, 12, 7, 2, 3)},
  };
  for (const GemmCase& c : cases) {
    const cpu::ConvGeom& g = c.g;
    ASSERT_TRUE(cpu::weight_gradient_gemm_applies(g)) << c.name;
    const int64_t M = g.n * g.oh * g.ow, K = g.k();
    const std::vector<float> x = random_floats(g.n * g.h * g.w * g.c_in, 4), gy = random_floats(M * g.c_out, 5);
    std::vector<std::vector<float>> gws;
    for (int t : {1, 3}) {
      omp_set_num_threads(t);
      gws.emplace_back(static_cast<size_t>(g.c_out * K), std::numeric_limits<float>::quiet_NaN());
      cpu::weight_gradient_gemm(g, x.data(), gy.data(), gws.back().data());
    }
    omp_set_num_threads(threads);
    EXPECT_EQ(gws[0], gws[1]) << c.name;
    std::vector<double> want(static_cast<size_t>(g.c_out * K), 0.0);
    for (int64_t m = 0; m < M; ++m) {
      const int64_t n = m / (g.oh * g.ow), oh = m / g.ow % g.oh, ow = m % g.ow;
      for (int64_t kh = 0; kh < g.kh; ++kh)
        for (int64_t kw = 0; kw < g.kw; ++kw) {
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
          if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
          for (int64_t o = 0; o < g.c_out; ++o)
            for (int64_t i = 0; i < g.c_in; ++i)
              want[o * K + (kh * g.kw + kw) * g.c_in + i] +=
                  double(gy[m * g.c_out + o]) * double(x[((n * g.h + ih) * g.w + iw) * g.c_in + i]);
        }
    }
    for (int64_t e = 0; e < g.c_out * K; ++e)
      ASSERT_NEAR(gws[0][e], want[e], 1e-5 * std::sqrt(double(M)) + 1e-6) << c.name << " element " << e;
  }
}

TEST(ConvGemm, PackedWeightsHoldEachPanelsChannelsWithZerosPastTheLast) {
  const cpu::ConvGeom g = geom(1, 4, 4, 6, 36, 3, 1, 1, 1, 2);  // og 18, K 27: panels of 18 and 14 zeros
  std::vector<float> w(static_cast<size_t>(g.c_out * g.k()));
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i + 1);
  const cpu::PackedConvWeights p = cpu::pack_conv_weights(g, w.data());
  ASSERT_EQ(p.groups, 2);
  ASSERT_EQ(p.k, 27);
  ASSERT_EQ(p.panels, 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p.data.get()) % 64, 0u);
  for (int64_t grp = 0; grp < 2; ++grp)
    for (int64_t k = 0; k < 27; ++k)
      for (int64_t j = 0; j < cpu::kConvPanel; ++j) {
        const float expect = j < 18 ? w[(grp * 18 + j) * 27 + k] : 0.0f;
        ASSERT_EQ(p.panel(grp, 0)[k * cpu::kConvPanel + j], expect) << grp << " " << k << " " << j;
      }
}

TEST(ConvGemm, AFrozenWeightKeepsItsKernelLayoutAndGivesTheSameResult) {
  // A dense convolution (packed panels) and a depthwise one (taps-major weights).
  for (int64_t groups : {1, 20}) {
    Conv2dParams params;
    params.pad_h = params.pad_w = 1;
    params.groups = groups;
    const int64_t c_out = groups == 1 ? 40 : 20;
    const Tensor x = random_tensor({2, 9, 9, 20}, 1, DType::F32);
    const Tensor w = random_tensor({c_out, 3, 3, 20 / groups}, 2, DType::F32);
    const Tensor b = random_tensor({c_out}, 3, DType::F32);
    NoGradGuard inference;
    const Tensor before = conv2d_act(x, w, b, params, Activation::HardSwish);
    w.storage()->freeze();
    const Tensor first = conv2d_act(x, w, b, params, Activation::HardSwish);
    const Tensor again = conv2d_act(x, w, b, params, Activation::HardSwish);
    EXPECT_EQ(w.storage()->derived_count(), cpu::implicit_gemm_enabled() || groups > 1 ? 1u : 0u);
    EXPECT_EQ(before.to_vector_f64(), first.to_vector_f64()) << "groups " << groups;
    EXPECT_EQ(first.to_vector_f64(), again.to_vector_f64()) << "groups " << groups;
  }
}

TEST(ConvGemm, AFrozenStorageBuildsEachDerivedFormOnceAndRefusesWrites) {
  const Tensor w = random_tensor({40, 3, 3, 20}, 2, DType::F32), b = random_tensor({40}, 3, DType::F32);
  w.storage()->freeze();
  int builds = 0;
  const auto make = [&] {
    ++builds;
    return std::shared_ptr<const void>(std::make_shared<int>(7));
  };
  const auto a = w.storage()->derived("probe", make), a2 = w.storage()->derived("probe", make);
  EXPECT_EQ(builds, 1);
  EXPECT_EQ(a.get(), a2.get());
  EXPECT_NE(expect_message_of([&] { Tensor(w).copy_(b.reshape({40, 1, 1, 1})); }).find("frozen"), std::string::npos);
  EXPECT_NE(expect_message_of([&] { b.storage()->derived("probe", make); }).find("not frozen"), std::string::npos);
}

TEST(ConvGemm, AFusedModelFreezesItsWeights) {
  models::ModelOptions o = kestrel::testing::zoo_options(10, true, 1);
  nn::ModulePtr model = models::build_model("cifar10_200k", o);
  models::fuse_for_inference(*model, {1, 28, 28, 1});
  for (const Tensor& p : model->parameters()) EXPECT_TRUE(p.storage()->frozen());
}
