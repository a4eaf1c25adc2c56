// Training on CUDA against the CPU: SGD, AdamW, RMSprop, clip_grad_norm_ and ModelEma
// on the same gradients; a few training steps of a small CNN; `train` runs on
// the device, their checkpoints on the CPU, pinned batch uploads. Every test
// skips without a usable CUDA device.
//
// Tolerances: optimizer, clipping and EMA state agree within 1e-6 relative
// with a 1e-6 absolute floor (expect_close(atol 1e-6, rtol 1e-6)); the fused
// kernels round a few operations differently (fused multiply-adds, bias
// corrections in f32). Losses of whole training steps within 1e-3 relative
// (convolutions and reductions sum in another order).

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>

#include "cuda_parity.h"
#include "data/loader.h"
#include "data/pinned_batch.h"
#include "engine/random.h"
#include "engine/nn/layers.h"
#include "engine/ops/loss.h"
#include "engine/optim/adamw.h"
#include "engine/optim/rmsprop.h"
#include "engine/optim/clip.h"
#include "engine/optim/ema.h"
#include "engine/optim/grad_scaler.h"
#include "engine/optim/sgd.h"
#include "models/registry.h"
#include "test_util.h"
#include "train_run_util.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/datasets.h"
#include "tools/lib/precise_bn.h"
#include "tools/lib/predictor.h"
#include "tools/lib/trainer.h"

#if defined(KESTREL_CUDA_EMULATOR)
#include "tests/emu/cuda_emu.h"
#endif

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::random_tensor;
using kestrel::testing::temp_path;
namespace fs = std::filesystem;

namespace {

const Device kCuda = Device::cuda(0);

void expect_state_close(const Tensor& actual, const Tensor& expected, const std::string& what, double tol = 1e-6) {
  expect_close(actual.cpu(), expected.cpu(), tol, tol, what);
}

// Odd sizes, a tensor over several kernel chunks, and more tensors than one
// multi-tensor launch holds.
std::vector<Shape> param_shapes() {
  std::vector<Shape> s = {{1}, {7}, {33}, {3, 3, 5, 7}, {70001}, {16, 9}};
  for (int i = 0; i < 40; ++i) s.push_back({5 + i % 3});
  return s;
}

std::vector<Tensor> make_params(uint64_t seed) {
  std::vector<Tensor> out;
  const std::vector<Shape> shapes = param_shapes();
  for (size_t i = 0; i < shapes.size(); ++i) out.push_back(random_tensor(shapes[i], seed + i, DType::F32));
  return out;
}

std::vector<Tensor> to_cuda(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.detach().to(kCuda));
  return out;
}

// Two groups: the first with no weight decay and half the learning rate.
std::vector<optim::ParamGroup> two_groups(const std::vector<Tensor>& params) {
  optim::ParamGroup a, b;
  a.weight_decay = 0.0;
  a.lr_scale = 0.5;
  for (size_t i = 0; i < params.size(); ++i) (i % 2 == 0 ? a : b).params.push_back(params[i]);
  return {a, b};
}

using MakeOptimizer = std::function<std::unique_ptr<optim::Optimizer>(const std::vector<Tensor>&)>;

// Steps a CPU and a CUDA optimizer on the same gradients; parameter 3 gets
// its first gradient only at step 2, so first steps and later steps share a step() call.
// tol: absolute and relative, on parameters and state.
void expect_optimizer_parity(const MakeOptimizer& make, DType grad_dtype, const std::string& what,
                             double tol = 1e-6) {
  std::vector<Tensor> cpu = make_params(11), gpu = to_cuda(cpu);
  auto opt_cpu = make(cpu), opt_gpu = make(gpu);
  for (int step = 0; step < 5; ++step) {
    for (size_t i = 0; i < cpu.size(); ++i) {
      if (i == 3 && step < 2) continue;
      const Tensor g = random_tensor(cpu[i].shape(), 1000 * static_cast<uint64_t>(step) + i, DType::F32).to(grad_dtype);
      cpu[i].set_grad(g);
      gpu[i].set_grad(g.to(kCuda));
    }
    opt_cpu->set_lr(opt_cpu->lr() * 0.9);
    opt_gpu->set_lr(opt_gpu->lr() * 0.9);
    opt_cpu->step();
    opt_gpu->step();
    opt_cpu->zero_grad();
    opt_gpu->zero_grad();
  }
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_TRUE(gpu[i].device().is_cuda());
    expect_state_close(gpu[i], cpu[i], what + " parameter " + std::to_string(i), tol);
  }
  const optim::OptimizerState sc = opt_cpu->state(), sg = opt_gpu->state();
  ASSERT_EQ(sc.tensors.size(), sg.tensors.size()) << what;
  for (const auto& [name, t] : sc.tensors) {
    ASSERT_TRUE(sg.tensors.count(name)) << what << " " << name;
    EXPECT_TRUE(sg.tensors.at(name).device().is_cpu()) << "state() hands out host copies: " << name;
    expect_state_close(sg.tensors.at(name), t, what + " state " + name, tol);
  }
  EXPECT_EQ(sc.scalars, sg.scalars) << what;
}

}  // namespace

TEST(CudaTrain, SgdMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  struct Case {
    double momentum, dampening, weight_decay;
    bool nesterov;
  };
  for (const Case& k : {Case{0.0, 0.0, 0.0, false}, Case{0.0, 0.0, 1e-2, false}, Case{0.9, 0.0, 5e-4, false},
                        Case{0.9, 0.1, 5e-4, false}, Case{0.9, 0.0, 5e-4, true}}) {
    const std::string what = "SGD momentum " + std::to_string(k.momentum) + " dampening " +
                             std::to_string(k.dampening) + (k.nesterov ? " nesterov" : "");
    expect_optimizer_parity(
        [&](const std::vector<Tensor>& p) {
          optim::SGDOptions o;
          o.lr = 0.1;
          o.momentum = k.momentum;
          o.dampening = k.dampening;
          o.weight_decay = k.weight_decay;
          o.nesterov = k.nesterov;
          return std::make_unique<optim::SGD>(two_groups(p), o);
        },
        DType::F32, what);
  }
}

TEST(CudaTrain, AdamWMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  for (double wd : {0.0, 1e-2}) {
    expect_optimizer_parity(
        [&](const std::vector<Tensor>& p) {
          optim::AdamWOptions o;
          o.lr = 1e-2;
          o.weight_decay = wd;
          return std::make_unique<optim::AdamW>(two_groups(p), o);
        },
        DType::F32, "AdamW wd " + std::to_string(wd));
  }
}

// Each step adds g / sqrt(v), about 3 at alpha 0.9 (10 at 0.99), into a
// momentum buffer whose sum may cancel to near 0: a float ulp of each term
// (2.4e-7 at 3) adds up over the five steps, hence 4e-6.
TEST(CudaTrain, RMSpropMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  for (double momentum : {0.0, 0.9}) {
    expect_optimizer_parity(
        [&](const std::vector<Tensor>& p) {
          optim::RMSpropOptions o;
          o.lr = 1e-2;
          o.alpha = 0.9;
          o.momentum = momentum;
          o.weight_decay = 1e-3;
          return std::make_unique<optim::RMSprop>(two_groups(p), o);
        },
        DType::F32, "RMSprop momentum " + std::to_string(momentum), 4e-6);
  }
  expect_optimizer_parity(
      [](const std::vector<Tensor>& p) {
        return std::make_unique<optim::RMSprop>(two_groups(p), optim::RMSpropOptions{});
      },
      DType::BF16, "RMSprop with bf16 gradients", 4e-6);
}

TEST(CudaTrain, HalfPrecisionGradientsUpdateF32Parameters) {
  KESTREL_REQUIRE_CUDA();
  // The CPU widens f16/bf16 gradients to f32 first; the CUDA kernels read them as they are.
  for (DType gd : {DType::F16, DType::BF16}) {
    expect_optimizer_parity(
        [](const std::vector<Tensor>& p) {
          optim::SGDOptions o;
          o.momentum = 0.9;
          o.nesterov = true;
          o.weight_decay = 5e-4;
          return std::make_unique<optim::SGD>(two_groups(p), o);
        },
        gd, std::string("SGD with ") + dtype_name(gd) + " gradients");
    expect_optimizer_parity(
        [](const std::vector<Tensor>& p) { return std::make_unique<optim::AdamW>(two_groups(p), optim::AdamWOptions{}); },
        gd, std::string("AdamW with ") + dtype_name(gd) + " gradients");
  }
}

TEST(CudaTrain, OptimizerStateMovesBetweenCpuAndCuda) {
  KESTREL_REQUIRE_CUDA();
  // Three steps on CUDA, state saved (host copies) and loaded into a CPU
  // optimizer; both continue on the same gradients and stay together.
  std::vector<Tensor> gpu = to_cuda(make_params(5));
  optim::AdamW opt_gpu(gpu, optim::AdamWOptions{});
  auto set_grads = [&](std::vector<Tensor>& ps, int step) {
    for (size_t i = 0; i < ps.size(); ++i)
      ps[i].set_grad(random_tensor(ps[i].shape(), 77 * static_cast<uint64_t>(step) + i, DType::F32).to(ps[i].device()));
  };
  for (int step = 0; step < 3; ++step) {
    set_grads(gpu, step);
    opt_gpu.step();
    opt_gpu.zero_grad();
  }
  std::vector<Tensor> cpu;
  for (const Tensor& p : gpu) cpu.push_back(p.cpu());
  optim::AdamW opt_cpu(cpu, optim::AdamWOptions{});
  opt_cpu.load_state(opt_gpu.state());
  // And back: a second CUDA optimizer from the CPU one's state.
  std::vector<Tensor> gpu2 = to_cuda(cpu);
  optim::AdamW opt_gpu2(gpu2, optim::AdamWOptions{});
  opt_gpu2.load_state(opt_cpu.state());
  for (int step = 3; step < 5; ++step) {
    set_grads(gpu, step);
    set_grads(cpu, step);
    set_grads(gpu2, step);
    opt_gpu.step();
    opt_cpu.step();
    opt_gpu2.step();
  }
  for (size_t i = 0; i < cpu.size(); ++i) {
    expect_state_close(gpu[i], cpu[i], "resumed on CPU, parameter " + std::to_string(i));
    expect_state_close(gpu2[i], gpu[i], "resumed on CUDA, parameter " + std::to_string(i));
  }
}

TEST(CudaTrain, ClipGradNormMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  std::vector<Tensor> cpu = make_params(3), gpu = to_cuda(cpu);
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (i == 2) continue;  // no gradient: skipped by both
    const Tensor g = random_tensor(cpu[i].shape(), 500 + i, DType::F32);
    cpu[i].set_grad(g.clone());
    gpu[i].set_grad(g.to(kCuda));
  }
  EXPECT_NEAR(optim::grad_norm(gpu), optim::grad_norm(cpu), 1e-9 * optim::grad_norm(cpu));
  // Large max_norm: nothing changes.
  const double n0 = optim::clip_grad_norm_(cpu, 1e9), n1 = optim::clip_grad_norm_(gpu, 1e9);
  EXPECT_NEAR(n1, n0, 1e-9 * n0);
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (!cpu[i].grad().defined()) continue;
    EXPECT_EQ(gpu[i].grad().to_vector(), cpu[i].grad().to_vector()) << i;
  }
  // Small max_norm: every gradient scaled on the device.
  const double c0 = optim::clip_grad_norm_(cpu, 0.5), c1 = optim::clip_grad_norm_(gpu, 0.5);
  EXPECT_NEAR(c1, c0, 1e-9 * c0);
  for (size_t i = 0; i < cpu.size(); ++i)
    if (cpu[i].grad().defined()) expect_state_close(gpu[i].grad(), cpu[i].grad(), "clipped grad " + std::to_string(i));
  EXPECT_NEAR(optim::grad_norm(gpu), 0.5, 1e-5);
  // bf16 gradients are reduced in f64 too.
  std::vector<Tensor> half;
  double expected = 0.0;
  for (size_t i = 0; i < 4; ++i) {
    Tensor p = Tensor::zeros(cpu[i].shape(), DType::F32, kCuda);
    const Tensor g = random_tensor(cpu[i].shape(), 900 + i, DType::F32).to(DType::BF16);
    for (float v : g.to_vector()) expected += static_cast<double>(v) * v;
    p.set_grad(g.to(kCuda));
    half.push_back(p);
  }
  EXPECT_NEAR(optim::grad_norm(half), std::sqrt(expected), 1e-9 * std::sqrt(expected));
}

namespace {

// Equal bit patterns (so NaN equals NaN), element by element.
void expect_same_bits(const Tensor& actual, const Tensor& expected, const std::string& what) {
  const std::vector<float> a = actual.to(DType::F32).to_vector(), e = expected.to(DType::F32).to_vector();
  ASSERT_EQ(a.size(), e.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_EQ(std::memcmp(&a[i], &e[i], sizeof(float)), 0) << what << " element " << i << ": " << a[i] << " vs " << e[i];
}

// The emulator counts the host's waits for the device; on a GPU only the results are compared.
#if defined(KESTREL_CUDA_EMULATOR)
constexpr bool kCountsHostWaits = true;
int64_t host_waits() { return emu::host_waits(); }
#else
constexpr bool kCountsHostWaits = false;
int64_t host_waits() { return 0; }
#endif

// Gradients for params: f32 mostly, bf16 and f16 for two, none for index 2.
void set_mixed_grads(std::vector<Tensor>& params, uint64_t seed) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (i == 2) continue;
    const DType dt = i == 4 ? DType::BF16 : i == 5 ? DType::F16 : DType::F32;
    params[i].set_grad(random_tensor(params[i].shape(), seed + i, DType::F32).to(dt).to(params[i].device()));
  }
}

}  // namespace

TEST(CudaTrain, ClippingWithoutAHostWaitEqualsClipGradNormBitForBit) {
  KESTREL_REQUIRE_CUDA();
  for (const double max_norm : {1e9, 0.5, 0.0}) {
    const std::string what = "max_norm " + std::to_string(max_norm);
    std::vector<Tensor> waits = to_cuda(make_params(3)), queued = to_cuda(make_params(3));
    set_mixed_grads(waits, 700);
    set_mixed_grads(queued, 700);
    const int64_t before_sync = host_waits();
    const double expected = optim::clip_grad_norm_(waits, max_norm);
    const int64_t before_queued = host_waits();
    const Tensor norm = optim::clip_grad_norm_no_sync_(queued, max_norm);
    if (kCountsHostWaits) {
      EXPECT_GT(before_queued, before_sync) << "clip_grad_norm_ reads its norm back (the counter must see it)";
      EXPECT_EQ(host_waits(), before_queued) << what << ": the device-side clip waited for the device";
    }
    ASSERT_TRUE(norm.device().is_cuda()) << what;
    EXPECT_EQ(norm.dtype(), DType::F64);
    EXPECT_EQ(norm.item(), expected) << what;
    EXPECT_FALSE(queued[2].grad().defined());
    for (size_t i = 0; i < waits.size(); ++i)
      if (i != 2) expect_same_bits(queued[i].grad(), waits[i].grad(), what + " gradient " + std::to_string(i));
  }
  // An inf gradient: torch scales every gradient by max_norm / inf = 0 (the inf itself becomes NaN).
  std::vector<Tensor> waits = to_cuda(make_params(5)), queued = to_cuda(make_params(5));
  set_mixed_grads(waits, 800);
  set_mixed_grads(queued, 800);
  const Tensor inf = Tensor::full({7}, std::numeric_limits<double>::infinity(), DType::F32, kCuda);
  waits[1].set_grad(inf.clone());
  queued[1].set_grad(inf.clone());
  EXPECT_TRUE(std::isinf(optim::clip_grad_norm_(waits, 1.0)));
  EXPECT_TRUE(std::isinf(optim::clip_grad_norm_no_sync_(queued, 1.0).item()));
  for (size_t i = 0; i < waits.size(); ++i)
    if (i != 2) expect_same_bits(queued[i].grad(), waits[i].grad(), "inf case, gradient " + std::to_string(i));
  EXPECT_TRUE(std::isnan(queued[1].grad().to_vector()[0]));
  EXPECT_EQ(queued[0].grad().to_vector()[0], 0.f);
  EXPECT_THROW(optim::clip_grad_norm_no_sync_(queued, -1.0), ValueError);
}

TEST(CudaTrain, ScalerUnscaleWithClipIsUnscaleThenClipInOneHostWait) {
  KESTREL_REQUIRE_CUDA();
  for (const double max_norm : {1e9, 0.5}) {
    const std::string what = "max_norm " + std::to_string(max_norm);
    std::vector<Tensor> two_pass = to_cuda(make_params(9)), one_pass = to_cuda(make_params(9));
    optim::SGD opt_two(two_pass, optim::SGDOptions{}), opt_one(one_pass, optim::SGDOptions{});
    optim::GradScaler scaler_two, scaler_one;
    for (std::vector<Tensor>* ps : {&two_pass, &one_pass}) {
      set_mixed_grads(*ps, 900);
      for (Tensor& p : *ps)
        if (p.grad().defined()) p.set_grad(mul_scalar(p.grad(), scaler_one.current_scale()));  // as scale(loss) does
    }
    const int64_t w0 = host_waits();
    ASSERT_TRUE(scaler_two.unscale_(opt_two));
    const int64_t w1 = host_waits();
    optim::clip_grad_norm_(two_pass, max_norm);
    const int64_t w2 = host_waits();
    ASSERT_TRUE(scaler_one.unscale_(opt_one, max_norm));
    const int64_t w3 = host_waits();
    if (kCountsHostWaits) {
      EXPECT_GT(w1, w0);
      EXPECT_GT(w2, w1) << "clip_grad_norm_ waits a second time";
      EXPECT_EQ(w3 - w2, w1 - w0) << what << ": clipping inside unscale_ must not add a host wait";
    }
    for (size_t i = 0; i < two_pass.size(); ++i)
      if (i != 2) expect_same_bits(one_pass[i].grad(), two_pass[i].grad(), what + " gradient " + std::to_string(i));
  }
}

namespace {

nn::ModulePtr small_cnn(int64_t classes) {
  models::ModelOptions o;
  o.num_classes = classes;
  o.in_channels = 3;
  o.cifar_stem = true;
  o.dropout = 0.0;
  o.drop_path = 0.0;
  manual_seed(1234);
  return models::build_model("cifar10_200k", o);
}

// New values for every parameter and floating buffer, the same on both models.
void perturb(nn::Module& a, nn::Module& b, uint64_t seed) {
  NoGradGuard guard;
  nn::NamedTensors ta = a.named_parameters(), tb = b.named_parameters();
  for (auto& nt : a.named_buffers()) ta.push_back(nt);
  for (auto& nt : b.named_buffers()) tb.push_back(nt);
  for (size_t i = 0; i < ta.size(); ++i) {
    Tensor& x = ta[i].second;
    Tensor v = is_floating(x.dtype()) ? random_tensor(x.shape(), seed + i, DType::F32).to(x.dtype())
                                      : Tensor::full(x.shape(), static_cast<double>(seed % 97), x.dtype());
    x.copy_(v);
    tb[i].second.copy_(v.to(tb[i].second.device()));
  }
}

}  // namespace

TEST(CudaTrain, ModelEmaMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  nn::ModulePtr a = small_cnn(4), b = small_cnn(4);
  b->to(kCuda);
  optim::EmaOptions eo;
  eo.decay = 0.9;
  eo.warmup = true;
  optim::ModelEma ea(*a, eo), eb(*b, eo);
  for (uint64_t step = 0; step < 4; ++step) {
    perturb(*a, *b, 100 * step);
    ea.update(*a);
    eb.update(*b);
  }
  ASSERT_EQ(ea.tensors().size(), eb.tensors().size());
  for (size_t i = 0; i < ea.tensors().size(); ++i) {
    EXPECT_TRUE(eb.tensors()[i].second.device().is_cuda()) << "the EMA lives on the model's device";
    expect_state_close(eb.tensors()[i].second, ea.tensors()[i].second, "EMA " + ea.tensors()[i].first);
  }
  // State through the host into a CPU EMA; swap and copy on the device.
  optim::ModelEma ec(*a, eo);
  ec.load_state(eb.state());
  for (size_t i = 0; i < ea.tensors().size(); ++i)
    expect_state_close(ec.tensors()[i].second, ea.tensors()[i].second, "EMA loaded on CPU " + ea.tensors()[i].first);
  ea.swap_with(*a);
  eb.swap_with(*b);
  const nn::NamedTensors sa = a->state_dict(), sb = b->state_dict();
  for (size_t i = 0; i < sa.size(); ++i) expect_state_close(sb[i].second, sa[i].second, "swapped " + sa[i].first);
}

TEST(CudaTrain, TrainingStepsOfASmallCnnMatchCpuLosses) {
  KESTREL_REQUIRE_CUDA();
  constexpr int64_t kClasses = 4;
  nn::ModulePtr a = small_cnn(kClasses), b = small_cnn(kClasses);
  b->to(kCuda);
  a->train();
  b->train();
  auto make_opt = [](nn::Module& m) {
    optim::SGDOptions o;
    o.lr = 0.05;
    o.momentum = 0.9;
    o.nesterov = true;
    o.weight_decay = 5e-4;
    return std::make_unique<optim::SGD>(optim::decay_groups(m.named_parameters(), 5e-4), o);
  };
  auto oa = make_opt(*a), ob = make_opt(*b);
  optim::ModelEma ea(*a, optim::EmaOptions{0.9, true}), eb(*b, optim::EmaOptions{0.9, true});
  const std::vector<Tensor> pa = a->parameters(), pb = b->parameters();
  for (int step = 0; step < 5; ++step) {
    // Gaussian inputs: with uniform ones this net at init is ill-conditioned
    // (the CUDA emulator showed the CPU's own gradients move 0.4% when the
    // stem output moves by 1e-6, as summation order does).
    Generator gen(40 + step);
    const Tensor x = Tensor::randn({8, 16, 16, 3}, gen);
    std::vector<int64_t> y(8);
    for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<int64_t>((i + step) % kClasses);
    const Tensor labels = Tensor::from_vector_i64(y, {8});
    Tensor la = cross_entropy((*a)(x), labels, 0.1);
    Tensor lb = cross_entropy((*b)(x.to(kCuda)), labels.to(kCuda), 0.1);
    const double va = la.item(), vb = lb.item();
    EXPECT_NEAR(vb, va, 1e-3 * std::abs(va)) << "step " << step;
    la.backward();
    lb.backward();
    EXPECT_NEAR(optim::clip_grad_norm_(pb, 2.0), optim::clip_grad_norm_(pa, 2.0), 1e-3 * optim::grad_norm(pa))
        << "step " << step;
    oa->step();
    ob->step();
    oa->zero_grad();
    ob->zero_grad();
    ea.update(*a);
    eb.update(*b);
  }
  const nn::NamedTensors sa = a->state_dict(), sb = b->state_dict();
  for (size_t i = 0; i < sa.size(); ++i)
    expect_close(sb[i].second.cpu(), sa[i].second, 1e-3, 1e-3, "after 5 steps: " + sa[i].first);
}

TEST(CudaTrain, PinnedBatchesUploadAsynchronouslyAndMatch) {
  KESTREL_REQUIRE_CUDA();
  class Synthetic : public data::Dataset {
   public:
    Synthetic() { classes_ = {"a", "b", "c"}; }
    int64_t size() const override { return 37; }
    data::Example get(int64_t i) const override {
      data::Example e;
      e.image.h = 5;
      e.image.w = 6;
      e.image.c = 3;
      e.image.pixels.resize(5 * 6 * 3);
      for (size_t k = 0; k < e.image.pixels.size(); ++k)
        e.image.pixels[k] = static_cast<uint8_t>((static_cast<size_t>(i) * 31 + k) % 251);
      e.label = i % 3;
      return e;
    }
  };
  auto ds = std::make_shared<Synthetic>();
  data::LoaderOptions lo;
  lo.batch_size = 8;
  lo.num_workers = 2;
  data::LoaderOptions pinned_lo = lo;
  pinned_lo.pin_memory = true;
  data::DataLoader plain(ds, lo, {}, data::mixup(1.0, 3)), pinned(ds, pinned_lo, {}, data::mixup(1.0, 3));
  plain.start_epoch(1);
  pinned.start_epoch(1);
  data::Batch p, q;
  int batches = 0;
  while (plain.next(p)) {
    ASSERT_TRUE(pinned.next(q));
    EXPECT_EQ(p.pinned, nullptr);
    ASSERT_NE(q.pinned, nullptr);
    const data::DeviceBatch d = data::copy_batch_to_device(q, kCuda);
    ASSERT_TRUE(d.images.device().is_cuda());
    EXPECT_EQ(d.images.to_vector(), p.images.to_vector());
    EXPECT_EQ(d.labels.to_vector_i64(), p.labels.to_vector_i64());
    ASSERT_TRUE(d.targets.defined());
    EXPECT_EQ(d.targets.to_vector(), p.targets.to_vector());
    ++batches;
  }
  EXPECT_EQ(batches, 5);
}

namespace {

tools::TrainConfig folder_config(const std::string& data, const std::string& out, const std::string& device) {
  tools::TrainConfig c = kestrel::testing::pattern_folder_config(data, out, device);
  c.warmup_epochs = 0.5;
  c.ema = 0.9;
  return c;
}

}  // namespace

TEST(CudaTrain, TrainRunOnCudaMatchesCpuAndItsCheckpointsLoadOnCpu) {
  KESTREL_REQUIRE_CUDA();
  const std::string data = kestrel::testing::write_pattern_folder_dataset("cuda_train_data");
  const tools::TrainConfig on_cpu = folder_config(data, "cuda_train_cpu", "cpu");
  const tools::TrainConfig on_cuda = folder_config(data, "cuda_train_cuda", "cuda");
  ASSERT_TRUE(tools::train(on_cpu).completed);
  ASSERT_TRUE(tools::train(on_cuda).completed);
  const auto rc = kestrel::testing::read_metrics_jsonl(on_cpu.out);
  const auto rg = kestrel::testing::read_metrics_jsonl(on_cuda.out);
  ASSERT_EQ(rc.size(), 2u);
  ASSERT_EQ(rg.size(), 2u);
  for (size_t e = 0; e < rc.size(); ++e)
    for (const char* key : {"train_loss", "val_loss", "val_loss_plain"}) {  // EMA weights, then the plain ones
      // SGD amplifies summation-order differences (1e-6 per op, checked op by
      // op elsewhere): the CUDA emulator measured 0.4% after one epoch and 6%
      // after two. The first epoch is held to 1.5%; the second to 10%.
      const double allowed = (e == 0 ? 0.015 : 0.1) * std::abs(rc[e][key].get<double>());
      EXPECT_NEAR(rg[e][key].get<double>(), rc[e][key].get<double>(), allowed) << key << " epoch " << e + 1;
    }

  // The CUDA run's checkpoint on the CPU, and on CUDA through the Predictor: same probabilities.
  const std::string ckpt = on_cuda.out + "/last.safetensors";
  tools::LoadedModel loaded = tools::load_checkpoint(ckpt);
  const Tensor x = random_tensor({3, 12, 12, 3}, 9, DType::F32);
  Tensor host_logits;
  {
    NoGradGuard g;
    host_logits = (*loaded.model)(x);
  }
  tools::Predictor on_device(ckpt, kCuda);
  EXPECT_TRUE(on_device.device().is_cuda());
  Tensor device_logits;
  {
    NoGradGuard g;
    device_logits = on_device.model()(x.to(kCuda));
  }
  expect_close(device_logits.cpu(), host_logits, 1e-4, 1e-4, "checkpoint logits, CUDA vs CPU");

  // Killed on CUDA, resumed on the CPU: completes and lands near the uninterrupted CUDA run.
  const std::string resumed = kestrel::testing::kill_then_resume(on_cuda, "cuda_train_killed", 8, "cpu");
  kestrel::testing::expect_checkpoints_match(on_cuda.out + "/last.safetensors", resumed + "/last.safetensors", 1e-3,
                                             1e-3, "resumed on CPU");
}

// --precise-bn on CUDA: every norm of a model with depthwise layers (which an
// eval-mode parent would fold on CUDA, never calling its norm) gets the CPU's
// recomputed statistics.
TEST(CudaTrain, PreciseBatchNormStatisticsMatchCpu) {
  KESTREL_REQUIRE_CUDA();
  const std::string data = kestrel::testing::write_pattern_folder_dataset("cuda_precise_bn_data");
  auto train_set = tools::open_dataset("folder", data, data::Split::Train, false, 0);
  models::ModelOptions o;
  o.num_classes = train_set->num_classes();
  o.cifar_stem = true;
  o.dropout = 0.0;
  nn::ModulePtr on_cpu = models::build_model("mobilenet_v2", o);
  nn::ModulePtr on_cuda = models::build_model("mobilenet_v2", o);
  on_cuda->load_state_dict(on_cpu->state_dict());
  on_cuda->to(kCuda);
  on_cpu->eval();
  on_cuda->eval();
  data::LoaderOptions lo;
  lo.batch_size = 6;
  lo.num_workers = 1;
  lo.drop_last = true;
  data::DataLoader cpu_loader(train_set, lo), cuda_loader(train_set, lo);
  EXPECT_EQ(tools::recompute_batch_norm_statistics(*on_cpu, cpu_loader, 1, 3), 3);
  EXPECT_EQ(tools::recompute_batch_norm_statistics(*on_cuda, cuda_loader, 1, 3), 3);
  EXPECT_FALSE(on_cuda->is_training());
  const nn::NamedTensors host = on_cpu->state_dict(), device = on_cuda->state_dict();
  ASSERT_EQ(host.size(), device.size());
  int statistics = 0;
  for (size_t i = 0; i < host.size(); ++i) {
    const std::string& name = host[i].first;
    if (name.find("running_") == std::string::npos) continue;
    ++statistics;
    expect_close(device[i].second.cpu(), host[i].second, 1e-4, 1e-3, name);
    const double fresh = name.find("running_mean") != std::string::npos ? 0.0 : 1.0;
    bool moved = false;
    for (double v : host[i].second.to_vector_f64()) moved |= v != fresh;
    EXPECT_TRUE(moved) << name << " kept its initial value";
  }
  EXPECT_GT(statistics, 40);
}

TEST(CudaTrain, ResidentLoaderRunOnCudaEqualsTheThreadedRun) {
  KESTREL_REQUIRE_CUDA();
  const std::string data = kestrel::testing::write_pattern_folder_dataset("cuda_resident_data");
  tools::TrainConfig threads = folder_config(data, "cuda_loader_threads", "cuda");
  threads.cutmix = 0.5;
  threads.cutout = 0.5;
  threads.loader = "threads";
  tools::TrainConfig resident = threads;
  resident.loader = "resident";
  resident.out = kestrel::testing::temp_path("cuda_loader_resident");
  ASSERT_TRUE(tools::train(threads).completed);
  ASSERT_TRUE(tools::train(resident).completed);
  // The same batches reach the same kernels: only nondeterministic kernels could part them.
  kestrel::testing::expect_checkpoints_match(threads.out + "/last.safetensors", resident.out + "/last.safetensors",
                                             1e-6, 1e-5, "resident vs threaded loader on CUDA");
}

TEST(CudaTrain, ADivergedLossIsNamedThoughLossesAreReadInGroups) {
  KESTREL_REQUIRE_CUDA();
  const std::string data = kestrel::testing::write_pattern_folder_dataset("cuda_diverge_data");
  kestrel::testing::expect_run_diverges(folder_config(data, "cuda_diverge_run", "cuda"));
}
