// Softmax, log_softmax and the classification losses: naive references,
// finite-difference gradients, argument errors, and PyTorch interop.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/ops/loss.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

namespace {

// Logits spread over [-scale, scale).
Tensor logits(int64_t n, int64_t c, uint64_t seed, DType dt = DType::F64, double scale = 3.0) {
  return mul_scalar(random_tensor({n, c}, seed, dt), scale);
}

Tensor labels(int64_t n, int64_t c, uint64_t seed) {
  Generator g(seed);
  std::vector<int64_t> v(n);
  for (auto& t : v) t = g.randint(0, c);
  return Tensor::from_vector_i64(v, {n});
}

// Rows of probabilities (positive, summing to one).
Tensor soft_targets(int64_t n, int64_t c, uint64_t seed, DType dt = DType::F64) {
  NoGradGuard ng;
  return softmax(mul_scalar(random_tensor({n, c}, seed, dt), 2.0), 1).detach();
}

// Naive log-probabilities of [N, C] rows: log(exp(x_k) / sum exp(x_j)), no max shift.
std::vector<std::vector<double>> naive_log_probs(const Tensor& x, double inv_t = 1.0) {
  const int64_t n = x.size(0), c = x.size(1);
  const std::vector<double> v = x.to_vector_f64();
  std::vector<std::vector<double>> out(n, std::vector<double>(c));
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t k = 0; k < c; ++k) s += std::exp(v[i * c + k] * inv_t);
    for (int64_t k = 0; k < c; ++k) out[i][k] = std::log(std::exp(v[i * c + k] * inv_t) / s);
  }
  return out;
}

// Naive softmax along `dim` by explicit index arithmetic over any shape.
Tensor naive_softmax(const Tensor& x, int64_t dim, bool log) {
  const Shape s = x.shape();
  const std::vector<double> v = x.to_vector_f64();
  const Shape st = contiguous_strides(s);
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    // All elements sharing every index except `dim` with i.
    const int64_t pos = (static_cast<int64_t>(i) / st[dim]) % s[dim];
    const int64_t base = static_cast<int64_t>(i) - pos * st[dim];
    double sum = 0;
    for (int64_t k = 0; k < s[dim]; ++k) sum += std::exp(v[base + k * st[dim]]);
    out[i] = log ? v[i] - std::log(sum) : std::exp(v[i]) / sum;
  }
  return Tensor::from_vector_f64(out, s);
}

}  // namespace

TEST(Softmax, ForwardMatchesNaiveLoopsAlongEveryDim) {
  for (const Shape& s : {Shape{3, 4, 5}, Shape{1, 7}, Shape{33, 1}, Shape{2, 1, 3, 7}}) {
    Tensor x = mul_scalar(random_tensor(s, 3), 4.0);
    for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d) {
      for (DType dt : {DType::F32, DType::F64}) {
        const double tol = dt == DType::F32 ? 1e-6 : 1e-13;
        const std::string what = shape_str(s) + " dim " + std::to_string(d) + " " + dtype_name(dt);
        expect_close(softmax(x.to(dt), d), naive_softmax(x, d, false), tol, tol, "softmax " + what);
        expect_close(log_softmax(x.to(dt), d), naive_softmax(x, d, true), 4 * tol, tol, "log_softmax " + what);
      }
    }
    expect_close(softmax(x, -1), naive_softmax(x, s.size() - 1, false), 1e-13, 0, "softmax dim -1");
  }
}

TEST(Softmax, ForwardAcceptsNonContiguousInputs) {
  Tensor x = random_tensor({4, 6}, 9);
  Tensor xt = x.transpose(0, 1);  // [6, 4], strided
  expect_close(softmax(xt, 1), naive_softmax(xt.contiguous(), 1, false), 1e-13, 0, "softmax of a transpose");
}

TEST(Softmax, HugeLogitsStayFiniteAndExact) {
  Tensor x = Tensor::from_vector({1000.0f, 1001.0f, -1000.0f, 0.0f}, {2, 2});
  const std::vector<float> p = softmax(x, 1).to_vector();
  const double e = 1.0 / (1.0 + std::exp(1.0));
  EXPECT_NEAR(p[0], e, 1e-6);
  EXPECT_NEAR(p[1], 1 - e, 1e-6);
  EXPECT_NEAR(p[2], 0.0, 1e-30);
  EXPECT_NEAR(p[3], 1.0, 1e-6);
  const std::vector<float> lp = log_softmax(x, 1).to_vector();
  EXPECT_NEAR(lp[2], -1000.0, 1e-3);
  EXPECT_NEAR(lp[3], 0.0, 1e-6);
  for (float v : lp) EXPECT_TRUE(std::isfinite(v));
  EXPECT_TRUE(std::isfinite(cross_entropy(x, Tensor::from_vector_i64({0, 0}, {2})).item()));
}

TEST(Softmax, BackwardMatchesFiniteDifferencesAlongEveryDim) {
  for (int64_t d : {0, 1, 2}) {
    Tensor x = mul_scalar(random_tensor({2, 3, 4}, 5 + d), 2.0).set_requires_grad();
    SCOPED_TRACE("dim " + std::to_string(d));
    expect_gradcheck([d](const std::vector<Tensor>& v) { return softmax(v[0], d); }, {x});
    expect_gradcheck([d](const std::vector<Tensor>& v) { return log_softmax(v[0], d); }, {x});
  }
}

TEST(CrossEntropy, ForwardMatchesNaiveFormulaWithAndWithoutLabelSmoothing) {
  for (auto [n, c] : {std::pair<int64_t, int64_t>{1, 3}, {7, 33}, {16, 10}, {5, 1}}) {
    for (double eps : {0.0, 0.1, 0.3}) {
      Tensor x = logits(n, c, 10 + c);
      Tensor t = labels(n, c, 20 + c);
      const auto lp = naive_log_probs(x);
      const auto tv = t.to_vector_i64();
      double expected = 0;
      for (int64_t i = 0; i < n; ++i) {
        double smooth = 0;
        for (int64_t k = 0; k < c; ++k) smooth -= lp[i][k] / c;
        expected += ((1 - eps) * -lp[i][tv[i]] + eps * smooth) / n;
      }
      EXPECT_NEAR(cross_entropy(x, t, eps).item(), expected, 1e-12) << "N=" << n << " C=" << c << " eps=" << eps;
      EXPECT_NEAR(cross_entropy(x.to(DType::F32), t, eps).item(), expected, 1e-5) << "f32 N=" << n << " C=" << c;
    }
  }
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  for (double eps : {0.0, 0.2}) {
    Tensor x = logits(5, 7, 31).set_requires_grad();
    Tensor t = labels(5, 7, 32);
    SCOPED_TRACE("label_smoothing " + std::to_string(eps));
    expect_gradcheck([&](const std::vector<Tensor>& v) { return cross_entropy(v[0], t, eps); }, {x});
  }
}

TEST(CrossEntropy, OutOfRangeLabelsAreRejectedWithAClearError) {
  Tensor x = logits(3, 5, 1);
  try {
    cross_entropy(x, Tensor::from_vector_i64({0, 4, 5}, {3}));
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cross_entropy"), std::string::npos) << msg;
    EXPECT_NE(msg.find("target[2] = 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("5 classes"), std::string::npos) << msg;
  }
  EXPECT_THROW(cross_entropy(x, Tensor::from_vector_i64({0, -1, 2}, {3})), ValueError);
  EXPECT_THROW(focal_loss(x, Tensor::from_vector_i64({0, 9, 2}, {3})), ValueError);
  EXPECT_THROW(cross_entropy(x, Tensor::from_vector({0, 1, 2}, {3})), DTypeError);  // float labels
  EXPECT_THROW(cross_entropy(x, Tensor::from_vector_i64({0, 1}, {2})), ShapeError);
  EXPECT_THROW(cross_entropy(random_tensor({3, 5, 2}, 1), Tensor::from_vector_i64({0, 1, 2}, {3})), ShapeError);
  EXPECT_THROW(cross_entropy(x, Tensor::from_vector_i64({0, 1, 2}, {3}), 1.5), ValueError);
}

TEST(CrossEntropySoft, ForwardMatchesNaiveAndOneHotTargetsEqualHardLabels) {
  for (auto [n, c] : {std::pair<int64_t, int64_t>{1, 3}, {7, 33}}) {
    Tensor x = logits(n, c, 40 + c);
    Tensor q = soft_targets(n, c, 41 + c);
    const auto lp = naive_log_probs(x);
    const auto qv = q.to_vector_f64();
    double expected = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < c; ++k) expected -= qv[i * c + k] * lp[i][k] / n;
    EXPECT_NEAR(cross_entropy_soft(x, q).item(), expected, 1e-12) << "N=" << n << " C=" << c;
    // One-hot rows reproduce cross_entropy with hard labels.
    Tensor t = labels(n, c, 42);
    std::vector<double> onehot(n * c, 0.0);
    const auto tv = t.to_vector_i64();
    for (int64_t i = 0; i < n; ++i) onehot[i * c + tv[i]] = 1.0;
    EXPECT_NEAR(cross_entropy_soft(x, Tensor::from_vector_f64(onehot, {n, c})).item(), cross_entropy(x, t).item(),
                1e-12);
  }
}

TEST(CrossEntropySoft, BackwardMatchesFiniteDifferencesForLogitsAndTargets) {
  Tensor x = logits(4, 6, 51).set_requires_grad();
  // Targets not summing to one exercise the exact gradient.
  Tensor q = mul_scalar(soft_targets(4, 6, 52), 1.3).set_requires_grad();
  expect_gradcheck([](const std::vector<Tensor>& v) { return cross_entropy_soft(v[0], v[1]); }, {x, q});
}

TEST(FocalLoss, ForwardMatchesNaiveFormulaAndReducesToCrossEntropyAtGammaZero) {
  for (auto [gamma, alpha] : {std::pair<double, double>{2.0, 0.25}, {0.5, 1.0}, {3.0, 0.75}}) {
    const int64_t n = 9, c = 7;
    Tensor x = logits(n, c, 60);
    Tensor t = labels(n, c, 61);
    const auto lp = naive_log_probs(x);
    const auto tv = t.to_vector_i64();
    double expected = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double l = lp[i][tv[i]];
      expected += -alpha * std::pow(1 - std::exp(l), gamma) * l / n;
    }
    EXPECT_NEAR(focal_loss(x, t, gamma, alpha).item(), expected, 1e-12) << "gamma " << gamma << " alpha " << alpha;
  }
  Tensor x = logits(6, 4, 62);
  Tensor t = labels(6, 4, 63);
  EXPECT_NEAR(focal_loss(x, t, 0.0, 1.0).item(), cross_entropy(x, t).item(), 1e-12);
}

TEST(FocalLoss, BackwardMatchesFiniteDifferences) {
  for (double gamma : {0.0, 0.5, 2.0}) {
    Tensor x = logits(5, 6, 71).set_requires_grad();
    Tensor t = labels(5, 6, 72);
    SCOPED_TRACE("gamma " + std::to_string(gamma));
    expect_gradcheck([&](const std::vector<Tensor>& v) { return focal_loss(v[0], t, gamma, 0.25); }, {x});
  }
}

TEST(FocalLoss, GradientIsFiniteWhenTheTargetIsCertain) {
  Tensor x = Tensor::from_vector_f64({60.0, -60.0, 0.0}, {1, 3}).set_requires_grad();
  focal_loss(x, Tensor::from_vector_i64({0}, {1}), 0.5).backward();
  // And about 0: with gamma 0.5 the gradient scales as (1 - p)^0.5, near e^-30 here.
  for (double g : x.grad().to_vector_f64()) {
    EXPECT_TRUE(std::isfinite(g)) << g;
    EXPECT_NEAR(g, 0.0, 1e-9);
  }
}

TEST(KlDivDistill, ForwardMatchesTemperatureSquaredKlWithBatchMean) {
  for (double T : {1.0, 4.0}) {
    const int64_t n = 6, c = 11;
    Tensor s = logits(n, c, 80), t = logits(n, c, 81);
    const auto ls = naive_log_probs(s, 1 / T), lt = naive_log_probs(t, 1 / T);
    double expected = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < c; ++k) expected += T * T * std::exp(lt[i][k]) * (lt[i][k] - ls[i][k]) / n;
    EXPECT_NEAR(kl_div_distill(s, t, T).item(), expected, 1e-12) << "T " << T;
  }
  Tensor s = logits(3, 5, 82);
  EXPECT_NEAR(kl_div_distill(s, s, 2.0).item(), 0.0, 1e-14);
}

TEST(KlDivDistill, GradientReachesTheStudentOnlyAndMatchesFiniteDifferences) {
  Tensor s = logits(4, 5, 90).set_requires_grad();
  Tensor t = logits(4, 5, 91).set_requires_grad();
  expect_gradcheck([&](const std::vector<Tensor>& v) { return kl_div_distill(v[0], t, 3.0); }, {s});
  t.zero_grad();
  kl_div_distill(s, t, 3.0).backward();
  EXPECT_FALSE(t.grad().defined()) << "the teacher must not receive a gradient";
  EXPECT_THROW(kl_div_distill(s, t, 0.0), ValueError);
  EXPECT_THROW(kl_div_distill(s, logits(4, 6, 1), 1.0), ShapeError);
}

// ---------------------------------------------------------------- PyTorch interop

TEST(Losses, SoftmaxAndEveryLossMatchPyTorch) {
  using namespace kestrel::testing;
  const std::string python = python_with_torch();
  if (python.empty()) GTEST_SKIP() << "no python3 with torch; PyTorch interop not checked";
  const std::string dir = std::filesystem::path(temp_path("loss_cases.txt")).parent_path().string();
  std::ofstream list(dir + "/loss_cases.txt");
  auto path = [&](const std::string& name, const std::string& what) { return dir + "/" + name + "_" + what + ".npy"; };
  int case_id = 0;
  // Each case: name kind p1 p2; inputs x (+ t / q / teacher), outputs loss / y and grad gx.
  auto run_case = [&](const std::string& name, const std::string& kind, double p1, double p2, int64_t n, int64_t c) {
    ++case_id;
    Tensor x = logits(n, c, 500 + case_id, DType::F32, 4.0).set_requires_grad();
    save_npy(path(name, "x"), x);
    Tensor out;
    if (kind == "ce" || kind == "focal") {
      Tensor t = labels(n, c, 600 + case_id);
      save_npy(path(name, "t"), t);
      out = kind == "ce" ? cross_entropy(x, t, p1) : focal_loss(x, t, p1, p2);
    } else if (kind == "soft") {
      Tensor q = soft_targets(n, c, 700 + case_id, DType::F32);
      save_npy(path(name, "t"), q);
      out = cross_entropy_soft(x, q);
    } else if (kind == "kl") {
      Tensor t = logits(n, c, 800 + case_id, DType::F32, 4.0);
      save_npy(path(name, "t"), t);
      out = kl_div_distill(x, t, p1);
    } else {  // softmax / log_softmax over dim p1 of [n, c]
      out = kind == "softmax" ? softmax(x, static_cast<int64_t>(p1)) : log_softmax(x, static_cast<int64_t>(p1));
    }
    Tensor gy = out.dim() == 0 ? Tensor::scalar(0.7) : random_tensor(out.shape(), 900 + case_id, DType::F32);
    save_npy(path(name, "gy"), gy);
    out.backward(gy);
    save_npy(path(name, "out"), out);
    save_npy(path(name, "gx"), x.grad());
    list << name << " " << kind << " " << p1 << " " << p2 << "\n";
  };
  run_case("ce", "ce", 0.0, 0.0, 16, 10);
  run_case("ce_smooth", "ce", 0.1, 0.0, 7, 33);
  run_case("ce_one", "ce", 0.3, 0.0, 1, 3);
  run_case("soft", "soft", 0.0, 0.0, 9, 17);
  run_case("focal", "focal", 2.0, 0.25, 12, 5);
  run_case("focal_half", "focal", 0.5, 1.0, 3, 7);
  run_case("kl_t4", "kl", 4.0, 0.0, 8, 10);
  run_case("kl_t1", "kl", 1.0, 0.0, 2, 33);
  run_case("softmax0", "softmax", 0, 0.0, 5, 7);
  run_case("softmax1", "softmax", 1, 0.0, 5, 7);
  run_case("logsoftmax1", "log_softmax", 1, 0.0, 6, 33);
  list.close();
  EXPECT_EQ(run_python(python, "tests/interop/check_loss.py", dir), 0)
      << "tests/interop/check_loss.py found differences from PyTorch (see its output above)";
}
