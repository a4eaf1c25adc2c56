#include <cmath>
#include <limits>
#include <memory>

#include "engine/io/safetensors.h"
#include "engine/nn/module.h"
#include "engine/optim/adamw.h"
#include "engine/optim/clip.h"
#include "engine/optim/ema.h"
#include "engine/optim/rmsprop.h"
#include "engine/optim/plateau.h"
#include "engine/optim/schedule.h"
#include "engine/optim/sgd.h"
#include "test_util.h"

using namespace kestrel;
using namespace kestrel::optim;
using kestrel::testing::expect_close;
using kestrel::testing::random_tensor;
using kestrel::testing::temp_path;

namespace {

// A one-element parameter with a constant gradient of 1 at every step.
Tensor scalar_param(double value, DType dtype = DType::F64) {
  Tensor p = Tensor::full({1}, value, dtype);
  p.set_requires_grad(true);
  return p;
}

std::vector<double> run_steps(Optimizer& opt, Tensor& p, int steps) {
  std::vector<double> out;
  for (int s = 0; s < steps; ++s) {
    p.set_grad(Tensor::full({1}, 1.0, p.dtype()));
    opt.step();
    out.push_back(p.item());
  }
  return out;
}

void expect_values(const std::vector<double>& actual, const std::vector<double>& expected, double tol,
                   const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i)
    EXPECT_NEAR(actual[i], expected[i], tol) << what << " after step " << i + 1;
}

// Naive scalar references of torch's rules, in double, element by element.
struct RefSGD {
  double lr, mom, damp, wd;
  bool nesterov;
  std::vector<double> buf;
  void step(std::vector<double>& p, const std::vector<double>& g) {
    const bool first = buf.empty();
    if (first) buf.assign(p.size(), 0.0);
    for (size_t i = 0; i < p.size(); ++i) {
      double d = g[i] + wd * p[i];
      if (mom != 0.0) {
        buf[i] = first ? d : mom * buf[i] + (1 - damp) * d;
        d = nesterov ? d + mom * buf[i] : buf[i];
      }
      p[i] -= lr * d;
    }
  }
};

struct RefAdamW {
  double lr, b1, b2, eps, wd;
  int t = 0;
  std::vector<double> m, v;
  void step(std::vector<double>& p, const std::vector<double>& g) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

// A module with a conv-flagged weight, a bias, a float buffer and an int buffer.
class Tiny : public nn::Module {
 public:
  explicit Tiny(uint64_t seed) {
    weight = register_parameter("weight", random_tensor({2, 1, 1, 3}, seed, DType::F32), true);
    bias = register_parameter("bias", random_tensor({2}, seed + 1, DType::F32));
    running_var = register_buffer("running_var", random_tensor({2}, seed + 2, DType::F32));
    count = register_buffer("count", Tensor::scalar(0, DType::I64));
  }
  Tensor forward(const Tensor& x) override { return x; }
  Tensor weight, bias, running_var, count;
};

}  // namespace

// ---------------------------------------------------------------- SGD

TEST(SGD, MomentumMatchesHandComputedSteps) {
  // p=1, g=1, lr=0.1, momentum 0.9: buf 1, 1.9, 2.71 -> p 0.9, 0.71, 0.439
  Tensor p = scalar_param(1.0);
  SGD opt({p}, {0.1, 0.9});
  expect_values(run_steps(opt, p, 3), {0.9, 0.71, 0.439}, 1e-12, "momentum");
}

TEST(SGD, NesterovMatchesHandComputedSteps) {
  // d = g + 0.9 buf: 1.9, 2.71, 3.439 -> p 0.81, 0.539, 0.1951
  Tensor p = scalar_param(1.0);
  SGDOptions o;
  o.lr = 0.1, o.momentum = 0.9, o.nesterov = true;
  SGD opt({p}, o);
  expect_values(run_steps(opt, p, 3), {0.81, 0.539, 0.1951}, 1e-12, "nesterov");
}

TEST(SGD, WeightDecayAndDampeningMatchHandComputedSteps) {
  // no momentum, wd 0.1: d = 1 + 0.1 p -> p 0.89, 0.7811, 0.673289
  Tensor p = scalar_param(1.0);
  SGDOptions o;
  o.lr = 0.1, o.weight_decay = 0.1;
  SGD opt({p}, o);
  expect_values(run_steps(opt, p, 3), {0.89, 0.7811, 0.673289}, 1e-12, "weight decay");
  // momentum 0.9, dampening 0.5; the first step is undampened: buf 1, 1.4, 1.76
  Tensor q = scalar_param(1.0);
  SGDOptions d;
  d.lr = 0.1, d.momentum = 0.9, d.dampening = 0.5;
  SGD opt2({q}, d);
  expect_values(run_steps(opt2, q, 3), {0.9, 0.76, 0.584}, 1e-12, "dampening");
}

TEST(SGD, EveryVariantMatchesTheScalarReferenceInF32AndF64) {
  for (DType dt : {DType::F32, DType::F64})
    for (int variant = 0; variant < 3; ++variant) {
      SGDOptions o;
      o.lr = 0.05, o.momentum = variant ? 0.9 : 0.0, o.nesterov = variant == 2, o.weight_decay = 1e-2;
      Tensor p = random_tensor({70000}, 3, dt).set_requires_grad(true);  // large enough for the OpenMP path
      std::vector<double> ref = p.to_vector_f64();
      RefSGD r{o.lr, o.momentum, 0.0, o.weight_decay, o.nesterov, {}};
      SGD opt({p}, o);
      for (int s = 0; s < 3; ++s) {
        Tensor g = random_tensor({70000}, 100 + static_cast<uint64_t>(s), dt);
        p.set_grad(g);
        opt.step();
        r.step(ref, g.to_vector_f64());
      }
      expect_close(p, Tensor::from_vector_f64(ref, {70000}), dt == DType::F32 ? 1e-6 : 1e-14, 0,
                   std::string("SGD variant ") + std::to_string(variant) + " " + dtype_name(dt));
    }
}

TEST(SGD, SkipsParametersWithoutGradientsAndRejectsBadOptions) {
  Tensor a = scalar_param(1.0), b = scalar_param(2.0);
  SGD opt({a, b}, {0.1, 0.9});
  a.set_grad(Tensor::full({1}, 1.0, DType::F64));
  opt.step();
  EXPECT_DOUBLE_EQ(a.item(), 0.9);
  EXPECT_DOUBLE_EQ(b.item(), 2.0);
  EXPECT_EQ(opt.state().tensors.count("1.momentum_buffer"), 0u);
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
  SGDOptions bad;
  bad.nesterov = true;  // needs momentum
  EXPECT_THROW(SGD({a}, bad), ValueError);
  EXPECT_THROW(SGD({a}, SGDOptions{-1.0}), ValueError);
  EXPECT_THROW(SGD({a, a}, SGDOptions{}), ValueError);
  EXPECT_THROW(SGD({Tensor::zeros({2}, DType::I64)}, SGDOptions{}), DTypeError);
}

// ---------------------------------------------------------------- AdamW

TEST(AdamW, MatchesHandComputedSteps) {
  // Constant g=1: m_hat = v_hat = 1, so each step is p = 0.99 p - 0.1/(1+1e-8).
  Tensor p = scalar_param(1.0);
  AdamWOptions o;
  o.lr = 0.1, o.weight_decay = 0.1;
  AdamW opt({p}, o);
  expect_values(run_steps(opt, p, 3), {0.8900000010, 0.78110000199, 0.6732890029701}, 1e-10, "adamw");
}

TEST(AdamW, FirstStepsWithVaryingGradientsMatchHandComputedValues) {
  // lr 0.01, betas 0.9/0.999, eps 1e-8, wd 0; p=0; g1=2, g2=-1.
  // step 1: m_hat = g1, v_hat = g1^2, so p = -lr * g1 / (|g1| + eps) (about -0.01)
  // step 2: m2 = 0.9*0.2 + 0.1*(-1) = 0.08; v2 = 0.999*0.004 + 0.001*1 = 0.004996
  //   m_hat = 0.08/0.19, v_hat = 0.004996/0.001999 -> p = -0.01 - 0.01*m_hat/sqrt(v_hat)
  Tensor p = scalar_param(0.0);
  AdamWOptions o;
  o.lr = 0.01, o.weight_decay = 0.0;
  AdamW opt({p}, o);
  p.set_grad(Tensor::full({1}, 2.0, DType::F64));
  opt.step();
  const double p1 = -0.01 * 2.0 / (2.0 + 1e-8);  // m_hat = 2, sqrt(v_hat) = 2
  EXPECT_NEAR(p.item(), p1, 1e-15);
  p.set_grad(Tensor::full({1}, -1.0, DType::F64));
  opt.step();
  const double expected = p1 - 0.01 * (0.08 / 0.19) / (std::sqrt(0.004996 / 0.001999) + 1e-8);
  EXPECT_NEAR(p.item(), expected, 1e-12);
}

TEST(AdamW, MatchesTheScalarReferenceInF32AndF64WithGroups) {
  for (DType dt : {DType::F32, DType::F64}) {
    Tensor w = random_tensor({300, 300}, 1, dt).set_requires_grad(true);  // decayed
    Tensor b = random_tensor({300}, 2, dt).set_requires_grad(true);       // not decayed
    std::vector<double> rw = w.to_vector_f64(), rb = b.to_vector_f64();
    AdamWOptions o;
    o.lr = 3e-3, o.weight_decay = 0.05;
    RefAdamW refw{o.lr, o.beta1, o.beta2, o.eps, 0.05, 0, {}, {}};
    RefAdamW refb{o.lr, o.beta1, o.beta2, o.eps, 0.0, 0, {}, {}};
    AdamW opt(decay_groups({{"w", w}, {"b", b}}, 0.05), o);
    for (int s = 0; s < 3; ++s) {
      Tensor gw = random_tensor({300, 300}, 10 + static_cast<uint64_t>(s), dt);
      Tensor gb = random_tensor({300}, 20 + static_cast<uint64_t>(s), dt);
      w.set_grad(gw);
      b.set_grad(gb);
      opt.step();
      refw.step(rw, gw.to_vector_f64());
      refb.step(rb, gb.to_vector_f64());
    }
    const double tol = dt == DType::F32 ? 2e-6 : 1e-13;
    expect_close(w, Tensor::from_vector_f64(rw, {300, 300}), tol, 0, std::string("AdamW weight ") + dtype_name(dt));
    expect_close(b, Tensor::from_vector_f64(rb, {300}), tol, 0, std::string("AdamW bias ") + dtype_name(dt));
  }
}

TEST(AdamW, ResumingFromSavedStateMatchesAnUninterruptedRunBitForBit) {
  auto grads = [](int s) { return random_tensor({40, 3}, 50 + static_cast<uint64_t>(s), DType::F32); };
  Tensor a = random_tensor({40, 3}, 7, DType::F32).set_requires_grad(true);
  AdamW full({a}, AdamWOptions{});
  Tensor b = a.clone().detach().set_requires_grad(true);
  {
    AdamW first({b}, AdamWOptions{});
    for (int s = 0; s < 2; ++s) {
      b.set_grad(grads(s));
      first.step();
    }
    first.set_lr(5e-4);
    const std::string path = temp_path("adamw_state.safetensors");
    io::save_safetensors(path, first.state().to_named_tensors("optim."));
    AdamW resumed({b}, AdamWOptions{});
    resumed.load_state(OptimizerState::from_named_tensors(io::load_safetensors(path).tensors, "optim."));
    EXPECT_EQ(resumed.lr(), 5e-4);
    resumed.set_lr(1e-3);
    b.set_grad(grads(2));
    resumed.step();
  }
  for (int s = 0; s < 3; ++s) {
    a.set_grad(grads(s));
    full.step();
  }
  EXPECT_EQ(a.to_vector(), b.to_vector());

  OptimizerState st = full.state();
  EXPECT_EQ(st.scalars.at("0.step"), 3.0);
  AdamW other({Tensor::zeros({5}).set_requires_grad(true)}, AdamWOptions{});
  EXPECT_THROW(other.load_state(st), ValueError);  // shape differs
  OptimizerState no_step = st;
  no_step.scalars.erase("0.step");
  EXPECT_THROW(full.load_state(no_step), ValueError);  // moments without their step count
  st.tensors["0.bogus"] = Tensor::zeros({40, 3});
  EXPECT_THROW(full.load_state(st), ValueError);
}

TEST(SGD, ResumingMomentumFromSavedStateMatchesAnUninterruptedRun) {
  auto grads = [](int s) { return random_tensor({17}, 60 + static_cast<uint64_t>(s), DType::F64); };
  SGDOptions o;
  o.lr = 0.1, o.momentum = 0.9, o.nesterov = true, o.weight_decay = 1e-4;
  Tensor a = random_tensor({17}, 8).set_requires_grad(true);
  Tensor b = a.clone().detach().set_requires_grad(true);
  SGD full({a}, o), first({b}, o);
  for (int s = 0; s < 2; ++s) {
    a.set_grad(grads(s));
    full.step();
    b.set_grad(grads(s));
    first.step();
  }
  SGD resumed({b}, o);
  resumed.load_state(first.state());
  a.set_grad(grads(2));
  full.step();
  b.set_grad(grads(2));
  resumed.step();
  EXPECT_EQ(a.to_vector_f64(), b.to_vector_f64());
}

// ---------------------------------------------------------------- RMSprop

// The values torch 1.13's torch.optim.RMSprop gives for p = 1 and gradients
// 2, -1, 0.5 (f64; lr 0.01, alpha 0.9, eps 1e-8, weight decay 0.1).
TEST(RMSprop, MatchesTorchWithAndWithoutMomentum) {
  const std::vector<std::pair<double, std::vector<double>>> cases = {
      {0.0, {0.96837722387450664, 0.98143407138789973, 0.9726756528031496}},
      {0.9, {0.96837722387450664, 0.95297357287495577, 0.93039036642323047}}};
  for (const auto& [momentum, expected] : cases) {
    Tensor p = scalar_param(1.0);
    RMSpropOptions o;
    o.lr = 0.01, o.alpha = 0.9, o.weight_decay = 0.1, o.momentum = momentum;
    RMSprop opt({p}, o);
    std::vector<double> got;
    for (double g : {2.0, -1.0, 0.5}) {
      p.set_grad(Tensor::full({1}, g, DType::F64));
      opt.step();
      got.push_back(p.item());
    }
    expect_values(got, expected, 1e-15, "rmsprop momentum " + std::to_string(momentum));
  }
  Tensor a = scalar_param(1.0);
  RMSpropOptions bad;
  bad.alpha = 1.0;
  EXPECT_THROW(RMSprop({a}, bad), ValueError);
  bad = RMSpropOptions{};
  bad.momentum = -0.1;
  EXPECT_THROW(RMSprop({a}, bad), ValueError);
}

// Interrupted after two steps, saved, loaded into a new optimizer: the third
// step lands where the uninterrupted run's does, bit for bit.
TEST(RMSprop, ResumingFromSavedStateMatchesAnUninterruptedRunBitForBit) {
  for (double momentum : {0.9, 0.0}) {
    auto grads = [](int s) { return random_tensor({70001}, 60 + static_cast<uint64_t>(s), DType::F32); };
    RMSpropOptions o;
    o.momentum = momentum, o.weight_decay = 1e-4;
    Tensor a = random_tensor({70001}, 8, DType::F32).set_requires_grad(true);
    Tensor b = a.clone().detach().set_requires_grad(true);
    RMSprop full({a}, o);
    {
      RMSprop first({b}, o);
      for (int s = 0; s < 2; ++s) {
        b.set_grad(grads(s));
        first.step();
      }
      const std::string path = temp_path("rmsprop_state.safetensors");
      io::save_safetensors(path, first.state().to_named_tensors("optim."));
      RMSprop resumed({b}, o);
      resumed.load_state(OptimizerState::from_named_tensors(io::load_safetensors(path).tensors, "optim."));
      b.set_grad(grads(2));
      resumed.step();
    }
    for (int s = 0; s < 3; ++s) {
      a.set_grad(grads(s));
      full.step();
    }
    EXPECT_EQ(a.to_vector(), b.to_vector()) << "momentum " << momentum;
    EXPECT_EQ(full.state().tensors.count("0.momentum_buffer"), momentum != 0.0 ? 1u : 0u);
  }
}

// ---------------------------------------------------------------- schedules

TEST(Schedule, WarmupCosineAtKeySteps) {
  WarmupCosine s(0.1, /*total=*/100, /*warmup=*/10, /*min=*/0.001);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr(5), 0.05);
  EXPECT_DOUBLE_EQ(s.lr(10), 0.1);                           // end of warmup: peak
  EXPECT_NEAR(s.lr(55), 0.001 + 0.5 * (0.1 - 0.001), 1e-15);  // half way through the cosine
  EXPECT_NEAR(s.lr(100), 0.001, 1e-15);                      // end
  EXPECT_DOUBLE_EQ(s.lr(5000), 0.001);
  WarmupCosine nowarm(1.0, 10);
  EXPECT_DOUBLE_EQ(nowarm.lr(0), 1.0);
  EXPECT_NEAR(nowarm.lr(5), 0.5, 1e-15);
  EXPECT_THROW(WarmupCosine(0.1, 10, 20), ValueError);
}

TEST(Schedule, StepDecayAtKeySteps) {
  StepDecay s(0.1, 30, 0.1);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(29), 0.1);
  EXPECT_NEAR(s.lr(30), 0.01, 1e-17);
  EXPECT_NEAR(s.lr(65), 0.001, 1e-18);
  StepDecay m(1.0, std::vector<int64_t>{80, 30}, 0.5);
  EXPECT_DOUBLE_EQ(m.lr(29), 1.0);
  EXPECT_DOUBLE_EQ(m.lr(30), 0.5);
  EXPECT_DOUBLE_EQ(m.lr(79), 0.5);
  EXPECT_DOUBLE_EQ(m.lr(80), 0.25);
}

// timm's warmup_t in front of a step schedule: linear from 0 to the
// schedule's value at the warmup's end, then the schedule itself.
TEST(Schedule, LinearWarmupRampsIntoTheScheduleBehindIt) {
  LinearWarmup s(std::make_unique<StepDecay>(0.1, 30, 0.1), 10);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr(5), 0.05);
  EXPECT_DOUBLE_EQ(s.lr(10), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(29), 0.1);
  EXPECT_NEAR(s.lr(30), 0.01, 1e-15);
  LinearWarmup none(std::make_unique<StepDecay>(0.1, 30, 0.1), 0);
  EXPECT_DOUBLE_EQ(none.lr(0), 0.1);
  EXPECT_THROW(LinearWarmup(nullptr, 3), ValueError);
  LinearWarmup from(std::make_unique<StepDecay>(0.1, 30, 0.1), 10, 0.02);  // timm's warmup_lr_init
  EXPECT_DOUBLE_EQ(from.lr(0), 0.02);
  EXPECT_DOUBLE_EQ(from.lr(5), 0.06);
  EXPECT_DOUBLE_EQ(from.lr(10), 0.1);
  EXPECT_THROW(LinearWarmup(std::make_unique<StepDecay>(0.1, 30, 0.1), 10, -1.0), ValueError);
}

TEST(Schedule, OneCycleMatchesTorchOneCycleLRAtKeySteps) {
  // max 1.0, 100 steps, pct 0.3: initial 0.04, final 4e-6, peak at step 29.
  OneCycle s(1.0, 100);
  EXPECT_NEAR(s.lr(0), 0.04, 1e-15);
  EXPECT_NEAR(s.lr(29), 1.0, 1e-15);
  EXPECT_NEAR(s.lr(64), 4e-6 + (1.0 - 4e-6) / 2, 1e-15);  // middle of the descent
  EXPECT_NEAR(s.lr(99), 4e-6, 1e-18);
  EXPECT_NEAR(s.lr(150), 4e-6, 1e-18);
  const double pct = 10.0 / 29.0;
  EXPECT_NEAR(s.lr(10), 1.0 + (0.04 - 1.0) / 2 * (std::cos(M_PI * pct) + 1), 1e-15);
  EXPECT_NEAR(s.momentum(0), 0.95, 1e-15);
  EXPECT_NEAR(s.momentum(29), 0.85, 1e-15);
  EXPECT_NEAR(s.momentum(99), 0.95, 1e-15);
  EXPECT_THROW(OneCycle(1.0, 2, 0.3), ValueError);
}

// The rates torch 1.13's ReduceLROnPlateau gives for the same numbers
// (SGD at lr 0.1, one scheduler.step(metric) per epoch, lr read after each):
// a tie and a gain under the relative threshold are no improvement, cooldown
// epochs never count as bad, nan is a bad epoch, min_lr is a floor.
TEST(Schedule, ReduceOnPlateauMatchesTorch) {
  const double nan = std::nan("");
  const std::vector<double> accuracy = {0.5, 0.6, 0.6,  0.60005, 0.59, 0.7, 0.69, 0.68, 0.7, 0.71,
                                        0.7, 0.7, 0.7,  0.7,     nan,  0.5, 0.5,  0.5,  0.5, 0.5};
  const std::vector<double> torch_accuracy_lrs = {0.1,   0.1,   0.1,   0.1,   0.05,  0.05,  0.05,
                                                  0.05,  0.025, 0.025, 0.025, 0.025, 0.02,  0.02,
                                                  0.02,  0.02,  0.02,  0.02,  0.02,  0.02};
  PlateauOptions max_mode;
  max_mode.factor = 0.5;
  max_mode.patience = 2;
  max_mode.cooldown = 1;
  max_mode.min_lr = 0.02;
  ReduceOnPlateau by_accuracy(0.1, max_mode);
  for (size_t e = 0; e < accuracy.size(); ++e) {
    const double before = by_accuracy.lr();
    const bool lowered = by_accuracy.observe(accuracy[e]);
    EXPECT_EQ(lowered, by_accuracy.lr() != before) << "epoch " << e;
    EXPECT_EQ(by_accuracy.lr(), torch_accuracy_lrs[e]) << "epoch " << e;
  }
  const std::vector<double> loss = {2.0, 1.5, 1.5001, 1.49995, 1.6, 1.2, 1.3, 1.3,
                                    1.3, 1.1, 1.2,    1.2,     1.2, 1.2, 1.2, 1.2};
  const double r1 = 0.010000000000000002, r2 = 0.0010000000000000002, r3 = 0.00010000000000000003,
               r4 = 1.0000000000000004e-05, r5 = 1.0000000000000004e-06;  // as torch printed them
  const std::vector<double> torch_loss_lrs = {0.1, 0.1, 0.1, r1, r1, r1, r1, r2, r2, r2, r2, r3, r3, r4, r4, r5};
  PlateauOptions min_mode;
  min_mode.patience = 1;
  min_mode.higher_is_better = false;
  ReduceOnPlateau by_loss(0.1, min_mode);
  for (size_t e = 0; e < loss.size(); ++e) {
    by_loss.observe(loss[e]);
    EXPECT_EQ(by_loss.lr(), torch_loss_lrs[e]) << "epoch " << e;
  }
  // The best starts at the worst value: a first loss of inf is a bad epoch
  // (torch 1.13: 0.05, 0.05, 0.025, 0.0125, 0.0125), a first accuracy of 0 is
  // the best so far (0.1, 0.05, 0.05).
  PlateauOptions halve = min_mode;
  halve.factor = 0.5;
  halve.patience = 0;
  ReduceOnPlateau from_inf(0.1, halve);
  std::vector<double> rates;
  for (double v : {std::numeric_limits<double>::infinity(), 1.0, 1.0, nan, 0.5}) {
    from_inf.observe(v);
    rates.push_back(from_inf.lr());
  }
  EXPECT_EQ(rates, (std::vector<double>{0.05, 0.05, 0.025, 0.0125, 0.0125}));
  halve.higher_is_better = true;
  ReduceOnPlateau from_zero(0.1, halve);
  rates.clear();
  for (double v : {0.0, 0.0, 0.1}) {
    from_zero.observe(v);
    rates.push_back(from_zero.lr());
  }
  EXPECT_EQ(rates, (std::vector<double>{0.1, 0.05, 0.05}));
  PlateauOptions bad = min_mode;
  bad.factor = 1.0;
  EXPECT_THROW(ReduceOnPlateau(0.1, bad), ValueError);
  bad = min_mode;
  bad.patience = -1;
  EXPECT_THROW(ReduceOnPlateau(0.1, bad), ValueError);
}

// ---------------------------------------------------------------- clipping

TEST(ClipGradNorm, ScalesByTheGlobalNormAndReturnsIt) {
  Tensor a = Tensor::zeros({2}).set_requires_grad(true), b = Tensor::zeros({1}).set_requires_grad(true);
  Tensor c = Tensor::zeros({3}).set_requires_grad(true);  // no gradient: skipped
  a.set_grad(Tensor::from_vector({3, 4}, {2}));
  b.set_grad(Tensor::from_vector({12}, {1}));
  EXPECT_NEAR(clip_grad_norm_({a, b, c}, 20.0), 13.0, 1e-6);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<float>{3, 4}));  // under the limit: unchanged
  EXPECT_NEAR(clip_grad_norm_({a, b, c}, 6.5), 13.0, 1e-6);
  const double k = 6.5 / (13.0 + 1e-6);
  expect_close(a.grad(), Tensor::from_vector({static_cast<float>(3 * k), static_cast<float>(4 * k)}, {2}), 1e-6);
  expect_close(b.grad(), Tensor::from_vector({static_cast<float>(12 * k)}, {1}), 1e-6);
  EXPECT_NEAR(grad_norm({a, b}), 6.5, 1e-5);
  b.set_grad(Tensor::from_vector({NAN}, {1}));
  EXPECT_THROW(clip_grad_norm_({a, b}, 1.0, /*error_if_nonfinite=*/true), ValueError);
}

TEST(ClipGradNorm, LargeF64GradientsMatchANaiveNorm) {
  Tensor p = Tensor::zeros({100000}, DType::F64).set_requires_grad(true);
  Tensor g = random_tensor({100000}, 9);
  p.set_grad(g.clone());
  double ss = 0;
  for (double v : g.to_vector_f64()) ss += v * v;
  EXPECT_NEAR(clip_grad_norm_({p}, 1.0), std::sqrt(ss), 1e-9);
  EXPECT_NEAR(grad_norm({p}), 1.0, 1e-6);
}

// ---------------------------------------------------------------- EMA

TEST(ModelEma, FollowsTheDecayRuleAndCopiesIntegerBuffers) {
  Tiny model(1);
  ModelEma ema(model, EmaOptions{0.5});
  auto set_all = [&](double v) {
    model.weight.fill_(v);
    model.bias.fill_(v);
    model.running_var.fill_(v);
    model.count.fill_(v);
  };
  set_all(1.0);
  ema.update(model);  // step 1: decay 0, a copy
  EXPECT_EQ(ema.updates(), 1);
  set_all(3.0);
  ema.update(model);  // 1 + 0.5 (3 - 1) = 2
  set_all(0.0);
  ema.update(model);  // 2 + 0.5 (0 - 2) = 1
  for (const auto& [name, t] : ema.tensors())
    for (double v : t.to_vector_f64()) EXPECT_DOUBLE_EQ(v, name == "count" ? 0.0 : 1.0) << name;
  ema.copy_to(model);
  EXPECT_EQ(model.weight.to_vector(), std::vector<float>(6, 1.0f));
  EXPECT_TRUE(model.weight.requires_grad());
}

TEST(ModelEma, WarmupDecayMatchesTimm) {
  Tiny model(2);
  EmaOptions o;
  o.decay = 0.999, o.warmup = true;
  ModelEma ema(model, o);
  EXPECT_EQ(ema.decay_at(1), 0.0);
  EXPECT_NEAR(ema.decay_at(2), 1.0 - std::pow(2.0, -2.0 / 3.0), 1e-15);
  EXPECT_NEAR(ema.decay_at(11), 1.0 - std::pow(11.0, -2.0 / 3.0), 1e-15);
  EXPECT_EQ(ema.decay_at(10000000), 0.999);
  ModelEma plain(model, EmaOptions{0.9});
  EXPECT_EQ(plain.decay_at(1), 0.0);
  EXPECT_EQ(plain.decay_at(2), 0.9);
}

TEST(ModelEma, SwapRestoresTrainingWeightsAndStateResumes) {
  Tiny model(3);
  ModelEma ema(model, EmaOptions{0.9});
  model.weight.fill_(5.0);
  ema.update(model);
  ema.update(model);
  model.weight.fill_(0.0);
  ema.update(model);  // 5 + 0.1 (0 - 5) = 4.5
  ema.swap_with(model);
  EXPECT_EQ(model.weight.to_vector(), std::vector<float>(6, 4.5f));
  ema.swap_with(model);
  EXPECT_EQ(model.weight.to_vector(), std::vector<float>(6, 0.0f));

  Tiny other(4);
  ModelEma restored(other, EmaOptions{0.9});
  restored.load_state(ema.state());
  EXPECT_EQ(restored.updates(), 3);
  restored.update(model);
  ema.update(model);
  for (size_t i = 0; i < ema.tensors().size(); ++i)
    EXPECT_EQ(ema.tensors()[i].second.to_vector_f64(), restored.tensors()[i].second.to_vector_f64());
}
