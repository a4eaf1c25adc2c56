// Pooling and bilinear resize on NHWC: naive loops, finite differences, PyTorch.
#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <omp.h>

#include "engine/cpu/pool.h"
#include "engine/autograd.h"
#include "engine/ops/pool.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

namespace {

// y[n, oh, ow, c] = reduce over the input window [h0,h1) x [w0,w1), for arbitrary windows.
using WindowFn = std::function<void(int64_t o, int64_t in, int64_t& a, int64_t& b)>;

Tensor naive_window_reduce(const Tensor& x, int64_t OH, int64_t OW, const WindowFn& wh, const WindowFn& ww,
                           const std::function<double(const std::vector<double>&, int64_t, int64_t)>& reduce) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const std::vector<double> xv = x.to_vector_f64();
  std::vector<double> y(N * OH * OW * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t c = 0; c < C; ++c) {
          int64_t h0, h1, w0, w1;
          wh(oh, H, h0, h1);
          ww(ow, W, w0, w1);
          std::vector<double> vals;
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw)
              if (ih >= 0 && ih < H && iw >= 0 && iw < W) vals.push_back(xv[((n * H + ih) * W + iw) * C + c]);
          y[((n * OH + oh) * OW + ow) * C + c] = reduce(vals, h1 - h0, w1 - w0);
        }
  return Tensor::from_vector_f64(y, {N, OH, OW, C});
}

WindowFn strided(int64_t k, int64_t s, int64_t p) {
  return [k, s, p](int64_t o, int64_t in, int64_t& a, int64_t& b) {
    a = o * s - p;
    b = std::min(a + k, in + p);
  };
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p) { return in + 2 * p < k ? 0 : (in + 2 * p - k) / s + 1; }

Tensor naive_max_pool(const Tensor& x, int64_t k, int64_t s, int64_t p) {
  return naive_window_reduce(x, out_size(x.size(1), k, s, p), out_size(x.size(2), k, s, p), strided(k, s, p),
                             strided(k, s, p), [](const std::vector<double>& v, int64_t, int64_t) {
                               return *std::max_element(v.begin(), v.end());
                             });
}

Tensor naive_avg_pool(const Tensor& x, int64_t k, int64_t s, int64_t p, bool include_pad) {
  return naive_window_reduce(x, out_size(x.size(1), k, s, p), out_size(x.size(2), k, s, p), strided(k, s, p),
                             strided(k, s, p), [include_pad](const std::vector<double>& v, int64_t dh, int64_t dw) {
                               double acc = 0;
                               for (double e : v) acc += e;
                               return acc / static_cast<double>(include_pad ? dh * dw : v.size());
                             });
}

Tensor naive_adaptive(const Tensor& x, int64_t OH, int64_t OW) {
  auto bins = [](int64_t out) {
    return [out](int64_t o, int64_t in, int64_t& a, int64_t& b) {
      a = static_cast<int64_t>(std::floor(static_cast<double>(o * in) / out));
      b = static_cast<int64_t>(std::ceil(static_cast<double>((o + 1) * in) / out));
    };
  };
  return naive_window_reduce(x, OH, OW, bins(OH), bins(OW), [](const std::vector<double>& v, int64_t, int64_t) {
    double acc = 0;
    for (double e : v) acc += e;
    return acc / static_cast<double>(v.size());
  });
}

// Bilinear sampling written from the definition: source coordinate, clamp, blend.
Tensor naive_bilinear(const Tensor& x, int64_t OH, int64_t OW, bool align_corners) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const std::vector<double> xv = x.to_vector_f64();
  auto source = [align_corners](int64_t o, int64_t in, int64_t out) {
    if (align_corners) return out > 1 ? o * static_cast<double>(in - 1) / (out - 1) : 0.0;
    return std::max(0.0, (o + 0.5) * static_cast<double>(in) / out - 0.5);
  };
  std::vector<double> y(N * OH * OW * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const double sh = source(oh, H, OH), sw = source(ow, W, OW);
        const int64_t h0 = std::min<int64_t>(static_cast<int64_t>(sh), H - 1), w0 = std::min<int64_t>(static_cast<int64_t>(sw), W - 1);
        const int64_t h1 = std::min(h0 + 1, H - 1), w1 = std::min(w0 + 1, W - 1);
        const double fh = std::min(sh - h0, 1.0), fw = std::min(sw - w0, 1.0);
        for (int64_t c = 0; c < C; ++c) {
          auto at = [&](int64_t i, int64_t j) { return xv[((n * H + i) * W + j) * C + c]; };
          y[((n * OH + oh) * OW + ow) * C + c] = (1 - fh) * ((1 - fw) * at(h0, w0) + fw * at(h0, w1)) +
                                                 fh * ((1 - fw) * at(h1, w0) + fw * at(h1, w1));
        }
      }
  return Tensor::from_vector_f64(y, {N, OH, OW, C});
}

const std::vector<Shape> kShapes = {{1, 7, 7, 3}, {2, 8, 5, 4}, {1, 33, 33, 3}, {2, 1, 1, 5}, {1, 6, 9, 1}};

void gradcheck_unary(const std::function<Tensor(const Tensor&)>& f, const Shape& shape, uint64_t seed) {
  expect_gradcheck([f](const std::vector<Tensor>& in) { return f(in[0]); },
                   {random_tensor(shape, seed).set_requires_grad()});
}

}  // namespace

TEST(MaxPool2d, ForwardMatchesNaiveLoops) {
  for (const Shape& s : kShapes)
    for (auto [k, st, p] : std::vector<std::array<int64_t, 3>>{{2, 2, 0}, {3, 2, 1}, {3, 1, 1}, {1, 1, 0}, {3, 3, 0}}) {
      if (out_size(s[1], k, st, p) < 1 || out_size(s[2], k, st, p) < 1) continue;
      for (DType dt : {DType::F32, DType::F64}) {
        const Tensor x = random_tensor(s, 1, dt);
        expect_close(max_pool2d(x, k, st, p), naive_max_pool(x, k, st, p), 0.0, 0.0,
                     "max_pool2d " + shape_str(s) + " k" + std::to_string(k) + " s" + std::to_string(st) + " p" +
                         std::to_string(p));
      }
    }
}

// PyTorch's rules: on a tie the first maximum in the window (row-major) takes
// the gradient; a NaN wins over any number and propagates.
TEST(MaxPool2d, TiesGoToTheFirstMaximumAndNaNWins) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (DType dt : {DType::F32, DType::F64}) {
    // [1, 2, 2, 4], one 2x2 window: channel 0 ties everywhere, channel 1 holds a
    // NaN at (1, 0) after a larger number, channel 2 is all -inf, channel 3 ties late.
    const Tensor x = Tensor::from_vector({1.f, 5.f, -inf, 0.f,    // (0, 0)
                                          1.f, 7.f, -inf, 2.f,    // (0, 1)
                                          1.f, nan, -inf, 1.f,    // (1, 0)
                                          1.f, 9.f, -inf, 2.f},   // (1, 1)
                                         {1, 2, 2, 4})
                         .to(dt)
                         .set_requires_grad();
    const Tensor y = max_pool2d(x, 2, 2, 0);
    const std::vector<double> yv = y.to_vector_f64();
    EXPECT_EQ(yv[0], 1.0);
    EXPECT_TRUE(std::isnan(yv[1]));
    EXPECT_EQ(yv[2], -std::numeric_limits<double>::infinity());
    EXPECT_EQ(yv[3], 2.0);
    sum(y).backward();
    const std::vector<double> g = x.grad().to_vector_f64();
    const std::vector<double> want = {1, 0, 1, 0,   // ties: the first tap; all -inf: the first tap too
                                      0, 0, 0, 1,   // channel 3's first 2 is at (0, 1)
                                      0, 1, 0, 0,   // the NaN
                                      0, 0, 0, 0};
    EXPECT_EQ(g, want) << dtype_name(dt);
  }
}

TEST(MaxPool2d, BackwardMatchesFiniteDifferences) {
  gradcheck_unary([](const Tensor& x) { return max_pool2d(x, 3, 2, 1); }, {2, 5, 6, 3}, 2);
  gradcheck_unary([](const Tensor& x) { return max_pool2d(x, 2, 2, 0); }, {1, 4, 4, 2}, 3);
  gradcheck_unary([](const Tensor& x) { return max_pool2d(x, 3, 1, 1); }, {1, 4, 3, 2}, 4);  // overlapping windows
}

TEST(AvgPool2d, ForwardMatchesNaiveLoopsWithAndWithoutPaddingInTheCount) {
  for (const Shape& s : kShapes)
    for (auto [k, st, p] : std::vector<std::array<int64_t, 3>>{{2, 2, 0}, {3, 2, 1}, {3, 1, 1}, {1, 1, 0}, {5, 3, 2}}) {
      if (out_size(s[1], k, st, p) < 1 || out_size(s[2], k, st, p) < 1) continue;
      for (bool include : {true, false}) {
        const Tensor x = random_tensor(s, 5, DType::F32);
        expect_close(avg_pool2d(x, k, st, p, include), naive_avg_pool(x, k, st, p, include), 1e-6, 1e-6,
                     "avg_pool2d " + shape_str(s) + " k" + std::to_string(k) + " p" + std::to_string(p) +
                         (include ? " include_pad" : " exclude_pad"));
      }
    }
}

TEST(AvgPool2d, BackwardMatchesFiniteDifferences) {
  gradcheck_unary([](const Tensor& x) { return avg_pool2d(x, 3, 2, 1, true); }, {2, 5, 6, 3}, 6);
  gradcheck_unary([](const Tensor& x) { return avg_pool2d(x, 3, 2, 1, false); }, {1, 5, 4, 2}, 7);
  gradcheck_unary([](const Tensor& x) { return avg_pool2d(x, 2, 2, 0); }, {1, 4, 4, 2}, 8);
}

TEST(GlobalAvgPool, AveragesEveryPixelIntoOneAndSpreadsTheGradientBack) {
  const Tensor x = random_tensor({3, 7, 5, 4}, 9, DType::F32);
  const Tensor y = global_avg_pool(x);
  EXPECT_EQ(y.shape(), (Shape{3, 1, 1, 4}));
  expect_close(y, mean(x.to(DType::F64), {1, 2}, true), 1e-6, 1e-6, "global_avg_pool");
  gradcheck_unary([](const Tensor& t) { return global_avg_pool(t); }, {2, 3, 4, 3}, 10);
  gradcheck_unary([](const Tensor& t) { return global_avg_pool(t); }, {1, 1, 1, 2}, 11);
}

// Global pooling sums rows, then rows' sums (cpu::row_sums, mean_of_row_sums):
// rows in parallel at batch 1, the same sums for any thread count, and the
// order a banded block repeats as it makes the rows.
TEST(GlobalAvgPool, SumsRowsThenRowSumsForAnyThreadCount) {
  Tensor x = add_scalar(random_tensor({1, 112, 112, 40}, 21, DType::F32), 3.0);  // an offset: rounding shows
  const Tensor y = global_avg_pool(x);
  expect_close(y, mean(x.to(DType::F64), {1, 2}, true), 2e-6, 1e-5, "global_avg_pool 112x112");
  std::vector<float> sums(112 * 40), two_steps(40);
  cpu::row_sums(x.data<float>(), 112, 112, 40, sums.data());
  cpu::mean_of_row_sums(sums.data(), 1, 112, 112, 40, two_steps.data());
  EXPECT_EQ(y.to_vector(), two_steps);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const Tensor one_thread = global_avg_pool(x);
  omp_set_num_threads(threads);
  EXPECT_EQ(one_thread.to_vector(), y.to_vector());
}

TEST(AdaptiveAvgPool2d, ForwardMatchesPyTorchsBinRule) {
  for (const Shape& s : kShapes)
    for (auto [oh, ow] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {2, 3}, {3, 3}, {s[1], 1}, {1, s[2]}, {5, 4}}) {
      const Tensor x = random_tensor(s, 12, DType::F32);
      expect_close(adaptive_avg_pool2d(x, oh, ow), naive_adaptive(x, oh, ow), 1e-6, 1e-6,
                   "adaptive_avg_pool2d " + shape_str(s) + " -> " + std::to_string(oh) + "x" + std::to_string(ow));
    }
}

TEST(AdaptiveAvgPool2d, BackwardMatchesFiniteDifferences) {
  gradcheck_unary([](const Tensor& x) { return adaptive_avg_pool2d(x, 3, 2); }, {2, 7, 5, 2}, 13);
  gradcheck_unary([](const Tensor& x) { return adaptive_avg_pool2d(x, 5, 1); }, {1, 5, 4, 3}, 14);  // (H, 1)
  gradcheck_unary([](const Tensor& x) { return adaptive_avg_pool2d(x, 4, 6); }, {1, 3, 4, 2}, 15);  // upsampling bins
}

TEST(ResizeBilinear, ForwardMatchesTheDefinitionForBothCornerModes) {
  for (const Shape& s : kShapes)
    for (auto [oh, ow] : std::vector<std::pair<int64_t, int64_t>>{{14, 14}, {3, 4}, {1, 1}, {s[1], s[2]}, {7, 33}})
      for (bool ac : {false, true}) {
        const Tensor x = random_tensor(s, 16, DType::F32);
        expect_close(resize_bilinear(x, oh, ow, ac), naive_bilinear(x, oh, ow, ac), 1e-5, 1e-5,
                     "resize_bilinear " + shape_str(s) + " -> " + std::to_string(oh) + "x" + std::to_string(ow) +
                         (ac ? " align_corners" : ""));
      }
}

TEST(ResizeBilinear, SameSizeWithoutAlignCornersIsTheIdentity) {
  const Tensor x = random_tensor({2, 5, 7, 3}, 17, DType::F32);
  expect_close(resize_bilinear(x, 5, 7, false), x, 0.0, 0.0, "identity resize");
}

TEST(ResizeBilinear, BackwardMatchesFiniteDifferences) {
  gradcheck_unary([](const Tensor& x) { return resize_bilinear(x, 7, 5, false); }, {2, 3, 4, 2}, 18);
  gradcheck_unary([](const Tensor& x) { return resize_bilinear(x, 7, 5, true); }, {1, 3, 4, 2}, 19);
  gradcheck_unary([](const Tensor& x) { return resize_bilinear(x, 2, 3, false); }, {1, 5, 7, 2}, 20);  // downsampling
}

TEST(Pooling, BadArgumentsRaiseTypedErrorsNamingTheOp) {
  const Tensor x = Tensor::zeros({1, 4, 4, 2});
  try {
    max_pool2d(x, 3, 1, 2);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("max_pool2d"), std::string::npos) << e.what();
  }
  EXPECT_THROW(max_pool2d(x, 5, 1, 0), ShapeError);
  EXPECT_THROW(avg_pool2d(Tensor::zeros({4, 4, 2}), 2, 2, 0), ShapeError);
  EXPECT_THROW(avg_pool2d(x, 2, 0, 0), ValueError);
  EXPECT_THROW(adaptive_avg_pool2d(x, 0, 2), ValueError);
  EXPECT_THROW(resize_bilinear(x, 3, 0), ValueError);
  EXPECT_THROW(max_pool2d(Tensor::zeros({1, 4, 4, 2}, DType::I64), 2, 2, 0), DTypeError);
}

TEST(Pooling, AllVariantsMatchPyTorchForwardAndBackward) {
  const std::string py = kestrel::testing::python_with_torch();
  if (py.empty()) GTEST_SKIP() << "python3 with torch not found; skipping the PyTorch interop check";
  const std::string dir = kestrel::testing::temp_path("pool_interop");
  std::filesystem::create_directories(dir);
  std::ofstream spec(dir + "/cases.txt");
  struct Case {
    std::string name, kind;
    Shape shape;
    int64_t a, b, c;  // kernel/stride/padding or out_h/out_w
    std::function<Tensor(const Tensor&)> f;
  };
  std::vector<Case> cases = {
      {"max_k3s2p1", "max", {2, 33, 33, 3}, 3, 2, 1, [](const Tensor& x) { return max_pool2d(x, 3, 2, 1); }},
      {"max_k2s2", "max", {1, 7, 7, 5}, 2, 2, 0, [](const Tensor& x) { return max_pool2d(x, 2, 2, 0); }},
      {"avg_k3s2p1", "avg", {2, 9, 7, 3}, 3, 2, 1, [](const Tensor& x) { return avg_pool2d(x, 3, 2, 1); }},
      {"avg_k3s1p1_exclude", "avg_exclude", {1, 6, 5, 4}, 3, 1, 1,
       [](const Tensor& x) { return avg_pool2d(x, 3, 1, 1, false); }},
      {"global", "adaptive", {3, 7, 5, 6}, 1, 1, 0, [](const Tensor& x) { return global_avg_pool(x); }},
      {"adaptive_3x2", "adaptive", {2, 7, 5, 3}, 3, 2, 0, [](const Tensor& x) { return adaptive_avg_pool2d(x, 3, 2); }},
      {"adaptive_hx1", "adaptive", {1, 9, 6, 4}, 9, 1, 0, [](const Tensor& x) { return adaptive_avg_pool2d(x, 9, 1); }},
      {"adaptive_1xw", "adaptive", {1, 9, 6, 4}, 1, 6, 0, [](const Tensor& x) { return adaptive_avg_pool2d(x, 1, 6); }},
      {"adaptive_up", "adaptive", {1, 3, 4, 2}, 5, 7, 0, [](const Tensor& x) { return adaptive_avg_pool2d(x, 5, 7); }},
      {"bilinear_up", "bilinear", {2, 5, 7, 3}, 13, 16, 0,
       [](const Tensor& x) { return resize_bilinear(x, 13, 16, false); }},
      {"bilinear_down", "bilinear", {1, 33, 33, 2}, 7, 10, 0,
       [](const Tensor& x) { return resize_bilinear(x, 7, 10, false); }},
      {"bilinear_up_ac", "bilinear_ac", {2, 5, 7, 3}, 13, 16, 0,
       [](const Tensor& x) { return resize_bilinear(x, 13, 16, true); }},
      {"bilinear_down_ac", "bilinear_ac", {1, 33, 33, 2}, 7, 1, 0,
       [](const Tensor& x) { return resize_bilinear(x, 7, 1, true); }},
  };
  uint64_t seed = 200;
  for (const Case& c : cases) {
    Tensor x = random_tensor(c.shape, seed++, DType::F32).set_requires_grad();
    Tensor y = c.f(x);
    const Tensor gy = random_tensor(y.shape(), seed++, DType::F32);
    y.backward(gy);
    const std::string pre = dir + "/" + c.name + "_";
    kestrel::testing::save_npy(pre + "x.npy", x);
    kestrel::testing::save_npy(pre + "gy.npy", gy);
    kestrel::testing::save_npy(pre + "y.npy", y);
    kestrel::testing::save_npy(pre + "gx.npy", x.grad());
    spec << c.name << " " << c.kind << " " << c.a << " " << c.b << " " << c.c << "\n";
  }
  spec.close();
  EXPECT_EQ(kestrel::testing::run_python(py, "tests/interop/check_pool.py", dir), 0)
      << "tests/interop/check_pool.py found a mismatch (see its output above)";
}

TEST(Pooling, TraceRecordsEachOp) {
  TraceRecorder rec;
  const Tensor x = Tensor::zeros({1, 8, 8, 2});
  max_pool2d(x, 2, 2, 0);
  avg_pool2d(x, 2, 2, 0);
  global_avg_pool(x);
  adaptive_avg_pool2d(x, 2, 2);
  resize_bilinear(x, 4, 4);
  ASSERT_EQ(rec.events().size(), 5u);
  EXPECT_EQ(rec.events()[0].op, "max_pool2d");
  EXPECT_EQ(rec.events()[2].op, "global_avg_pool");
  EXPECT_EQ(rec.events()[4].output_shape, (Shape{1, 4, 4, 2}));
}

// Coordinate attention's poolings in one pass equal the two adaptive poolings
// and their concat bit for bit; with a gradient to record, or under a trace
// that names each layer, coord_pool is those ops.
TEST(CoordPool, EqualsBothAdaptivePoolingsConcatenatedBitForBit) {
  const std::vector<Shape> shapes = {{2, 5, 7, 16}, {1, 32, 32, 96}, {3, 1, 9, 3}, {1, 6, 1, 20}};
  for (DType dtype : {DType::F32, DType::F64})
    for (const Shape& s : shapes) {
      const Tensor x = random_tensor(s, 3, dtype);
      const Tensor expected =
          concat({adaptive_avg_pool2d(x, s[1], 1), adaptive_avg_pool2d(x, 1, s[2]).permute({0, 2, 1, 3})}, 1);
      Tensor fused;
      {
        TraceRecorder profile(/*keep_tensors=*/false, /*timed=*/true);
        fused = coord_pool(x);
        ASSERT_EQ(profile.events().size(), 1u);
        EXPECT_EQ(profile.events()[0].op, "coord_pool");
      }
      ASSERT_EQ(fused.shape(), expected.shape());
      EXPECT_EQ(fused.to_vector_f64(), expected.to_vector_f64()) << shape_str(s) << " " << dtype_name(dtype);
    }
  const Tensor x = random_tensor({1, 4, 4, 8}, 4, DType::F32);
  {
    TraceRecorder summary;
    coord_pool(x);
    EXPECT_GE(summary.events().size(), 3u) << "the layers one by one: two poolings and the concat";
  }
  // The gradient: one pass, equal bit for bit to the composed ops' (the two
  // pooling gradients' sum), for an upstream gradient that is not uniform.
  for (const Shape& s : shapes) {
    const Tensor xs = random_tensor(s, 5, DType::F32);
    const Tensor upstream = random_tensor({s[0], s[1] + s[2], 1, s[3]}, 6, DType::F32);
    auto grad_of = [&](bool composed) {
      Tensor leaf = xs.clone();
      leaf.set_requires_grad(true);
      Tensor y;
      if (composed) {
        TraceRecorder summary;  // names each layer: the composed ops
        y = coord_pool(leaf);
        EXPECT_GE(summary.events().size(), 3u);
      } else {
        TraceRecorder profile(/*keep_tensors=*/false, /*timed=*/true);
        y = coord_pool(leaf);
        EXPECT_EQ(profile.events().size(), 1u) << "with a gradient to record, still the one-pass op";
      }
      sum(mul(y, upstream)).backward();
      return leaf.grad().to_vector_f64();
    };
    EXPECT_EQ(grad_of(false), grad_of(true)) << shape_str(s);
  }
  Tensor trainable = x.clone();
  trainable.set_requires_grad(true);
  sum(coord_pool(trainable)).backward();
  ASSERT_TRUE(trainable.grad().defined());
  // d/dx of the sum of all H + W means: 1/W from its row's mean plus 1/H from its column's.
  for (double g : trainable.grad().to_vector_f64()) EXPECT_NEAR(g, 0.25 + 0.25, 1e-6);
}
