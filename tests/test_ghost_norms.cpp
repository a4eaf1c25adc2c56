// ghost_norms: a training ghost module's norms and cheap conv writing into one
// output (no concat, no gradient copies) equal the composed ops bit for bit:
// output, every gradient and the running statistics; and GhostModule takes it
// in training on the CPU.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu/norm.h"
#include "engine/nn/module.h"
#include "engine/ops/conv.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/ghost_norms.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"
#include "models/ghostnet.h"
#include "test_util.h"

namespace kestrel {
namespace {

using testing::random_tensor;

struct NormCase {
  int64_t n, h, w, c, kernel;
  Activation act;
  DType dtype;
  bool affine;
};

Tensor param(const Shape& shape, uint64_t seed, DType dtype) {
  Tensor t = random_tensor(shape, seed, dtype);
  t.set_requires_grad(true);
  return t;
}

GhostNorm make_norm(int64_t c, uint64_t seed, DType dtype, bool affine) {
  GhostNorm n;
  if (affine) {
    n.weight = param({c}, seed, dtype);
    n.bias = param({c}, seed + 1, dtype);
  }
  n.running_mean = random_tensor({c}, seed + 2, dtype);
  n.running_var = add(mul(random_tensor({c}, seed + 3, dtype), random_tensor({c}, seed + 3, dtype)),
                      Tensor::full({c}, 0.5, dtype));
  n.params.momentum = 0.3;
  return n;
}

GhostNorm copy_of(const GhostNorm& n) {
  GhostNorm c = n;
  c.running_mean = n.running_mean.clone();
  c.running_var = n.running_var.clone();
  return c;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an error";
  return "";
}

void expect_bits(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.defined(), expected.defined()) << what;
  if (!actual.defined()) return;
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  EXPECT_EQ(actual.to_vector_f64(), expected.to_vector_f64()) << what;
}

TEST(GhostNorms, EqualsTheComposedOpsBitForBit) {
  // Sliding depthwise rows (3x3, 5x5) and the per-pixel loop (7x7), thin
  // layers, 1x1 images, f64, an activation whose derivative is arithmetic,
  // and norms without weight and bias.
  const std::vector<NormCase> cases = {
      {2, 9, 11, 24, 3, Activation::HardSwish, DType::F32, true},
      {4, 8, 8, 20, 5, Activation::ReLU, DType::F32, true},
      {1, 14, 14, 16, 7, Activation::None, DType::F32, true},
      {3, 5, 7, 3, 3, Activation::ReLU6, DType::F32, false},
      {5, 1, 1, 33, 3, Activation::SiLU, DType::F32, true},
      {2, 6, 5, 7, 3, Activation::ReLU, DType::F64, true},
  };
  for (const NormCase& c : cases) {
    const std::string name = std::to_string(c.n) + "x" + std::to_string(c.h) + "x" + std::to_string(c.w) + "x" +
                             std::to_string(c.c) + " " + std::to_string(c.kernel) + "x" + std::to_string(c.kernel) +
                             " " + activation_name(c.act) + " " + dtype_name(c.dtype);
    SCOPED_TRACE(name);
    const Tensor z = param({c.n, c.h, c.w, c.c}, 1, c.dtype);
    const Tensor wc = param({c.c, c.kernel, c.kernel, 1}, 2, c.dtype);
    const GhostNorm np = make_norm(c.c, 10, c.dtype, c.affine), nc = make_norm(c.c, 20, c.dtype, c.affine);
    const Tensor r = random_tensor({c.n, c.h, c.w, 2 * c.c}, 3, c.dtype);
    const std::vector<Tensor> leaves{z, wc, np.weight, np.bias, nc.weight, nc.bias};

    GhostNorm fp = copy_of(np), fc = copy_of(nc);
    ASSERT_TRUE(ghost_norms_apply(z, fp, wc, fc));
    const Tensor y = ghost_norms(z, fp, wc, fc, c.act);
    sum(mul(y, r)).backward();
    std::vector<Tensor> fused_grads;
    for (Tensor t : leaves) {
      fused_grads.push_back(t.defined() ? t.grad() : Tensor());
      if (t.defined()) t.zero_grad();
    }

    GhostNorm cp = copy_of(np), cc = copy_of(nc);
    const Tensor a = batch_norm_act(z, cp.weight, cp.bias, cp.running_mean, cp.running_var, cp.params, c.act);
    Conv2dParams dw;
    dw.pad_h = dw.pad_w = c.kernel / 2;
    dw.groups = c.c;
    const Tensor b = batch_norm_act(conv2d(a, wc, Tensor(), dw), cc.weight, cc.bias, cc.running_mean,
                                    cc.running_var, cc.params, c.act);
    const Tensor expected = concat({a, b}, 3);
    sum(mul(expected, r)).backward();

    expect_bits(y, expected, "output");
    const char* names[] = {"z", "w_cheap", "primary weight", "primary bias", "cheap weight", "cheap bias"};
    for (size_t i = 0; i < leaves.size(); ++i)
      expect_bits(fused_grads[i], leaves[i].defined() ? leaves[i].grad() : Tensor(), names[i]);
    expect_bits(fp.running_mean, cp.running_mean, "primary running mean");
    expect_bits(fp.running_var, cp.running_var, "primary running var");
    expect_bits(fc.running_mean, cc.running_mean, "cheap running mean");
    expect_bits(fc.running_var, cc.running_var, "cheap running var");
    EXPECT_NE(fp.running_mean.to_vector_f64(), np.running_mean.to_vector_f64()) << "the statistics moved";
  }
}

TEST(GhostNorms, RefusesWhatItCannotCompute) {
  const Tensor z = random_tensor({2, 4, 4, 6}, 1, DType::F32);
  const Tensor wc = random_tensor({6, 3, 3, 1}, 2, DType::F32);
  const GhostNorm n = make_norm(6, 10, DType::F32, true);
  EXPECT_TRUE(ghost_norms_apply(z, n, wc, n));
  EXPECT_FALSE(ghost_norms_apply(z, n, random_tensor({6, 2, 2, 1}, 2, DType::F32), n)) << "an even kernel";
  EXPECT_FALSE(ghost_norms_apply(z, n, random_tensor({5, 3, 3, 1}, 2, DType::F32), n)) << "fewer cheap channels";
  EXPECT_FALSE(ghost_norms_apply(z, n, wc.to(DType::F64), n)) << "mixed dtypes";
  GhostNorm eval = n;
  eval.params.training = false;
  EXPECT_FALSE(ghost_norms_apply(z, eval, wc, n)) << "running statistics (eval mode)";
  {
    TraceRecorder summary;
    EXPECT_FALSE(ghost_norms_apply(z, n, wc, n)) << "a trace that names each layer";
  }
  const std::string one_row = error_of(
      [&] { ghost_norms(random_tensor({1, 1, 1, 6}, 1, DType::F32), n, wc, n, Activation::ReLU); });
  EXPECT_NE(one_row.find("expected more than 1 value per channel when training"), std::string::npos) << one_row;
  EXPECT_NE(one_row.find("train with batches of 2 or more"), std::string::npos) << one_row;
  const std::string bad = error_of([&] { ghost_norms(z, n, wc.to(DType::F64), n, Activation::ReLU); });
  EXPECT_NE(bad.find("ghost_norms: needs"), std::string::npos) << bad;
}

TEST(GhostNorms, NormKernelsTakeOnlyEvenlySpacedRows) {
  // y and grad_y may be channel slices; a transposed view is refused, not misread.
  const Tensor x = random_tensor({2, 3, 4, 5}, 1, DType::F32);
  const std::vector<double> mean(5, 0.0), scale(5, 1.0);
  const Tensor wide = Tensor::empty({2, 3, 4, 8}, DType::F32);
  cpu::batch_norm_act_forward(x, mean.data(), scale.data(), nullptr, Tensor(), Activation::None, wide.narrow(3, 2, 5));
  expect_bits(wide.narrow(3, 2, 5).contiguous(), x, "written into the slice");
  const Tensor transposed = Tensor::empty({2, 4, 3, 5}, DType::F32).permute({0, 2, 1, 3});
  const std::string e = error_of([&] {
    cpu::batch_norm_act_forward(x, mean.data(), scale.data(), nullptr, Tensor(), Activation::None, transposed);
  });
  EXPECT_NE(e.find("evenly spaced rows"), std::string::npos) << e;
}

// Forward and backward of a GhostModule in training, its gradients and statistics.
struct GhostRun {
  Tensor y;
  std::vector<Tensor> grads, buffers;
};

GhostRun run_ghost(models::GhostModule& m, const Tensor& x, const Tensor& r) {
  m.zero_grad();
  GhostRun run;
  run.y = m(x);
  sum(mul(run.y, r)).backward();
  for (const Tensor& p : m.parameters()) run.grads.push_back(p.grad().clone());
  for (const auto& [name, b] : m.named_buffers()) run.buffers.push_back(b.clone());
  return run;
}

TEST(GhostNorms, GhostModuleTakesItInTrainingOnTheCpu) {
  // 13 output channels: 7 primary, 7 cheap, cut to 13.
  for (int64_t out : {12, 13}) {
    SCOPED_TRACE(out);
    models::GhostModule fused(10, out, Activation::ReLU), composed(10, out, Activation::ReLU);
    composed.load_state_dict(fused.state_dict());
    fused.train();
    composed.train();
    const Tensor x = random_tensor({3, 6, 6, 10}, 1, DType::F32);
    const Tensor r = random_tensor({3, 6, 6, out}, 2, DType::F32);
    GhostRun a, b;
    {
      TraceRecorder profile(false, true);  // timed: fused ops stay
      a = run_ghost(fused, x, r);
      EXPECT_EQ(testing::count_ops(profile, "ghost_norms"), 2) << "forward and backward";
      EXPECT_EQ(testing::count_ops(profile, "concat"), 0);
    }
    {
      TraceRecorder summary;  // names each layer: the composed path
      b = run_ghost(composed, x, r);
      EXPECT_EQ(testing::count_ops(summary, "ghost_norms"), 0);
      EXPECT_EQ(testing::count_ops(summary, "concat"), 1);
    }
    expect_bits(a.y, b.y, "output");
    ASSERT_EQ(a.grads.size(), b.grads.size());
    for (size_t i = 0; i < a.grads.size(); ++i) expect_bits(a.grads[i], b.grads[i], "gradient " + std::to_string(i));
    ASSERT_EQ(a.buffers.size(), b.buffers.size());
    for (size_t i = 0; i < a.buffers.size(); ++i)
      expect_bits(a.buffers[i], b.buffers[i], "buffer " + std::to_string(i));
  }
}

}  // namespace
}  // namespace kestrel
