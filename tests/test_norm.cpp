// Batch norm over NHWC channels, alone and fused with residual add and activation:
// naive-loop references, running statistics, finite-difference gradients, PyTorch.
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/nn/layers.h"
#include "engine/ops/norm.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

namespace {

double act_ref(Activation a, double z) {
  switch (a) {
    case Activation::None: return z;
    case Activation::ReLU: return z > 0 ? z : 0;
    case Activation::ReLU6: return std::min(std::max(z, 0.0), 6.0);
    case Activation::Sigmoid: return 1 / (1 + std::exp(-z));
    case Activation::Tanh: return std::tanh(z);
    case Activation::SiLU: return z / (1 + std::exp(-z));
    case Activation::HardSwish: return z * std::min(std::max(z + 3, 0.0), 6.0) / 6;
    case Activation::HardSigmoid: return std::min(std::max(z + 3, 0.0), 6.0) / 6;
    case Activation::GELU: return 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
  }
  return z;
}

struct NaiveBN {
  Tensor y;                 // f64
  std::vector<double> rm;   // running stats after the call
  std::vector<double> rv;
};

// Straightforward loops in double: two-pass statistics, PyTorch's running-stat rule.
NaiveBN naive_batch_norm(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& rm, const Tensor& rv,
                         bool training, double momentum, double eps, Activation act, const Tensor& residual) {
  const int64_t C = x.size(x.dim() - 1), M = x.numel() / C;
  const std::vector<double> xv = x.to_vector_f64(), wv = w.to_vector_f64(), bv = b.to_vector_f64();
  const std::vector<double> res = residual.defined() ? residual.to_vector_f64() : std::vector<double>();
  NaiveBN out{Tensor(), rm.to_vector_f64(), rv.to_vector_f64()};
  std::vector<double> mean(C, 0.0), var(C, 0.0);
  if (training) {
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < C; ++c) mean[c] += xv[r * C + c] / M;
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < C; ++c) var[c] += (xv[r * C + c] - mean[c]) * (xv[r * C + c] - mean[c]) / M;
    for (int64_t c = 0; c < C; ++c) {
      out.rm[c] = (1 - momentum) * out.rm[c] + momentum * mean[c];
      out.rv[c] = (1 - momentum) * out.rv[c] + momentum * var[c] * M / (M - 1);
    }
  } else {
    mean = rm.to_vector_f64();
    var = rv.to_vector_f64();
  }
  std::vector<double> y(xv.size());
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      double z = (xv[i] - mean[c]) / std::sqrt(var[c] + eps) * wv[c] + bv[c];
      if (!res.empty()) z += res[i];
      y[i] = act_ref(act, z);
    }
  out.y = Tensor::from_vector_f64(y, x.shape());
  return out;
}

struct BNInputs {
  Tensor x, w, b, rm, rv, res;
};

// Inputs with a non-zero mean per channel, weights of both signs, non-trivial running stats.
BNInputs make_inputs(const Shape& shape, uint64_t seed, DType dt, bool residual = false) {
  const int64_t C = shape.back();
  BNInputs in;
  in.x = add_scalar(mul_scalar(random_tensor(shape, seed, dt), 2.0), 0.5);
  in.w = add_scalar(mul_scalar(random_tensor({C}, seed + 1, dt), 1.5), 0.2);
  in.b = random_tensor({C}, seed + 2, dt);
  in.rm = mul_scalar(random_tensor({C}, seed + 3, dt), 0.3);
  in.rv = add_scalar(mul_scalar(random_tensor({C}, seed + 4, dt), 0.4), 1.0);
  if (residual) in.res = random_tensor(shape, seed + 5, dt);
  return in;
}

const std::vector<Shape> kOddShapes = {{2, 1, 1, 3}, {1, 7, 7, 3}, {3, 5, 5, 33}, {2, 3, 3, 1},
                                       {4, 33},      {1, 2, 1, 7}, {7, 1, 1, 5}};

const std::vector<Activation> kAllActs = {Activation::None,    Activation::ReLU, Activation::ReLU6,
                                          Activation::Sigmoid, Activation::Tanh, Activation::SiLU,
                                          Activation::HardSwish, Activation::HardSigmoid, Activation::GELU};

std::string label(const Shape& s, Activation a = Activation::None, bool res = false) {
  return shape_str(s) + " act=" + activation_name(a) + (res ? " +residual" : "");
}

}  // namespace

TEST(BatchNorm, TrainingForwardMatchesNaiveLoopsOnOddShapes) {
  for (const Shape& s : kOddShapes) {
    for (DType dt : {DType::F32, DType::F64}) {
      BNInputs in = make_inputs(s, 11, dt);
      NaiveBN ref = naive_batch_norm(in.x, in.w, in.b, in.rm, in.rv, true, 0.1, 1e-5, Activation::None, Tensor());
      BatchNormParams p;
      Tensor y = batch_norm(in.x, in.w, in.b, in.rm, in.rv, p);
      const double tol = dt == DType::F32 ? 2e-5 : 1e-12;
      expect_close(y, ref.y, tol, tol, label(s) + " " + dtype_name(dt));
      expect_close(in.rm, Tensor::from_vector_f64(ref.rm, {s.back()}), tol, tol, "running_mean " + label(s));
      expect_close(in.rv, Tensor::from_vector_f64(ref.rv, {s.back()}), tol, tol, "running_var " + label(s));
    }
  }
}

TEST(BatchNorm, RunningStatsFollowPyTorchsMomentumRuleWithUnbiasedVariance) {
  // One channel, values 1, 2, 3, 6: mean 3, biased var 3.5, unbiased var 14/3.
  Tensor x = Tensor::from_vector_f64({1, 2, 3, 6}, {2, 2, 1, 1});
  Tensor w = Tensor::ones({1}, DType::F64), b = Tensor::zeros({1}, DType::F64);
  Tensor rm = Tensor::full({1}, 0.5, DType::F64), rv = Tensor::full({1}, 2.0, DType::F64);
  BatchNormParams p;
  p.momentum = 0.25;
  Tensor y = batch_norm(x, w, b, rm, rv, p);
  EXPECT_NEAR(rm.item(), 0.75 * 0.5 + 0.25 * 3.0, 1e-15);
  EXPECT_NEAR(rv.item(), 0.75 * 2.0 + 0.25 * 14.0 / 3.0, 1e-15);
  // The output is normalized with the biased variance.
  EXPECT_NEAR(y.to_vector_f64()[3], 3.0 / std::sqrt(3.5 + 1e-5), 1e-12);
  // A second step compounds from the updated values.
  batch_norm(x, w, b, rm, rv, p);
  EXPECT_NEAR(rm.item(), 0.75 * (0.75 * 0.5 + 0.75) + 0.75, 1e-15);
}

TEST(BatchNorm, EvalModeUsesRunningStatsAndLeavesThemUnchanged) {
  for (const Shape& s : {Shape{1, 1, 1, 3}, Shape{2, 7, 7, 33}, Shape{1, 5}}) {
    BNInputs in = make_inputs(s, 5, DType::F32);
    const std::vector<float> rm0 = in.rm.to_vector(), rv0 = in.rv.to_vector();
    NaiveBN ref = naive_batch_norm(in.x, in.w, in.b, in.rm, in.rv, false, 0.1, 1e-3, Activation::None, Tensor());
    BatchNormParams p;
    p.training = false;
    p.eps = 1e-3;
    Tensor y = batch_norm(in.x, in.w, in.b, in.rm, in.rv, p);
    expect_close(y, ref.y, 2e-5, 2e-5, "eval " + label(s));
    EXPECT_EQ(in.rm.to_vector(), rm0);
    EXPECT_EQ(in.rv.to_vector(), rv0);
  }
}

TEST(BatchNorm, StatisticsStayAccurateForLargeMeansAndSmallSpreads) {
  // f32 values 1000 + 0.01 * u: a naive E[x^2] - E[x]^2 in float would lose the variance.
  const Shape s{4, 8, 8, 5};
  Tensor x64 = add_scalar(mul_scalar(random_tensor(s, 3), 0.01), 1000.0);
  Tensor x = x64.to(DType::F32);
  BNInputs in = make_inputs(s, 3, DType::F32);
  NaiveBN ref = naive_batch_norm(x, in.w, in.b, in.rm, in.rv, true, 0.1, 1e-8, Activation::None, Tensor());
  BatchNormParams p;
  p.eps = 1e-8;
  Tensor y = batch_norm(x, in.w, in.b, in.rm, in.rv, p);
  expect_close(y, ref.y, 5e-3, 0, "normalized output of a large-mean input");
  expect_close(in.rv, Tensor::from_vector_f64(ref.rv, {5}), 1e-7, 1e-3, "running_var of a large-mean input");
}

TEST(BatchNorm, ResultsAreIdenticalForOneAndTwoThreads) {
  const Shape s{8, 32, 32, 16};  // large enough for the parallel paths
  BNInputs in = make_inputs(s, 21, DType::F32, true);
  in.x.set_requires_grad();
  in.w.set_requires_grad();
  Tensor gy = random_tensor(s, 22, DType::F32);
  std::vector<std::vector<float>> results[2];
  const int saved = omp_get_max_threads();
  for (int k = 0; k < 2; ++k) {
    omp_set_num_threads(k + 1);
    Tensor rm = in.rm.clone(), rv = in.rv.clone();
    in.x.zero_grad();
    in.w.zero_grad();
    Tensor y = batch_norm_act(in.x, in.w, in.b, rm, rv, BatchNormParams{}, Activation::SiLU, in.res);
    y.backward(gy);
    results[k] = {y.to_vector(), rv.to_vector(), in.x.grad().to_vector(), in.w.grad().to_vector()};
  }
  omp_set_num_threads(saved);
  for (size_t i = 0; i < results[0].size(); ++i) EXPECT_EQ(results[0][i], results[1][i]) << "output " << i;
}

TEST(BatchNormAct, FusedForwardMatchesNaiveForEveryActivationWithAndWithoutResidual) {
  for (Activation act : kAllActs) {
    for (bool res : {false, true}) {
      for (bool training : {true, false}) {
        const Shape s{3, 5, 5, 7};
        BNInputs in = make_inputs(s, 31, DType::F32, res);
        // Scale weights up so relu6 and the hard activations see both of their kinks.
        in.w = mul_scalar(in.w, 3.0);
        NaiveBN ref = naive_batch_norm(in.x, in.w, in.b, in.rm, in.rv, training, 0.1, 1e-5, act, in.res);
        BatchNormParams p;
        p.training = training;
        Tensor y = batch_norm_act(in.x, in.w, in.b, in.rm, in.rv, p, act, in.res);
        expect_close(y, ref.y, 3e-5, 3e-5, label(s, act, res) + (training ? " train" : " eval"));
      }
    }
  }
}

// The f32 statistics keep a channel block's sums in registers (blocks of 16,
// 8 and 4 channels, then single channels), and the f32 backward runs its
// own builds of the row loops: both against the same inputs in f64, for
// channel counts that reach every block, over rows that end inside a 16-row
// sub-sum, with the activations whose derivative is a select and one that
// is not.
TEST(BatchNormAct, Float32GradientsMatchFloat64ForEveryChannelBlock) {
  for (int64_t C : {1, 3, 16, 20, 29, 45}) {
    for (Activation act : {Activation::None, Activation::ReLU, Activation::ReLU6, Activation::SiLU}) {
      // 1: a residual with a gradient; 2: one that needs none (pass 2 then
      // recomputes a ReLU's pre-activation from x and the residual).
      for (int res : {0, 1, 2}) {
        const Shape s{3, 7, 5, C};
        SCOPED_TRACE(label(s, act, res != 0) + (res == 2 ? " (no residual gradient)" : ""));
        const BNInputs in64 = make_inputs(s, 61, DType::F64, res != 0);
        const Tensor gy64 = random_tensor(s, 67, DType::F64);
        std::vector<std::vector<Tensor>> grads;
        for (DType dt : {DType::F64, DType::F32}) {
          Tensor x = in64.x.to(dt).clone().set_requires_grad(), w = in64.w.to(dt).clone().set_requires_grad();
          Tensor b = in64.b.to(dt).clone().set_requires_grad();
          Tensor r = res != 0 ? in64.res.to(dt).clone() : Tensor();
          if (res == 1) r.set_requires_grad();
          Tensor rm = in64.rm.to(dt).clone(), rv = in64.rv.to(dt).clone();
          BatchNormParams p;
          p.training = true;
          batch_norm_act(x, w, b, rm, rv, p, act, r).backward(gy64.to(dt));
          grads.push_back({x.grad(), w.grad(), b.grad(), res == 1 ? r.grad() : Tensor(), rv});
        }
        const char* names[] = {"grad x", "grad weight", "grad bias", "grad residual", "running var"};
        for (size_t i = 0; i < grads[0].size(); ++i)
          if (grads[0][i].defined()) expect_close(grads[1][i], grads[0][i], 2e-4, 2e-4, names[i]);
      }
    }
  }
}

TEST(BatchNorm, TrainingBackwardMatchesFiniteDifferences) {
  for (const Shape& s : {Shape{2, 3, 3, 4}, Shape{5, 3}, Shape{2, 1, 1, 1}}) {
    BNInputs in = make_inputs(s, 41, DType::F64);
    in.x.set_requires_grad();
    in.w.set_requires_grad();
    in.b.set_requires_grad();
    Tensor rm = in.rm, rv = in.rv;
    expect_gradcheck(
        [&](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], rm, rv, BatchNormParams{}); },
        {in.x, in.w, in.b}, 1e-6, 1e-7, 1e-5);
  }
}

TEST(BatchNorm, EvalBackwardMatchesFiniteDifferences) {
  BNInputs in = make_inputs({2, 3, 3, 4}, 43, DType::F64);
  in.x.set_requires_grad();
  in.w.set_requires_grad();
  in.b.set_requires_grad();
  BatchNormParams p;
  p.training = false;
  expect_gradcheck([&](const std::vector<Tensor>& v) { return batch_norm(v[0], v[1], v[2], in.rm, in.rv, p); },
                   {in.x, in.w, in.b});
}

namespace {

// Distance from the pre-activation to the nearest point where act' jumps.
double kink_distance(Activation act, const Tensor& z) {
  std::vector<double> kinks;
  if (act == Activation::ReLU) kinks = {0.0};
  if (act == Activation::ReLU6) kinks = {0.0, 6.0};
  if (act == Activation::HardSwish || act == Activation::HardSigmoid) kinks = {-3.0, 3.0};
  double best = 1e30;
  for (double v : z.to_vector_f64())
    for (double k : kinks) best = std::min(best, std::abs(v - k));
  return best;
}

}  // namespace

TEST(BatchNormAct, FusedBackwardMatchesFiniteDifferencesForEachActivationOffTheKinks) {
  for (Activation act : kAllActs) {
    // 2: a residual that needs no gradient (pass 2 then recomputes a ReLU's
    // pre-activation from x and the residual rather than store its gradient).
    for (int res : {1, 0, 2}) {
      for (bool training : {true, false}) {
        const Shape s{2, 3, 2, 3};
        BatchNormParams p;
        p.training = training;
        // Pick the first seed whose pre-activations are all at least 1e-3 from a kink.
        BNInputs in;
        for (uint64_t seed = 100; seed < 300; ++seed) {
          in = make_inputs(s, seed, DType::F64, res != 0);
          in.w = mul_scalar(in.w, 3.0);
          Tensor rm = in.rm.clone(), rv = in.rv.clone();
          Tensor z = batch_norm_act(in.x, in.w, in.b, rm, rv, p, Activation::None, in.res);
          if (kink_distance(act, z) > 1e-3) break;
        }
        in.x.set_requires_grad();
        in.w.set_requires_grad();
        in.b.set_requires_grad();
        if (res == 1) in.res.set_requires_grad();
        SCOPED_TRACE(label(s, act, res != 0) + (training ? " train" : " eval") +
                     (res == 2 ? ", no residual gradient" : ""));
        std::vector<Tensor> inputs{in.x, in.w, in.b};
        if (res == 1) inputs.push_back(in.res);
        expect_gradcheck(
            [&](const std::vector<Tensor>& v) {
              return batch_norm_act(v[0], v[1], v[2], in.rm, in.rv, p, act, res == 1 ? v[3] : in.res);
            },
            inputs, 1e-6, 1e-7, 1e-5);
      }
    }
  }
}

TEST(BatchNorm, OnlyTheInputsThatNeedGradientsReceiveThem) {
  BNInputs in = make_inputs({2, 2, 2, 3}, 51, DType::F64, true);
  in.w.set_requires_grad();
  Tensor y = batch_norm_act(in.x, in.w, in.b, in.rm, in.rv, BatchNormParams{}, Activation::ReLU, in.res);
  sum(y).backward();
  EXPECT_TRUE(in.w.grad().defined());
  EXPECT_FALSE(in.x.grad().defined());
  EXPECT_FALSE(in.b.grad().defined());
  EXPECT_FALSE(in.res.grad().defined());
}

TEST(BatchNorm, BadArgumentsRaiseErrorsNamingTheOpAndShapes) {
  BNInputs in = make_inputs({2, 4, 4, 3}, 1, DType::F32);
  Tensor w5 = Tensor::ones({5});
  try {
    batch_norm(in.x, w5, in.b, in.rm, in.rv, BatchNormParams{});
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("batch_norm"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2,4,4,3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[5]"), std::string::npos) << msg;
  }
  Tensor one = Tensor::ones({1, 1, 1, 3});
  try {
    batch_norm(one, in.w, in.b, in.rm, in.rv, BatchNormParams{});
    FAIL() << "expected ShapeError for 1 value per channel";
  } catch (const ShapeError& e) {
    const std::string hint = "[1,1,1,3] (a batch of one image at a 1x1 feature map: train with batches of 2 or more)";
    EXPECT_NE(std::string(e.what()).find(hint), std::string::npos) << e.what();
  }
  EXPECT_THROW(batch_norm_act(in.x, in.w, in.b, in.rm, in.rv, BatchNormParams{}, Activation::ReLU,
                              Tensor::zeros({2, 4, 4, 2})),
               ShapeError);
  EXPECT_THROW(batch_norm(in.x.to(DType::F64), in.w, in.b, in.rm, in.rv, BatchNormParams{}), DTypeError);
  Tensor none;
  BatchNormParams eval;
  eval.training = false;
  EXPECT_THROW(batch_norm(in.x, in.w, in.b, none, none, eval), ValueError);
  // Training without running statistics is allowed (track_running_stats=False).
  EXPECT_NO_THROW(batch_norm(in.x, in.w, in.b, none, none, BatchNormParams{}));
}

TEST(BatchNorm, WithoutAffineParametersOnlyNormalizesAndStillDifferentiates) {
  BNInputs in = make_inputs({3, 2, 2, 4}, 61, DType::F64);
  Tensor none;
  Tensor ones = Tensor::ones({4}, DType::F64), zeros = Tensor::zeros({4}, DType::F64);
  NaiveBN ref = naive_batch_norm(in.x, ones, zeros, in.rm, in.rv, true, 0.1, 1e-5, Activation::None, Tensor());
  Tensor rm = in.rm.clone(), rv = in.rv.clone();
  expect_close(batch_norm(in.x, none, none, rm, rv, BatchNormParams{}), ref.y, 1e-12, 1e-12, "affine=False");
  in.x.set_requires_grad();
  expect_gradcheck(
      [&](const std::vector<Tensor>& v) {
        return batch_norm_act(v[0], Tensor(), Tensor(), rm, rv, BatchNormParams{}, Activation::Tanh);
      },
      {in.x});
}

TEST(BatchNorm, ModuleForwardUpdatesItsBuffersAndMatchesTheOp) {
  nn::BatchNorm2d bn(5, 1e-5, 0.1);
  BNInputs in = make_inputs({2, 3, 3, 5}, 71, DType::F32, true);
  Tensor rm = Tensor::zeros({5}), rv = Tensor::ones({5});
  Tensor expected = batch_norm_act(in.x, bn.weight, bn.bias, rm, rv, BatchNormParams{}, Activation::ReLU, in.res);
  Tensor y = bn.forward_fused(in.x, Activation::ReLU, in.res);
  expect_close(y, expected, 0, 0, "BatchNorm2d::forward_fused");
  expect_close(bn.running_var, rv, 0, 0, "module running_var");
  EXPECT_EQ(bn.num_batches_tracked.item(), 1.0);
  bn.eval();
  BatchNormParams eval;
  eval.training = false;
  expect_close(bn.forward(in.x), batch_norm(in.x, bn.weight, bn.bias, rm, rv, eval), 0, 0, "module eval");
}

// ---------------------------------------------------------------- PyTorch interop

namespace {

struct InteropCase {
  std::string name;
  bool training;
  Activation act;
  bool residual;
  Shape shape;
};

}  // namespace

TEST(BatchNorm, TrainEvalAndFusedVariantsMatchPyTorch) {
  using namespace kestrel::testing;
  const std::string python = python_with_torch();
  if (python.empty()) GTEST_SKIP() << "no python3 with torch; PyTorch interop not checked";
  const std::vector<InteropCase> cases = {
      {"train_plain", true, Activation::None, false, {4, 5, 3, 7}},
      {"eval_plain", false, Activation::None, false, {2, 3, 3, 33}},
      {"train_relu_res", true, Activation::ReLU, true, {3, 4, 4, 8}},
      {"train_relu6", true, Activation::ReLU6, false, {2, 5, 5, 6}},
      {"train_silu_res", true, Activation::SiLU, true, {1, 7, 7, 3}},
      {"train_hswish_res", true, Activation::HardSwish, true, {2, 3, 3, 16}},
      {"eval_sigmoid_res", false, Activation::Sigmoid, true, {2, 2, 2, 5}},
      {"train_gelu", true, Activation::GELU, false, {3, 1, 1, 9}},
  };
  const std::string dir = std::filesystem::path(temp_path("norm_cases.txt")).parent_path().string();
  std::ofstream list(dir + "/norm_cases.txt");
  const double momentum = 0.2, eps = 1e-4;
  for (size_t k = 0; k < cases.size(); ++k) {
    const InteropCase& c = cases[k];
    BNInputs in = make_inputs(c.shape, 200 + 10 * k, DType::F32, c.residual);
    in.w = mul_scalar(in.w, 3.0);
    auto path = [&](const std::string& what) { return dir + "/" + c.name + "_" + what + ".npy"; };
    save_npy(path("x"), in.x);
    save_npy(path("w"), in.w);
    save_npy(path("b"), in.b);
    save_npy(path("rm0"), in.rm);
    save_npy(path("rv0"), in.rv);
    if (c.residual) save_npy(path("res"), in.res);
    Tensor gy = random_tensor(c.shape, 300 + k, DType::F32);
    save_npy(path("gy"), gy);
    in.x.set_requires_grad();
    in.w.set_requires_grad();
    in.b.set_requires_grad();
    if (c.residual) in.res.set_requires_grad();
    BatchNormParams p;
    p.training = c.training;
    p.momentum = momentum;
    p.eps = eps;
    Tensor y = batch_norm_act(in.x, in.w, in.b, in.rm, in.rv, p, c.act, in.res);
    y.backward(gy);
    save_npy(path("y"), y);
    save_npy(path("gx"), in.x.grad());
    save_npy(path("gw"), in.w.grad());
    save_npy(path("gb"), in.b.grad());
    if (c.residual) save_npy(path("gres"), in.res.grad());
    save_npy(path("rm1"), in.rm);
    save_npy(path("rv1"), in.rv);
    list << c.name << " " << (c.training ? 1 : 0) << " " << activation_name(c.act) << " " << (c.residual ? 1 : 0)
         << " " << momentum << " " << eps << "\n";
  }
  list.close();
  EXPECT_EQ(run_python(python, "tests/interop/check_norm.py", dir), 0)
      << "tests/interop/check_norm.py found differences from PyTorch (see its output above)";
}
