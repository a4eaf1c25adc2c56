// Mixed precision on the CPU side: the GradScaler state machine on CPU
// tensors, the autocast scope leaving CPU tensors alone, and --amp refusing a
// CPU device. The CUDA behaviour is in test_cuda_amp.cpp.
#include <cmath>
#include <filesystem>
#include <limits>
#include <thread>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops/conv.h"
#include "engine/ops/linear.h"
#include "engine/optim/clip.h"
#include "engine/optim/grad_scaler.h"
#include "engine/optim/sgd.h"
#include "test_util.h"
#include "tools/lib/trainer.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::random_tensor;

namespace {

// One f32 parameter with a plain SGD (lr 0.5, no momentum, no decay): p -= 0.5 * g.
struct OneParam {
  Tensor p = Tensor::from_vector({1.f, 2.f, 3.f, 4.f}, {4}).set_requires_grad();
  optim::SGD sgd{{optim::ParamGroup{{p}, 0.0, 1.0}}, optim::SGDOptions{0.5, 0.0, 0.0, 0.0, false}};

  void set_grad(std::vector<float> g) { p.set_grad(Tensor::from_vector(g, {4})); }
};

optim::GradScalerOptions interval(int64_t n) {
  optim::GradScalerOptions o;
  o.growth_interval = n;
  return o;
}

// A clean step: gradient `scale * g` comes back as g, the update runs.
void clean_step(optim::GradScaler& s, OneParam& m) {
  const float k = static_cast<float>(s.current_scale());
  m.set_grad({k, k, k, k});
  EXPECT_TRUE(s.step(m.sgd));
  s.update();
  m.sgd.zero_grad();
}

}  // namespace

TEST(GradScaler, DefaultsFollowTorch) {
  optim::GradScaler s;
  EXPECT_EQ(s.current_scale(), 65536.0);
  EXPECT_EQ(s.options().growth_factor, 2.0);
  EXPECT_EQ(s.options().backoff_factor, 0.5);
  EXPECT_EQ(s.options().growth_interval, 2000);
  EXPECT_EQ(s.growth_tracker(), 0);
}

TEST(GradScaler, ScaleMultipliesTheLossAndItsGradients) {
  optim::GradScaler s;
  Tensor w = Tensor::from_vector({0.5f, -1.f}, {2}).set_requires_grad();
  Tensor loss = sum(mul(w, w));
  Tensor scaled = s.scale(loss);
  EXPECT_DOUBLE_EQ(scaled.item(), 65536.0 * 1.25);
  scaled.backward();
  expect_close(w.grad(), Tensor::from_vector({65536.f, -131072.f}, {2}), 0.0, 0.0, "scaled gradient");
}

TEST(GradScaler, UnscalesBeforeTheUpdate) {
  optim::GradScaler s;
  OneParam m;
  m.set_grad({65536.f, 2 * 65536.f, -65536.f, 0.f});
  EXPECT_TRUE(s.unscale_(m.sgd));
  expect_close(m.p.grad(), Tensor::from_vector({1.f, 2.f, -1.f, 0.f}, {4}), 0.0, 0.0, "unscaled gradient");
  EXPECT_TRUE(s.step(m.sgd));  // no second unscale
  expect_close(m.p, Tensor::from_vector({0.5f, 1.f, 3.5f, 4.f}, {4}), 0.0, 0.0, "parameter after the step");
  s.update();
  EXPECT_EQ(s.growth_tracker(), 1);
  EXPECT_EQ(s.current_scale(), 65536.0);
}

TEST(GradScaler, GrowsAfterTheIntervalOfCleanSteps) {
  optim::GradScaler s(interval(3));
  OneParam m;
  clean_step(s, m);
  clean_step(s, m);
  EXPECT_EQ(s.growth_tracker(), 2);
  EXPECT_EQ(s.current_scale(), 65536.0);
  clean_step(s, m);
  EXPECT_EQ(s.growth_tracker(), 0);
  EXPECT_EQ(s.current_scale(), 131072.0);
  for (int i = 0; i < 3; ++i) clean_step(s, m);
  EXPECT_EQ(s.current_scale(), 262144.0);
  // Every step moved p by 0.5 * 1.
  expect_close(m.p, Tensor::from_vector({-2.f, -1.f, 0.f, 1.f}, {4}), 0.0, 0.0, "after six clean steps");
}

TEST(GradScaler, InfOrNanSkipsTheStepBacksOffAndResetsTheTracker) {
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    optim::GradScaler s(interval(3));
    OneParam m;
    clean_step(s, m);
    clean_step(s, m);
    const Tensor before = m.p.clone();
    m.set_grad({1.f, bad, 1.f, 1.f});
    EXPECT_FALSE(s.unscale_(m.sgd)) << bad;
    EXPECT_TRUE(s.found_inf());
    EXPECT_FALSE(s.step(m.sgd));
    s.update();
    expect_close(m.p, before, 0.0, 0.0, "a skipped step leaves the parameter");
    EXPECT_EQ(s.current_scale(), 32768.0);
    EXPECT_EQ(s.growth_tracker(), 0);
    EXPECT_FALSE(s.found_inf());  // cleared for the next step
    m.sgd.zero_grad();
    // Growth counts from the backoff again: two clean steps are not enough.
    clean_step(s, m);
    clean_step(s, m);
    EXPECT_EQ(s.current_scale(), 32768.0);
    clean_step(s, m);
    EXPECT_EQ(s.current_scale(), 65536.0);
  }
}

// Gradient norm 13 * 65536 scaled, 13 unscaled: clipping to 6.5 halves the true gradients.
TEST(GradScaler, UnscaleWithClipEqualsUnscaleThenClipGradNorm) {
  for (const double max_norm : {6.5, 1e9}) {
    optim::GradScaler one_pass, two_pass;
    OneParam a, b;
    const std::vector<float> g = {3 * 65536.f, 4 * 65536.f, 12 * 65536.f, 0.f};
    a.set_grad(g);
    b.set_grad(g);
    EXPECT_TRUE(one_pass.unscale_(a.sgd, max_norm));
    EXPECT_TRUE(two_pass.unscale_(b.sgd));
    EXPECT_DOUBLE_EQ(optim::clip_grad_norm_({b.p}, max_norm), 13.0);
    expect_close(a.p.grad(), b.p.grad(), 0.0, 0.0, "one pass against two");
    const float k = max_norm < 13 ? static_cast<float>(6.5 / (13.0 + 1e-6)) : 1.f;
    expect_close(a.p.grad(), Tensor::from_vector({3 * k, 4 * k, 12 * k, 0.f}, {4}), 1e-7, 0.0, "clipped");
  }
  // Random gradients over several tensors, a transposed one among them.
  Tensor p = Tensor::zeros({3, 2}).set_requires_grad(), q = Tensor::zeros({50}).set_requires_grad();
  Tensor p2 = Tensor::zeros({3, 2}).set_requires_grad(), q2 = Tensor::zeros({50}).set_requires_grad();
  optim::SGD sgd({optim::ParamGroup{{p, q}, 0.0, 1.0}}, optim::SGDOptions{});
  optim::SGD sgd2({optim::ParamGroup{{p2, q2}, 0.0, 1.0}}, optim::SGDOptions{});
  for (auto [x, y] : {std::pair{p, p2}, std::pair{q, q2}}) {
    const Tensor g = mul_scalar(random_tensor(x.shape(), x.numel(), DType::F32), 65536.0);
    x.set_grad(g.clone());
    y.set_grad(g.clone());
  }
  optim::GradScaler one_pass, two_pass;
  EXPECT_TRUE(one_pass.unscale_(sgd, 0.3));
  EXPECT_TRUE(two_pass.unscale_(sgd2));
  optim::clip_grad_norm_({p2, q2}, 0.3);
  expect_close(p.grad(), p2.grad(), 0.0, 0.0, "p");
  expect_close(q.grad(), q2.grad(), 0.0, 0.0, "q");
  EXPECT_NEAR(optim::grad_norm({p, q}), 0.3, 1e-6);
  optim::GradScaler s;
  EXPECT_THROW(s.unscale_(sgd, -1.0), ValueError);
}

TEST(GradScaler, OnlyParametersWithGradientsAreChecked) {
  optim::GradScaler s;
  Tensor a = Tensor::from_vector({1.f}, {1}).set_requires_grad();
  Tensor b = Tensor::from_vector({1.f, 1.f}, {2}).set_requires_grad();
  optim::SGD sgd({optim::ParamGroup{{a, b}, 0.0, 1.0}}, optim::SGDOptions{1.0, 0.0, 0.0, 0.0, false});
  b.set_grad(Tensor::from_vector({65536.f, 65536.f}, {2}));
  EXPECT_TRUE(s.step(sgd));
  expect_close(a, Tensor::from_vector({1.f}, {1}), 0.0, 0.0, "no gradient, no update");
  expect_close(b, Tensor::from_vector({0.f, 0.f}, {2}), 0.0, 0.0, "updated");
}

TEST(GradScaler, NonContiguousGradientsAreUnscaled) {
  optim::GradScaler s;
  Tensor p = Tensor::zeros({2, 3}).set_requires_grad();
  optim::SGD sgd({optim::ParamGroup{{p}, 0.0, 1.0}}, optim::SGDOptions{1.0, 0.0, 0.0, 0.0, false});
  p.set_grad(mul_scalar(random_tensor({3, 2}, 5, DType::F32), 65536.0).transpose(0, 1));
  const Tensor expected = mul_scalar(p.grad(), 1.0 / 65536.0).contiguous();
  EXPECT_TRUE(s.unscale_(sgd));
  expect_close(p.grad(), expected, 0.0, 0.0, "unscaled transposed gradient");
}

TEST(GradScaler, GrowthThatWouldOverflowKeepsTheScale) {
  optim::GradScalerOptions o = interval(1);
  o.init_scale = 1e308;
  optim::GradScaler s(o);
  OneParam m;
  m.set_grad({0.f, 0.f, 0.f, 0.f});
  EXPECT_TRUE(s.step(m.sgd));
  s.update();
  EXPECT_EQ(s.current_scale(), 1e308);
  EXPECT_EQ(s.growth_tracker(), 0);
}

TEST(GradScaler, MisuseIsAClearError) {
  optim::GradScaler s;
  OneParam m;
  EXPECT_THROW(s.update(), ValueError);  // nothing unscaled since the last update
  m.set_grad({1.f, 1.f, 1.f, 1.f});
  s.unscale_(m.sgd);
  EXPECT_THROW(s.unscale_(m.sgd), ValueError);
  s.update();
  optim::GradScalerOptions bad;
  bad.init_scale = 0.0;
  EXPECT_THROW(optim::GradScaler{bad}, ValueError);
  bad = {};
  bad.backoff_factor = 1.0;
  EXPECT_THROW(optim::GradScaler{bad}, ValueError);
  bad = {};
  bad.growth_factor = 1.0;
  EXPECT_THROW(optim::GradScaler{bad}, ValueError);
  bad = {};
  bad.growth_interval = 0;
  EXPECT_THROW(optim::GradScaler{bad}, ValueError);
}

TEST(GradScaler, StateRoundTripsThroughACheckpointAndResumesExactly) {
  optim::GradScaler s(interval(4));
  OneParam m;
  clean_step(s, m);
  m.set_grad({1.f, std::numeric_limits<float>::infinity(), 1.f, 1.f});
  s.step(m.sgd);
  s.update();
  m.sgd.zero_grad();
  clean_step(s, m);
  clean_step(s, m);
  ASSERT_EQ(s.current_scale(), 32768.0);
  ASSERT_EQ(s.growth_tracker(), 2);

  const std::string path = kestrel::testing::temp_path("scaler.safetensors");
  io::save_safetensors(path, s.state().to_named_tensors("__scaler__."));
  optim::GradScaler resumed(interval(4));
  resumed.load_state(optim::OptimizerState::from_named_tensors(io::load_safetensors(path).tensors, "__scaler__."));
  EXPECT_EQ(resumed.current_scale(), 32768.0);
  EXPECT_EQ(resumed.growth_tracker(), 2);
  // Both continue identically: the third and fourth clean steps grow the scale.
  OneParam m2;
  for (optim::GradScaler* x : {&s, &resumed}) {
    clean_step(*x, x == &s ? m : m2);
    EXPECT_EQ(x->current_scale(), 32768.0);
    clean_step(*x, x == &s ? m : m2);
    EXPECT_EQ(x->current_scale(), 65536.0);
    EXPECT_EQ(x->growth_tracker(), 0);
  }
}

TEST(GradScaler, LoadStateRefusesBrokenState) {
  optim::GradScaler s(interval(10));
  optim::OptimizerState st;
  EXPECT_THROW(s.load_state(st), ValueError);
  st.scalars["scale"] = 1024.0;
  EXPECT_THROW(s.load_state(st), ValueError);  // no tracker
  st.scalars["growth_tracker"] = 10.0;
  EXPECT_THROW(s.load_state(st), ValueError);  // tracker must be below the interval
  st.scalars["growth_tracker"] = 3.0;
  st.scalars["scale"] = std::numeric_limits<double>::infinity();
  EXPECT_THROW(s.load_state(st), ValueError);
  st.scalars["scale"] = 1024.0;
  s.load_state(st);
  EXPECT_EQ(s.current_scale(), 1024.0);
  EXPECT_EQ(s.growth_tracker(), 3);
}

TEST(Autocast, GuardSetsNestsAndRestoresTheThreadsDtype) {
  EXPECT_FALSE(autocast_enabled());
  EXPECT_EQ(autocast_dtype(), DType::F32);
  {
    AutocastGuard outer(DType::BF16);
    EXPECT_TRUE(autocast_enabled());
    EXPECT_EQ(autocast_dtype(), DType::BF16);
    {
      AutocastGuard off(DType::F32);
      EXPECT_FALSE(autocast_enabled());
      AutocastGuard inner(DType::F16);
      EXPECT_EQ(autocast_dtype(), DType::F16);
    }
    EXPECT_EQ(autocast_dtype(), DType::BF16);
    DType seen_by_other_thread = DType::I8;
    std::thread([&] { seen_by_other_thread = autocast_dtype(); }).join();
    EXPECT_EQ(seen_by_other_thread, DType::F32) << "the scope is per thread";
  }
  EXPECT_FALSE(autocast_enabled());
  EXPECT_THROW(AutocastGuard(DType::F64), ValueError);
  EXPECT_THROW(AutocastGuard(DType::I32), ValueError);
}

TEST(Autocast, LeavesCpuTensorsAlone) {
  Tensor x = random_tensor({2, 5, 5, 3}, 1, DType::F32).set_requires_grad();
  Tensor w = random_tensor({4, 3, 3, 3}, 2, DType::F32).set_requires_grad();
  const Tensor b = random_tensor({4}, 3, DType::F32);
  const Tensor lw = random_tensor({6, 3}, 4, DType::F32);
  const Tensor m = random_tensor({3, 7}, 5, DType::F32);
  const Tensor conv_ref = conv2d(x, w, b, Conv2dParams{});
  const Tensor linear_ref = linear(x, lw, Tensor());
  const Tensor matmul_ref = matmul(lw, m);
  for (DType d : {DType::F16, DType::BF16}) {
    AutocastGuard guard(d);
    EXPECT_EQ(autocast_operand(x).impl_ptr(), x.impl_ptr()) << "no cast of a CPU tensor";
    EXPECT_FALSE(autocast_operand(Tensor()).defined());
    const auto [l, r] = autocast_binary_operands(x, w);
    EXPECT_EQ(l.impl_ptr(), x.impl_ptr());
    EXPECT_EQ(r.impl_ptr(), w.impl_ptr());
    const Tensor y = conv2d(x, w, b, Conv2dParams{});
    EXPECT_EQ(y.dtype(), DType::F32);
    expect_close(y, conv_ref, 0.0, 0.0, "conv2d under autocast on the CPU");
    expect_close(linear(x, lw, Tensor()), linear_ref, 0.0, 0.0, "linear under autocast on the CPU");
    expect_close(matmul(lw, m), matmul_ref, 0.0, 0.0, "matmul under autocast on the CPU");
    sum(y).backward();
    EXPECT_EQ(w.grad().dtype(), DType::F32);
    w.zero_grad();
    x.zero_grad();
  }
}

// Backward closures call engine ops; a backward() started inside an autocast
// scope must run them with the scope off (and the scope comes back after).
TEST(Autocast, BackwardRunsWithTheScopeOff) {
  Tensor x = Tensor::from_vector({1.f, 2.f}, {2}).set_requires_grad();
  Tensor y = mul_scalar(x, 3.0);
  std::vector<DType> seen;
  record(y, "probe", {x}, [&seen](const Tensor& g, const std::vector<bool>&) {
    seen.push_back(autocast_dtype());
    return std::vector<Tensor>{mul_scalar(g, 3.0)};
  });
  {
    AutocastGuard guard(DType::F16);
    sum(y).backward();
    EXPECT_EQ(autocast_dtype(), DType::F16) << "the caller's scope is restored after backward";
  }
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], DType::F32) << "autocast was on inside a backward closure";
  expect_close(x.grad(), Tensor::from_vector({3.f, 3.f}, {2}), 0.0, 0.0, "gradient through the probe");
}

TEST(Autocast, TrainWithAmpOnTheCpuIsAClearError) {
  for (const char* amp : {"fp16", "bf16"}) {
    tools::TrainConfig c;
    c.amp = amp;
    c.device = "cpu";
    c.out = kestrel::testing::temp_path(std::string("amp_cpu_") + amp);
    c.overwrite = true;
    try {
      tools::train(c);
      FAIL() << "expected ValueError for --amp " << amp << " on the CPU";
    } catch (const ValueError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("needs a CUDA device"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string("--amp ") + amp), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    }
    EXPECT_FALSE(std::filesystem::exists(c.out + "/config.json")) << "refused before the run folder is touched";
  }
}
