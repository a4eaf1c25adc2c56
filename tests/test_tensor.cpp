#include <cmath>

#include "engine/cpu/activation_math.h"
#include "engine/ops/elementwise.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

TEST(Tensor, FactoriesHaveShapeDtypeAndValues) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.dtype(), DType::F32);
  for (float v : z.to_vector()) EXPECT_EQ(v, 0.0f);
  Tensor a = Tensor::arange(5, DType::I64);
  EXPECT_EQ(a.to_vector_i64(), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  Tensor f = Tensor::full({2}, 2.5, DType::F64);
  EXPECT_EQ(f.to_vector_f64(), (std::vector<double>{2.5, 2.5}));
}

TEST(Tensor, AllDtypesCastRoundTrip) {
  Tensor x = Tensor::from_vector({-2.0f, 0.0f, 1.5f, 100.0f}, {4});
  for (DType t : {DType::F16, DType::BF16, DType::F64}) EXPECT_EQ(x.to(t).to(DType::F32).to_vector(), x.to_vector());
  EXPECT_EQ(x.to(DType::I32).to_vector_i64(), (std::vector<int64_t>{-2, 0, 1, 100}));
  EXPECT_EQ(x.to(DType::I8).to_vector_i64(), (std::vector<int64_t>{-2, 0, 1, 100}));
  EXPECT_EQ(Tensor::from_vector({3.0f, 200.0f}, {2}).to(DType::U8).to_vector_i64(), (std::vector<int64_t>{3, 200}));
}

TEST(Tensor, HalfRoundsToNearestEvenAndHandlesSubnormalsAndOverflow) {
  EXPECT_EQ(static_cast<float>(Half(1.0f + 1.0f / 2048.0f)), 1.0f);  // tie rounds to even
  EXPECT_EQ(static_cast<float>(Half(1.0f + 3.0f / 2048.0f)), 1.0f + 2.0f / 1024.0f);
  EXPECT_EQ(static_cast<float>(Half(5.960464477539063e-08f)), 5.960464477539063e-08f);  // smallest subnormal
  EXPECT_TRUE(std::isinf(static_cast<float>(Half(70000.0f))));
  EXPECT_EQ(static_cast<float>(Half(65504.0f)), 65504.0f);
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f + 1.0f / 256.0f)), 1.0f);
  EXPECT_TRUE(std::isnan(static_cast<float>(BFloat16(std::nanf("")))));
}

TEST(Tensor, ViewsShareStorageAndIndexCorrectly) {
  Tensor x = Tensor::arange(24).reshape({2, 3, 4});
  Tensor p = x.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_TRUE(p.shares_storage_with(x));
  EXPECT_FALSE(p.is_contiguous());
  // p[1][1][2] == x[1][2][1] == 1*12 + 2*4 + 1 = 21
  EXPECT_EQ(p.select(0, 1).select(0, 1).select(0, 2).item(), 21.0);
  Tensor n = x.narrow(2, 1, 2);
  EXPECT_EQ(n.contiguous().to_vector(), (std::vector<float>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22}));
  Tensor e = Tensor::from_vector({1, 2}, {2, 1}).expand({2, 3});
  EXPECT_EQ(e.contiguous().to_vector(), (std::vector<float>{1, 1, 1, 2, 2, 2}));
  EXPECT_EQ(x.unsqueeze(0).shape(), (Shape{1, 2, 3, 4}));
  EXPECT_EQ(x.unsqueeze(0).squeeze(0).shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(x.flatten(1).shape(), (Shape{2, 12}));
  EXPECT_EQ(p.reshape({8, 3}).to_vector()[3], x.permute({2, 0, 1}).contiguous().to_vector()[3]);
}

namespace {

// t's element (f64, any strides) at `index` of a broadcast shape: t's trailing
// dims line up with the index's, size-1 dims read element 0 (a naive reading).
double at_index(const Tensor& t, const std::vector<int64_t>& index) {
  const int64_t skip = static_cast<int64_t>(index.size()) - t.dim();
  int64_t offset = 0;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) offset += index[skip + d] * t.strides()[d];
  return t.data<double>()[offset];
}

// Every multi-index of `shape`, in row-major order.
std::vector<std::vector<int64_t>> all_indices(const Shape& shape) {
  std::vector<std::vector<int64_t>> out;
  std::vector<int64_t> i(shape.size(), 0);
  for (int64_t n = 0, total = Tensor::empty(shape).numel(); n < total; ++n) {
    out.push_back(i);
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0 && ++i[d] == shape[d]; --d) i[d] = 0;
  }
  return out;
}

}  // namespace

// Permuted, broadcast and sliced operands take the rows-of-strides path, big
// enough to split across threads mid-way through the outer dims.
TEST(Elementwise, StridedAndBroadcastOperandsMatchNaiveLoops) {
  const Tensor a = random_tensor({6, 9, 17, 43}, 1).permute({0, 2, 1, 3});  // [6,17,9,43], not contiguous
  const Tensor b = random_tensor({17, 1, 43}, 2);                            // broadcast over dims 0 and 2
  const Shape shape{6, 17, 9, 43};
  const std::vector<std::vector<int64_t>> indices = all_indices(shape);
  const struct {
    const char* name;
    Tensor (*op)(const Tensor&, const Tensor&);
    double (*naive)(double, double);
  } ops[] = {{"add", add, [](double x, double y) { return x + y; }},
             {"sub", sub, [](double x, double y) { return x - y; }},
             {"mul", mul, [](double x, double y) { return x * y; }},
             {"div", div, [](double x, double y) { return x / y; }}};
  for (const auto& o : ops) {
    const Tensor c = o.op(a, b);
    ASSERT_EQ(c.shape(), shape) << o.name;
    size_t wrong = 0;
    for (const auto& i : indices) wrong += at_index(c, i) != o.naive(at_index(a, i), at_index(b, i));
    EXPECT_EQ(wrong, 0u) << o.name;
  }
  // In place into the second half of a wider tensor's channels (self strided too).
  Tensor wide = random_tensor({6, 17, 9, 86}, 3);
  const Tensor before = wide.clone();
  Tensor half = wide.narrow(3, 43, 43);
  add_(half, a, 0.5);
  size_t wrong = 0;
  for (const auto& i : indices) {
    std::vector<int64_t> first = i, second = i;
    second[3] += 43;
    wrong += at_index(wide, second) != at_index(before, second) + 0.5 * at_index(a, i);
    wrong += at_index(wide, first) != at_index(before, first);
  }
  EXPECT_EQ(wrong, 0u);
}

TEST(Tensor, BadShapesRaiseTypedErrorsNamingTheOp) {
  Tensor x = Tensor::zeros({2, 3});
  try {
    x.reshape({4, 2});
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("reshape"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2,3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(x.narrow(1, 2, 2), ShapeError);
  EXPECT_THROW(x.permute({0, 0}), ShapeError);
  EXPECT_THROW(add(x, Tensor::zeros({4})), ShapeError);
  EXPECT_THROW(add(x, Tensor::zeros({2, 3}, DType::F64)), DTypeError);
  EXPECT_THROW(x.view({3, 2}).transpose(0, 1).view({6}), ShapeError);
}

TEST(Random, PhiloxIsReproducibleAndHasTheRightMoments) {
  Generator g1(42), g2(42), g3(43);
  Tensor a = Tensor::randn({10000}, g1), b = Tensor::randn({10000}, g2), c = Tensor::randn({10000}, g3);
  EXPECT_EQ(a.to_vector(), b.to_vector());
  EXPECT_NE(a.to_vector(), c.to_vector());
  EXPECT_NEAR(mean(a).item(), 0.0, 0.03);
  EXPECT_NEAR(var(a, {}).item(), 1.0, 0.05);
  Tensor u = Tensor::rand({10000}, g1);
  EXPECT_NEAR(mean(u).item(), 0.5, 0.02);
  for (float v : u.to_vector()) ASSERT_TRUE(v >= 0.0f && v < 1.0f);
  Tensor m = Tensor::bernoulli({10000}, 0.3, g1);
  EXPECT_NEAR(mean(m).item(), 0.3, 0.02);
  // Drawing continues from the offset: a second draw differs from the first.
  Generator g4(42);
  Tensor first = Tensor::randn({4}, g4), second = Tensor::randn({4}, g4);
  EXPECT_NE(first.to_vector(), second.to_vector());
}

TEST(Tensor, PrintsReadably) {
  const std::string s = Tensor::from_vector({1, 2, 3, 4}, {2, 2}).str();
  EXPECT_NE(s.find("[[1, 2],"), std::string::npos) << s;
  EXPECT_NE(s.find("shape=[2,2]"), std::string::npos) << s;
}

TEST(Autograd, ChainRuleThroughSharedSubexpressions) {
  Tensor x = Tensor::from_vector_f64({1.0, 2.0, 3.0}, {3}).set_requires_grad();
  Tensor y = mul(x, x);             // x^2
  Tensor z = sum(add(y, mul(y, x)));  // sum(x^2 + x^3)
  z.backward();
  EXPECT_EQ(x.grad().to_vector_f64(), (std::vector<double>{2 + 3, 4 + 12, 6 + 27}));
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCallsUntilZeroed) {
  Tensor x = Tensor::from_vector_f64({1.0, -1.0}, {2}).set_requires_grad();
  sum(mul_scalar(x, 3.0)).backward();
  sum(mul_scalar(x, 3.0)).backward();
  EXPECT_EQ(x.grad().to_vector_f64(), (std::vector<double>{6, 6}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, NoGradAndDetachStopRecording) {
  Tensor x = Tensor::ones({2}).set_requires_grad();
  {
    NoGradGuard g;
    EXPECT_FALSE(mul(x, x).requires_grad());
  }
  EXPECT_FALSE(x.detach().requires_grad());
  EXPECT_TRUE(mul(x, x).requires_grad());
}

TEST(Autograd, BackwardNeedsAGradientForNonScalarsAndRunsOnce) {
  Tensor x = Tensor::ones({2}).set_requires_grad();
  Tensor y = mul(x, x);
  EXPECT_THROW(y.backward(), AutogradError);
  y.backward(Tensor::from_vector({1, 2}, {2}));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{2, 4}));
  EXPECT_THROW(y.backward(Tensor::ones({2})), AutogradError);
}

TEST(Autograd, GradReadyHookFiresOnceWhenTheGradientIsComplete) {
  Tensor w = Tensor::from_vector_f64({2.0}, {1}).set_requires_grad();
  int calls = 0;
  double seen = 0;
  w.register_grad_ready_hook([&](Tensor& p) {
    ++calls;
    seen = p.grad().item();
  });
  Tensor a = mul_scalar(w, 3.0), b = mul_scalar(w, 4.0);
  sum(add(a, b)).backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, 7.0);  // both paths were in when the hook ran
}

// d(sum(h * h))/dh = 2h for an intermediate h = 3w reached by two paths.
TEST(Autograd, OnGradientGivesAnIntermediatesWholeGradient) {
  Tensor w = Tensor::from_vector_f64({1.0, -2.0}, {2}).set_requires_grad();
  Tensor h = mul_scalar(w, 3.0);
  std::vector<double> seen;
  int calls = 0;
  on_gradient(h, [&](const Tensor& g) {
    ++calls;
    seen = g.to_vector_f64();
  });
  sum(add(mul(h, h), mul_scalar(h, 0.0))).backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, (std::vector<double>{6.0, -12.0}));
  EXPECT_THROW(on_gradient(w, [](const Tensor&) {}), AutogradError);  // a leaf: use its grad
}

TEST(Gradcheck, ElementwiseBroadcastingOps) {
  auto a = random_tensor({2, 3, 4}, 1).set_requires_grad();
  auto b = add_scalar(random_tensor({3, 1}, 2), 2.0).detach().set_requires_grad();
  expect_gradcheck([](const std::vector<Tensor>& in) { return add(in[0], in[1]); }, {a, b});
  expect_gradcheck([](const std::vector<Tensor>& in) { return sub(in[0], in[1]); }, {a, b});
  expect_gradcheck([](const std::vector<Tensor>& in) { return mul(in[0], in[1]); }, {a, b});
  expect_gradcheck([](const std::vector<Tensor>& in) { return div(in[0], in[1]); }, {a, b});
}

TEST(Gradcheck, ActivationsAwayFromKinks) {
  // Values kept off the kinks (0, +-3, 6) where finite differences are undefined.
  Tensor x = Tensor::from_vector_f64({-4.0, -2.5, -1.2, -0.3, 0.4, 1.1, 2.2, 3.7, 5.5, 7.0}, {10}).set_requires_grad();
  for (Activation a : {Activation::ReLU, Activation::ReLU6, Activation::Sigmoid, Activation::Tanh, Activation::SiLU,
                       Activation::HardSwish, Activation::HardSigmoid, Activation::GELU}) {
    SCOPED_TRACE(activation_name(a));
    expect_gradcheck([a](const std::vector<Tensor>& in) { return activation(in[0], a); }, {x});
  }
  Tensor pos = Tensor::from_vector_f64({0.5, 1.5, 2.5}, {3}).set_requires_grad();
  expect_gradcheck([](const std::vector<Tensor>& in) { return log(in[0]); }, {pos});
  expect_gradcheck([](const std::vector<Tensor>& in) { return sqrt(in[0]); }, {pos});
  expect_gradcheck([](const std::vector<Tensor>& in) { return exp(in[0]); }, {pos});
  expect_gradcheck([](const std::vector<Tensor>& in) { return pow(in[0], 2.5); }, {pos});
}

TEST(Activations, MatchTheirDefinitions) {
  Tensor x = Tensor::from_vector({-4.0f, -1.0f, 0.0f, 2.0f, 7.0f}, {5});
  expect_close(hardswish(x), Tensor::from_vector({0.0f, -1.0f / 3.0f, 0.0f, 2.0f * 5.0f / 6.0f, 7.0f}, {5}), 1e-6);
  expect_close(hardsigmoid(x), Tensor::from_vector({0.0f, 1.0f / 3.0f, 0.5f, 5.0f / 6.0f, 1.0f}, {5}), 1e-6);
  expect_close(relu6(x), Tensor::from_vector({0, 0, 0, 2, 6}, {5}), 0);
  expect_close(gelu(Tensor::from_vector({1.0f}, {1})), Tensor::from_vector({0.8413447f}, {1}), 1e-6);
}

// f32 sigmoid and SiLU use an arithmetic exp (engine/cpu/activation_math.h)
// that vectorizes: within 1 ulp of e^x over its range, and the ops within 1e-6
// of the f64 definitions from -100 to 100.
TEST(Activations, F32ExpIsWithinOneUlpAndSigmoidAndSiluFollowTheirDefinitions) {
  double worst_ulps = 0.0, worst_x = 0.0;
  for (float x = -86.0f; x <= 80.0f; x += 0.0137f) {
    const double exact = std::exp(static_cast<double>(x));
    const double ulp = std::nextafter(static_cast<float>(exact), INFINITY) - static_cast<float>(exact);
    const double ulps = std::fabs(cpu::exp_f32(x) - exact) / ulp;
    if (ulps > worst_ulps) worst_ulps = ulps, worst_x = x;
  }
  EXPECT_LE(worst_ulps, 1.0) << "at x = " << worst_x;
  std::vector<float> xs;
  for (float x = -100.0f; x <= 100.0f; x += 0.173f) xs.push_back(x);
  const Tensor x = Tensor::from_vector(xs, {static_cast<int64_t>(xs.size())});
  std::vector<double> sig(xs.size()), silu(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    sig[i] = 1.0 / (1.0 + std::exp(-static_cast<double>(xs[i])));
    silu[i] = xs[i] * sig[i];
  }
  const int64_t n = static_cast<int64_t>(xs.size());
  expect_close(activation(x, Activation::Sigmoid), Tensor::from_vector_f64(sig, {n}).to(DType::F32), 1e-6, 1e-6);
  expect_close(activation(x, Activation::SiLU), Tensor::from_vector_f64(silu, {n}).to(DType::F32), 1e-6, 1e-6);
}

TEST(Gradcheck, ReductionsOverAnyDims) {
  auto x = random_tensor({2, 3, 4}, 3).set_requires_grad();
  expect_gradcheck([](const std::vector<Tensor>& in) { return sum(in[0], {0, 2}); }, {x});
  expect_gradcheck([](const std::vector<Tensor>& in) { return mean(in[0], {1}, true); }, {x});
  expect_gradcheck([](const std::vector<Tensor>& in) { return var(in[0], {0, 1}, true); }, {x});
  expect_gradcheck([](const std::vector<Tensor>& in) { return max(in[0], 2); }, {x});
  expect_gradcheck([](const std::vector<Tensor>& in) { return in[0].permute({2, 0, 1}).narrow(1, 1, 1).expand({4, 3, 3}); }, {x});
}

// Reduced dims in the middle ([N, H, W, C] over W, or over H and W) sum
// without a transposing copy: against naive loops, with an inner size over
// one 256-column block, from a non-contiguous view, and with an empty dim.
TEST(Reduce, SumsOverMiddleDimsMatchNaiveLoops) {
  const Shape s{2, 3, 4, 300};
  const Tensor x = random_tensor(s, 8, DType::F32);
  const std::vector<float> v = x.to_vector();
  std::vector<double> over_w(2 * 3 * 300, 0.0), over_hw(2 * 300, 0.0), over_h(2 * 4 * 300, 0.0);
  for (int n = 0; n < 2; ++n)
    for (int h = 0; h < 3; ++h)
      for (int w = 0; w < 4; ++w)
        for (int c = 0; c < 300; ++c) {
          const double e = v[((n * 3 + h) * 4 + w) * 300 + c];
          over_w[(n * 3 + h) * 300 + c] += e;
          over_hw[n * 300 + c] += e;
          over_h[(n * 4 + w) * 300 + c] += e;
        }
  expect_close(sum(x, {2}), Tensor::from_vector_f64(over_w, {2, 3, 300}).to(DType::F32), 1e-5);
  expect_close(sum(x, {1, 2}, true), Tensor::from_vector_f64(over_hw, {2, 1, 1, 300}).to(DType::F32), 1e-5);
  expect_close(sum(x, {1}), Tensor::from_vector_f64(over_h, {2, 4, 300}).to(DType::F32), 1e-5);
  // [N, W, H, C] view of x: reducing its dim 2 is x's H.
  expect_close(sum(x.permute({0, 2, 1, 3}), {2}), Tensor::from_vector_f64(over_h, {2, 4, 300}).to(DType::F32), 1e-5);
  const Tensor empty = sum(Tensor::zeros({2, 0, 3, 5}, DType::F32), {2});
  EXPECT_EQ(empty.shape(), (Shape{2, 0, 5}));
  EXPECT_EQ(sum(Tensor::ones({2, 0, 3, 5}, DType::F32), {1}).to_vector(), std::vector<float>(2 * 3 * 5, 0.0f));
}

TEST(Reduce, ValuesMatchNaiveLoops) {
  Tensor x = random_tensor({3, 5, 7}, 4, DType::F32);
  const std::vector<float> v = x.to_vector();
  std::vector<double> s1(7, 0.0), s2(5, 0.0);
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 5; ++b)
      for (int c = 0; c < 7; ++c) {
        s1[c] += v[(a * 5 + b) * 7 + c];
        s2[b] += v[(a * 5 + b) * 7 + c];
      }
  expect_close(sum(x, {0, 1}), Tensor::from_vector_f64(s1, {7}).to(DType::F32), 1e-5);
  expect_close(sum(x, {0, 2}), Tensor::from_vector_f64(s2, {5}).to(DType::F32), 1e-5);
  Tensor am = argmax(x, 1);
  EXPECT_EQ(am.shape(), (Shape{3, 7}));
  for (int a = 0; a < 3; ++a)
    for (int c = 0; c < 7; ++c) {
      int best = 0;
      for (int b = 1; b < 5; ++b)
        if (v[(a * 5 + b) * 7 + c] > v[(a * 5 + best) * 7 + c]) best = b;
      EXPECT_EQ(am.to_vector_i64()[a * 7 + c], best);
    }
}
