// The fused block ops (engine/ops/attention.h, engine/ops/ghost.h) and the
// models that use them.
// CPU (runs everywhere): each op's CPU path is exactly the composition it
// replaces, forward and gradients, and the BN folding the models do for the
// fused CUDA path (eval mode) matches the modules' composed eval forward.
// CUDA (skips without a device): the fused kernels against the CPU
// composition at EMN / GhostNet / MobileNetV3 shapes and odd ones, f32, f16
// and bf16, outputs and the gradients of every input; then the eval-mode
// modules and whole models, CUDA against CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cuda_parity.h"
#include "engine/trace.h"
#include "engine/autograd.h"
#include "engine/gpu/attention.h"
#include "engine/ops/attention.h"
#include "engine/ops/conv.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/ghost.h"
#include "engine/ops/ghost_norms.h"
#include "engine/ops/pool.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape_ops.h"
#include "models/emn.h"
#include "models/ghostnet.h"
#include "models/registry.h"
#include "test_util.h"

namespace kestrel::testing {
namespace {

using MultiOp = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor param(const Shape& shape, uint64_t seed, DType dtype = DType::F32, double scale = 1.0) {
  Tensor t = random_tensor(shape, seed, DType::F32);
  if (scale != 1.0) t = mul_scalar(t, scale);
  if (dtype == DType::F16 || dtype == DType::BF16) t = t.to(dtype).to(DType::F32);  // exact in dtype
  t = t.detach();
  t.set_requires_grad(true);
  return t;
}

// Output and gradients of every input (sum(out * w) with fixed random w).
struct OpRun {
  Tensor out;
  std::vector<Tensor> grads;
};

OpRun run_with_grads(const MultiOp& op, const std::vector<Tensor>& inputs) {
  for (Tensor t : inputs)  // handles share the tensor: clears the caller's gradient
    if (t.defined()) t.zero_grad();
  OpRun r;
  r.out = op(inputs);
  const Tensor w = random_tensor(r.out.shape(), 99, r.out.dtype());
  sum(mul(r.out, w)).backward();
  for (const Tensor& t : inputs) r.grads.push_back(t.defined() ? t.grad() : Tensor());
  return r;
}

// input_grad_atol: the tolerance of gradient 0 (the input's), when it is a
// sum of the same terms in another order; -1: atol.
void expect_same_run(const OpRun& a, const OpRun& b, double atol, const std::string& what,
                     double input_grad_atol = -1) {
  expect_close(a.out, b.out, atol, atol, what + " output");
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].defined(), b.grads[i].defined()) << what << " gradient " << i;
    const double tol = i == 0 && input_grad_atol >= 0 ? input_grad_atol : atol;
    if (a.grads[i].defined()) expect_close(a.grads[i], b.grads[i], tol, tol, what + " gradient " + std::to_string(i));
  }
}

Tensor conv1x1(const Tensor& x, const Tensor& w, const Tensor& b) { return conv2d(x, w, b, {}); }

// ---------------------------------------------------------------- reference compositions

Tensor se_reference(const std::vector<Tensor>& in, Activation act, Activation gate) {
  Tensor s = global_avg_pool(in[0]);
  s = activation(conv1x1(s, in[1], in[2]), act);
  s = activation(conv1x1(s, in[3], in[4]), gate);
  return mul(in[0], s);
}

Tensor ca_reference(const std::vector<Tensor>& in, Activation act) {
  const Tensor& x = in[0];
  const int64_t h = x.size(1), w = x.size(2);
  Tensor along_h = adaptive_avg_pool2d(x, h, 1);
  Tensor along_w = adaptive_avg_pool2d(x, 1, w).permute({0, 2, 1, 3});
  Tensor t = activation(conv1x1(concat({along_h, along_w}, 1), in[1], in[2]), act);
  std::vector<Tensor> parts = split(t, {h, w}, 1);
  Tensor gh = sigmoid(conv1x1(parts[0], in[3], in[4]));
  Tensor gw = sigmoid(conv1x1(parts[1].permute({0, 2, 1, 3}).contiguous(), in[5], in[6]));
  return mul(mul(x, gh), gw);
}

Tensor ghost_reference(const std::vector<Tensor>& in, Activation act) {
  Tensor p = activation(conv1x1(in[0], in[1], in[2]), act);
  const int64_t cheap = in[3].size(0), k = in[3].size(1);
  Conv2dParams dw;
  dw.pad_h = dw.pad_w = k / 2;
  dw.groups = cheap;
  Tensor q = activation(conv2d(p.narrow(3, 0, cheap), in[3], in[4], dw), act);
  return concat({p, q}, 3);
}

// ---------------------------------------------------------------- shapes

struct SECase {
  int64_t n, h, w, c, cr;
  Activation act, gate;
};
const std::vector<SECase>& se_cases() {
  static const std::vector<SECase> v = {
      {1, 1, 1, 8, 2, Activation::ReLU, Activation::HardSigmoid},     // H=W=1
      {2, 7, 7, 20, 8, Activation::ReLU, Activation::HardSigmoid},    // C not a multiple of 8
      {2, 14, 14, 72, 20, Activation::ReLU, Activation::HardSigmoid}, // GhostNet stage 3
      {1, 7, 7, 96, 24, Activation::ReLU, Activation::HardSigmoid},   // MobileNetV3-small
      {2, 5, 3, 13, 3, Activation::SiLU, Activation::Sigmoid},        // odd everything, EfficientNet acts
      {3, 33, 33, 40, 10, Activation::SiLU, Activation::Sigmoid},     // H=W=33
  };
  return v;
}

std::vector<Tensor> se_inputs(const SECase& s, DType dtype) {
  return {param({s.n, s.h, s.w, s.c}, 1, dtype), param({s.cr, 1, 1, s.c}, 2, dtype, 0.5), param({s.cr}, 3, dtype, 0.1),
          param({s.c, 1, 1, s.cr}, 4, dtype, 0.5), param({s.c}, 5, dtype, 0.1)};
}

struct CACase {
  int64_t n, h, w, c, mip;
  Activation act;
};
const std::vector<CACase>& ca_cases() {
  static const std::vector<CACase> v = {
      {1, 1, 1, 16, 8, Activation::HardSwish},    // H=W=1
      {2, 7, 7, 24, 8, Activation::HardSwish},    // EMN tiny late stage
      {2, 16, 16, 96, 8, Activation::HardSwish},  // EMN small expansion
      {1, 4, 4, 384, 12, Activation::HardSwish},  // EMN base, mip = C/32
      {2, 33, 17, 13, 8, Activation::ReLU},       // odd H, W and C
  };
  return v;
}

std::vector<Tensor> ca_inputs(const CACase& s, DType dtype) {
  return {param({s.n, s.h, s.w, s.c}, 11, dtype),    param({s.mip, 1, 1, s.c}, 12, dtype, 0.5),
          param({s.mip}, 13, dtype, 0.1),            param({s.c, 1, 1, s.mip}, 14, dtype, 0.5),
          param({s.c}, 15, dtype, 0.1),              param({s.c, 1, 1, s.mip}, 16, dtype, 0.5),
          param({s.c}, 17, dtype, 0.1)};
}

struct GhostCase {
  int64_t n, h, w, c_in, primary, cheap, k;
  Activation act;
};
const std::vector<GhostCase>& ghost_cases() {
  static const std::vector<GhostCase> v = {
      {1, 1, 1, 3, 4, 4, 3, Activation::ReLU},         // H=W=1
      {2, 7, 7, 16, 12, 11, 3, Activation::ReLU},      // odd out (cut cheap half)
      {2, 33, 33, 8, 9, 9, 5, Activation::HardSwish},  // H=W=33, k 5
      {1, 14, 14, 40, 60, 60, 3, Activation::ReLU},    // GhostNet ghost1 (120 maps)
      {2, 14, 14, 120, 20, 20, 3, Activation::None},   // GhostNet ghost2 (linear)
      {2, 9, 5, 13, 7, 6, 7, Activation::HardSwish},   // odd everything, k 7
  };
  return v;
}

std::vector<Tensor> ghost_inputs(const GhostCase& s, DType dtype) {
  return {param({s.n, s.h, s.w, s.c_in}, 21, dtype), param({s.primary, 1, 1, s.c_in}, 22, dtype, 0.5),
          param({s.primary}, 23, dtype, 0.1), param({s.cheap, s.k, s.k, 1}, 24, dtype, 0.5),
          param({s.cheap}, 25, dtype, 0.1)};
}

// ---------------------------------------------------------------- CPU: op == composition

TEST(FusedOpsCpu, SqueezeExciteIsTheComposition) {
  for (const SECase& s : se_cases()) {
    const std::vector<Tensor> in = se_inputs(s, DType::F32);
    const OpRun fused = run_with_grads(
        [&](const std::vector<Tensor>& v) { return squeeze_excite(v[0], v[1], v[2], v[3], v[4], s.act, s.gate); }, in);
    const OpRun composed = run_with_grads([&](const std::vector<Tensor>& v) { return se_reference(v, s.act, s.gate); }, in);
    expect_same_run(fused, composed, 0.0, "squeeze_excite C=" + std::to_string(s.c));
  }
}

TEST(FusedOpsCpu, SqueezeExciteTakesMatrixWeights) {
  const SECase s = se_cases()[1];
  const std::vector<Tensor> in = se_inputs(s, DType::F32);
  const Tensor y4 = squeeze_excite(in[0], in[1], in[2], in[3], in[4], s.act, s.gate);
  const Tensor y2 = squeeze_excite(in[0], in[1].reshape({s.cr, s.c}), in[2], in[3].reshape({s.c, s.cr}), in[4],
                                   s.act, s.gate);
  expect_close(y2, y4, 0.0, 0.0, "[out,in] weights");
  EXPECT_THROW(squeeze_excite(in[0], in[3], in[2], in[1], in[4], s.act, s.gate), ShapeError);
}

TEST(FusedOpsCpu, CoordAttentionIsTheComposition) {
  for (const CACase& s : ca_cases()) {
    const std::vector<Tensor> in = ca_inputs(s, DType::F32);
    const OpRun fused = run_with_grads(
        [&](const std::vector<Tensor>& v) { return coord_attention(v[0], v[1], v[2], v[3], v[4], v[5], v[6], s.act); },
        in);
    const OpRun composed = run_with_grads([&](const std::vector<Tensor>& v) { return ca_reference(v, s.act); }, in);
    // x's gradient sums the gate's and the two poolings' terms; coord_pool
    // adds its two first, autograd the three in arrival order: an ulp apart.
    expect_same_run(fused, composed, 0.0, "coord_attention C=" + std::to_string(s.c), 1e-6);
  }
}

TEST(FusedOpsCpu, GhostModuleIsTheComposition) {
  for (const GhostCase& s : ghost_cases()) {
    const std::vector<Tensor> in = ghost_inputs(s, DType::F32);
    const OpRun fused = run_with_grads(
        [&](const std::vector<Tensor>& v) { return ghost_module(v[0], v[1], v[2], v[3], v[4], s.act); }, in);
    const OpRun composed = run_with_grads([&](const std::vector<Tensor>& v) { return ghost_reference(v, s.act); }, in);
    EXPECT_EQ(fused.out.size(3), s.primary + s.cheap);
    expect_same_run(fused, composed, 0.0, "ghost_module out=" + std::to_string(s.primary + s.cheap));
  }
}

TEST(FusedOpsCpu, GhostModuleRejectsWhatTheKernelCannotDo) {
  const std::vector<Tensor> in = ghost_inputs(ghost_cases()[1], DType::F32);
  const Tensor too_many = param({13, 3, 3, 1}, 1);  // more cheap maps than primary ones
  EXPECT_THROW(ghost_module(in[0], in[1], in[2], too_many, Tensor(), Activation::ReLU), ShapeError);
  const Tensor even = param({11, 2, 2, 1}, 1);
  EXPECT_THROW(ghost_module(in[0], in[1], in[2], even, Tensor(), Activation::ReLU), ShapeError);
}

// ---------------------------------------------------------------- CPU: BN folding == eval modules

// Non-trivial BN statistics and affine parameters in every BatchNorm2d under
// m, so the folding is really exercised.
void randomize_batch_norms(nn::Module& m, uint64_t seed) {
  NoGradGuard g;
  if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(&m)) {
    bn->running_mean.copy_(mul_scalar(random_tensor(bn->running_mean.shape(), seed, DType::F32), 0.3));
    bn->running_var.copy_(add_scalar(mul_scalar(random_tensor(bn->running_var.shape(), seed + 1, DType::F32), 0.4), 1.0));
    bn->weight.copy_(add_scalar(mul_scalar(random_tensor(bn->weight.shape(), seed + 2, DType::F32), 0.5), 1.0));
    bn->bias.copy_(mul_scalar(random_tensor(bn->bias.shape(), seed + 3, DType::F32), 0.2));
  }
  for (auto& [name, c] : m.named_children()) randomize_batch_norms(*c, seed += 4);
}

Tensor named(const nn::Module& m, const std::string& name) {
  for (auto& [n, t] : m.named_parameters())
    if (n == name) return t;
  ADD_FAILURE() << "no parameter " << name;
  return Tensor();
}

template <typename M>
std::shared_ptr<M> child(const nn::Module& m, const std::string& name) {
  for (auto& [n, c] : m.named_children())
    if (n == name) return std::dynamic_pointer_cast<M>(c);
  ADD_FAILURE() << "no child " << name;
  return nullptr;
}

TEST(FusedOpsCpu, FoldedCoordAttentionMatchesTheEvalModule) {
  for (int64_t c : {24, 40}) {
    models::CoordinateAttention ca(c);
    randomize_batch_norms(ca, 31);
    ca.eval();
    const Tensor x = param({2, 7, 5, c}, 32);
    const Tensor y_module = ca(x);
    const models::FoldedConv f =
        models::fold_batch_norm(*child<nn::Conv2d>(ca, "conv1"), *child<nn::BatchNorm2d>(ca, "bn1"));
    const Tensor y_fold = coord_attention(x, f.weight, f.bias, named(ca, "conv_h.weight"), named(ca, "conv_h.bias"),
                                          named(ca, "conv_w.weight"), named(ca, "conv_w.bias"), Activation::HardSwish);
    expect_close(y_fold, y_module, 1e-5, 1e-5, "folded coordinate attention, C=" + std::to_string(c));
    // The gradients reach conv1 and bn1 through the folding as through the composed block.
    sum(y_module).backward();
    const Tensor g_module = named(ca, "bn1.weight").grad();
    named(ca, "bn1.weight").zero_grad();
    sum(y_fold).backward();
    expect_close(named(ca, "bn1.weight").grad(), g_module, 1e-5, 1e-4, "bn1.weight gradient through the folding");
  }
}

TEST(FusedOpsCpu, FoldedGhostMatchesTheEvalModule) {
  for (Activation act : {Activation::ReLU, Activation::HardSwish, Activation::None}) {
    for (int64_t out : {16, 13}) {
      models::GhostModule gm(10, out, act);
      randomize_batch_norms(gm, 41);
      gm.eval();
      const Tensor x = param({2, 6, 7, 10}, 42);
      const Tensor y_module = gm(x);
      auto primary = child<models::ConvBNAct>(gm, "primary_conv");
      auto cheap = child<models::ConvBNAct>(gm, "cheap_operation");
      const models::FoldedConv p = models::fold_batch_norm(*primary->conv, *primary->bn);
      const models::FoldedConv q = models::fold_batch_norm(*cheap->conv, *cheap->bn);
      const int64_t used = out - primary->conv->out_channels;
      const Tensor y_fold =
          ghost_module(x, p.weight, p.bias, q.weight.narrow(0, 0, used), q.bias.narrow(0, 0, used), act);
      expect_close(y_fold, y_module, 1e-5, 1e-5,
                   std::string("folded ghost module, ") + activation_name(act) + ", out " + std::to_string(out));
    }
  }
}

TEST(FusedOpsCpu, ModulesKeepTheComposedPathOffCuda) {
  models::CoordinateAttention ca(24);
  ca.eval();
  EXPECT_FALSE(ca.can_fuse(param({1, 4, 4, 24}, 1)));
  models::GhostModule gm(8, 16, Activation::ReLU);
  gm.eval();
  EXPECT_FALSE(gm.can_fuse(param({1, 4, 4, 8}, 1)));
}

// ---------------------------------------------------------------- CUDA parity

// f32: as is. f16/bf16: CUDA runs on inputs cast to dtype (x only when
// mixed, the parameters staying f32), the CPU in f32; both outputs rounded to dtype.
MultiOp in_dtype(DType dtype, MultiOp op, bool mixed = false) {
  if (dtype == DType::F32) return op;
  return [dtype, op, mixed](const std::vector<Tensor>& in) {
    const bool cuda = in.front().device().is_cuda();
    std::vector<Tensor> args;
    for (size_t i = 0; i < in.size(); ++i)
      args.push_back(cuda && in[i].defined() && (i == 0 || !mixed) ? in[i].to(dtype) : in[i]);
    return op(args).to(dtype).to(DType::F32);
  };
}

// Half precision tolerances widened for the two chained 1x1s / gate products.
// `reduction_len`: the longest sum behind a compared value (weight gradients
// sum over every pixel). Half-precision rounding of its terms grows with the
// square root of the length, as in test_cuda_kernels.cpp.
Tolerance fused_tolerance(DType dtype, int64_t reduction_len = 16) {
  Tolerance t = parity_tolerance(dtype);
  if (dtype != DType::F32) {
    t.atol *= std::sqrt(static_cast<double>(std::max<int64_t>(reduction_len, 16)));
    t.rtol *= 4;
  }
  return t;
}

class CudaFused : public ::testing::TestWithParam<DType> {};

TEST_P(CudaFused, SqueezeExciteMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  for (bool mixed : {false, true}) {
    if (mixed && dtype == DType::F32) continue;
    for (const SECase& s : se_cases()) {
      MultiOp op = [s](const std::vector<Tensor>& v) { return squeeze_excite(v[0], v[1], v[2], v[3], v[4], s.act, s.gate); };
      expect_cuda_matches_cpu(in_dtype(dtype, op, mixed), se_inputs(s, dtype), fused_tolerance(dtype),
                              "squeeze_excite " + shape_str({s.n, s.h, s.w, s.c}) + " Cr " + std::to_string(s.cr) +
                                  (mixed ? " f32 params" : ""));
    }
  }
}

TEST_P(CudaFused, CoordAttentionMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  for (bool mixed : {false, true}) {
    if (mixed && dtype == DType::F32) continue;
    for (const CACase& s : ca_cases()) {
      MultiOp op = [s](const std::vector<Tensor>& v) {
        return coord_attention(v[0], v[1], v[2], v[3], v[4], v[5], v[6], s.act);
      };
      expect_cuda_matches_cpu(in_dtype(dtype, op, mixed), ca_inputs(s, dtype), fused_tolerance(dtype),
                              "coord_attention " + shape_str({s.n, s.h, s.w, s.c}) + " mip " +
                                  std::to_string(s.mip) + (mixed ? " f32 params" : ""));
    }
  }
}

// The gate alone, as a training step runs it (the transform through the
// engine): the gate kernels against the CPU's one-pass op.
TEST_P(CudaFused, CoordGateMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  for (const CACase& s : ca_cases()) {
    MultiOp op = [](const std::vector<Tensor>& v) { return coord_gate(v[0], v[1], v[2]); };
    const std::vector<Tensor> inputs = {param({s.n, s.h, s.w, s.c}, 21, dtype), param({s.n, s.h, 1, s.c}, 22, dtype),
                                        param({s.n, 1, s.w, s.c}, 23, dtype)};
    expect_cuda_matches_cpu(in_dtype(dtype, op), inputs, fused_tolerance(dtype, std::max(s.h, s.w)),
                            "coord_gate " + shape_str({s.n, s.h, s.w, s.c}));
  }
}

TEST_P(CudaFused, GhostModuleMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  for (const GhostCase& s : ghost_cases()) {
    // In f16/bf16 one rounding step moves pre-activations near zero across
    // ReLU's kink and flips whole gradient elements (seen on the CUDA
    // emulator); SiLU is smooth there. f32 keeps ReLU.
    const Activation act = (dtype != DType::F32 && s.act == Activation::ReLU) ? Activation::SiLU : s.act;
    MultiOp op = [s, act](const std::vector<Tensor>& v) { return ghost_module(v[0], v[1], v[2], v[3], v[4], act); };
    // Weights and biases (inputs 1-4) sum their gradients over every pixel.
    const Tolerance summed = fused_tolerance(dtype, s.n * s.h * s.w);
    expect_cuda_matches_cpu(in_dtype(dtype, op), ghost_inputs(s, dtype), fused_tolerance(dtype),
                            "ghost_module " + shape_str({s.n, s.h, s.w, s.c_in}) + " -> " +
                                std::to_string(s.primary) + "+" + std::to_string(s.cheap) + " k" +
                                std::to_string(s.k) + " " + activation_name(act),
                            true, {fused_tolerance(dtype), summed, summed, summed, summed});
  }
}

// ghost_norms (a training ghost module after its primary conv: both norms
// write into the output's halves, the backward reads the gradient's in place)
// against the CPU op: output and every gradient; in f32 also the running
// statistics. f16/bf16 activations keep f32 norm parameters and cast the f32
// cheap weight, as mixed precision runs it.
TEST_P(CudaFused, GhostNormsMatchCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  struct NormCase {
    int64_t n, h, w, c, k;
    Activation act;
  };
  const std::vector<NormCase> cases = {
      {2, 9, 11, 24, 3, Activation::HardSwish}, {4, 8, 8, 20, 5, Activation::ReLU},
      {1, 14, 14, 16, 7, Activation::None},     {3, 5, 7, 3, 3, Activation::ReLU6},
      {5, 1, 1, 33, 3, Activation::HardSwish},  // H=W=1, odd channels
  };
  for (const NormCase& s : cases) {
    // ReLU's kink flips whole gradient elements under half-precision rounding (as for ghost_module).
    const bool kink = s.act == Activation::ReLU || s.act == Activation::ReLU6;
    const Activation act = dtype != DType::F32 && kink ? Activation::SiLU : s.act;
    MultiOp op = [act, dtype](const std::vector<Tensor>& v) {
      GhostNorm p{v[2], v[3], v[4].clone(), v[5].clone(), {}}, c{v[6], v[7], v[8].clone(), v[9].clone(), {}};
      p.params.momentum = c.params.momentum = 0.3;
      const Tensor y = ghost_norms(v[0], p, v[1], c, act);
      if (dtype != DType::F32) return y;
      return concat({y.reshape({-1}), p.running_mean, p.running_var, c.running_mean, c.running_var}, 0);
    };
    auto stat = [&](uint64_t seed, bool var) {
      const Tensor t = random_tensor({s.c}, seed, DType::F32);
      return var ? add_scalar(mul(t, t), 0.5) : t;
    };
    const std::vector<Tensor> inputs = {
        param({s.n, s.h, s.w, s.c}, 31, dtype), param({s.c, s.k, s.k, 1}, 32, dtype, 0.5),
        param({s.c}, 33),  param({s.c}, 34, DType::F32, 0.1), stat(35, false), stat(36, true),
        param({s.c}, 37),  param({s.c}, 38, DType::F32, 0.1), stat(39, false), stat(40, true)};
    // The cheap weight and the norms' parameters (inputs 1-9) sum their gradients over every pixel.
    std::vector<Tolerance> grad_tols(inputs.size(), fused_tolerance(dtype, s.n * s.h * s.w));
    grad_tols[0] = fused_tolerance(dtype);
    expect_cuda_matches_cpu(in_dtype(dtype, op, /*mixed=*/true), inputs, fused_tolerance(dtype),
                            "ghost_norms " + shape_str({s.n, s.h, s.w, s.c}) + " k" + std::to_string(s.k) + " " +
                                activation_name(act),
                            true, grad_tols);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaFused, ::testing::Values(DType::F32, DType::F16, DType::BF16));

// A GhostModule in training on CUDA takes ghost_norms and matches the CPU's:
// output, every gradient, every buffer (running statistics, batch counters).
// A cheap kernel of 9, past the depthwise kernels' 7, composes from the
// primary conv's output instead.
TEST(CudaFusedModules, TrainingGhostModuleMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  for (const auto& [out, k] : {std::pair<int64_t, int64_t>{24, 3}, {37, 5}, {24, 9}}) {
    models::GhostModule on_cpu(16, out, Activation::HardSwish, 2, k), on_cuda(16, out, Activation::HardSwish, 2, k);
    randomize_batch_norms(on_cpu, 61);
    on_cuda.load_state_dict(on_cpu.state_dict());
    on_cuda.to(Device::cuda());
    on_cpu.train();
    on_cuda.train();
    const Tensor x = param({2, 9, 7, 16}, 62);
    const Tensor r = random_tensor({2, 9, 7, out}, 63, DType::F32);
    const Tensor y = on_cpu(x);
    sum(mul(y, r)).backward();
    const Tensor xc = x.detach().to(Device::cuda());
    Tensor yc;
    {
      TraceRecorder profile(false, true);  // timed: fused ops stay
      yc = on_cuda(xc);
      sum(mul(yc, r.to(Device::cuda()))).backward();
      EXPECT_EQ(count_ops(profile, "ghost_norms"), k <= 7 ? 2 : 0) << "forward and backward";
      EXPECT_EQ(count_ops(profile, "concat"), k <= 7 ? 0 : 2) << "forward and backward";
    }
    const std::string what =
        "GhostModule training, CUDA vs CPU, out " + std::to_string(out) + ", cheap kernel " + std::to_string(k);
    expect_close(yc.cpu(), y, 1e-4, 1e-4, what + ": output");
    const auto params = on_cpu.named_parameters(), params_cuda = on_cuda.named_parameters();
    for (size_t i = 0; i < params.size(); ++i)
      expect_close(params_cuda[i].second.grad().cpu(), params[i].second.grad(), 1e-4, 1e-4,
                   what + ": gradient of " + params[i].first);
    const auto buffers = on_cpu.named_buffers(), buffers_cuda = on_cuda.named_buffers();
    for (size_t i = 0; i < buffers.size(); ++i)
      expect_close(buffers_cuda[i].second.cpu().to(DType::F64), buffers[i].second.to(DType::F64), 1e-5, 1e-5,
                   what + ": " + buffers[i].first);
  }
}

TEST(CudaFusedModules, EvalCoordAttentionAndGhostMatchCpu) {
  KESTREL_REQUIRE_CUDA();
  models::CoordinateAttention ca(40);
  randomize_batch_norms(ca, 51);
  ca.eval();
  const Tensor x = param({2, 9, 7, 40}, 52);
  const Tensor y_cpu = ca(x);
  ca.to(Device::cuda());
  const Tensor xc = x.detach().to(Device::cuda());
  EXPECT_TRUE(ca.can_fuse(xc));
  expect_close(ca(xc).cpu(), y_cpu, 1e-4, 1e-4, "CoordinateAttention eval, CUDA fused vs CPU composed");

  for (Activation act : {Activation::ReLU, Activation::HardSwish, Activation::None}) {
    models::GhostModule gm(24, 37, act);
    randomize_batch_norms(gm, 53);
    gm.eval();
    const Tensor g = param({2, 11, 6, 24}, 54);
    const Tensor g_cpu = gm(g);
    gm.to(Device::cuda());
    const Tensor gc = g.detach().to(Device::cuda());
    EXPECT_TRUE(gm.can_fuse(gc));
    expect_close(gm(gc).cpu(), g_cpu, 1e-4, 1e-4,
                 std::string("GhostModule eval, CUDA fused vs CPU composed, ") + activation_name(act));
    NoGradGuard inference;  // nothing kept for backward: the cheap half's activation is the kernel's epilogue
    expect_close(gm(gc).cpu(), g_cpu, 1e-4, 1e-4,
                 std::string("GhostModule inference, CUDA fused vs CPU composed, ") + activation_name(act));
  }
}

// Layers whose channels overflow the fused kernels' 48 KiB of shared memory
// compose engine ops on CUDA; at the bound they still take the fused kernels.
TEST(CudaFusedModules, AttentionWiderThanSharedMemoryComposes) {
  KESTREL_REQUIRE_CUDA();
  const int64_t limit = gpu::kFusedAttentionSharedFloats;
  for (const int64_t c : {limit - 4, limit + 12}) {  // hidden 2: at the bound, then past it
    const SECase s{1, 2, 1, c, 2, Activation::ReLU, Activation::Sigmoid};
    MultiOp op = [s](const std::vector<Tensor>& v) { return squeeze_excite(v[0], v[1], v[2], v[3], v[4], s.act, s.gate); };
    expect_cuda_matches_cpu(op, se_inputs(s, DType::F32), fused_tolerance(DType::F32),
                            "wide squeeze_excite C " + std::to_string(c));
    const CACase a{1, 2, 1, c, 2, Activation::HardSwish};
    MultiOp ca = [a](const std::vector<Tensor>& v) {
      return coord_attention(v[0], v[1], v[2], v[3], v[4], v[5], v[6], a.act);
    };
    expect_cuda_matches_cpu(ca, ca_inputs(a, DType::F32), fused_tolerance(DType::F32),
                            "wide coord_attention C " + std::to_string(c));
  }
}

TEST(CudaFusedModules, TrainingKeepsTheComposedPath) {
  KESTREL_REQUIRE_CUDA();
  models::CoordinateAttention ca(24);
  models::GhostModule gm(8, 16, Activation::ReLU);
  ca.to(Device::cuda());
  gm.to(Device::cuda());
  const Tensor x = param({1, 4, 4, 24}, 1).detach().to(Device::cuda());
  EXPECT_FALSE(ca.can_fuse(x));
  EXPECT_FALSE(gm.can_fuse(x));
}

// Whole models through the fused blocks (SE, coordinate attention, ghost
// modules): eval forward on CUDA against the CPU's composed path.
TEST(CudaFusedModules, ModelsMatchCpu) {
  KESTREL_REQUIRE_CUDA();
  for (const char* name : {"emn_tiny", "ghostnet_100", "mobilenet_v3_small"}) {
    models::ModelOptions o;
    o.num_classes = 10;
    o.cifar_stem = true;
    nn::ModulePtr m = models::build_model(name, o);
    randomize_batch_norms(*m, 61);
    const Tensor x = param({2, 32, 32, 3}, 62);
    m->eval();
    const Tensor y_cpu = m->forward(x);
    m->to(Device::cuda());
    const Tensor xc = x.detach().to(Device::cuda());
    expect_close(m->forward(xc).cpu(), y_cpu, 1e-3, 1e-3, std::string(name) + " eval, CUDA vs CPU");
    NoGradGuard inference;  // depthwise layers now fold their batch norms (conv2d_act)
    expect_close(m->forward(xc).cpu(), y_cpu, 1e-3, 1e-3, std::string(name) + " inference, CUDA vs CPU");
  }
}

// Inference of a depthwise ConvBNAct on CUDA: BN folded into the conv, bias and
// activation in the depthwise kernel's epilogue (one op), against the CPU's
// conv -> BN -> act. With gradients on, the composition runs instead.
TEST(CudaFusedModules, DepthwiseConvBnActFoldsIntoOneKernelForInference) {
  KESTREL_REQUIRE_CUDA();
  for (Activation act : {Activation::ReLU6, Activation::HardSwish, Activation::None})
    for (int64_t stride : {1, 2})
      for (int64_t k : {3, 5}) {
        models::ConvSpec spec;
        spec.stride = stride;
        spec.groups = 24;
        models::ConvBNAct m(24, 24, k, spec, act);
        randomize_batch_norms(m, 71);
        m.eval();
        const Tensor x = param({2, 9, 11, 24}, 72);
        Tensor y_cpu;
        {
          NoGradGuard g;
          y_cpu = m.forward(x);
        }
        m.to(Device::cuda());
        const Tensor xc = x.detach().to(Device::cuda());
        const std::string what = std::string("depthwise ConvBNAct k") + std::to_string(k) + " s" +
                                 std::to_string(stride) + " " + activation_name(act);
        Tensor y_fused;
        {
          NoGradGuard g;
          TraceRecorder rec;
          y_fused = m.forward(xc);
          bool fused = false;
          for (const TraceEvent& e : rec.events()) fused = fused || e.op == "conv2d_act";
          EXPECT_TRUE(fused) << what << ": the folded conv2d_act op did not run";
        }
        expect_close(y_fused.cpu(), y_cpu, 1e-4, 1e-4, what + ", fused inference vs CPU");
        const Tensor y_composed = m.forward(xc);  // grad mode on: conv, then BN + act
        expect_close(y_composed.cpu(), y_cpu, 1e-4, 1e-4, what + ", composed vs CPU");
      }
}

}  // namespace
}  // namespace kestrel::testing
