// CPU-vs-CUDA parity for pooling, resize, batch norm and the losses
// (tests/cuda_parity.h): outputs and the gradients of every input, at odd
// shapes (N=1, C=1/3/7/17/64/200, H=W=1/7/33, non-square). f32 and f64 go
// through expect_cuda_matches_cpu; f16/bf16 run on CUDA against the CPU f32
// path on the same dtype-rounded inputs, within parity_tolerance(dtype)
// (expect_reduced_cuda_matches_f32).
// Every test skips without a usable CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "engine/nn/layers.h"
#include "engine/ops/loss.h"
#include "engine/ops/norm.h"
#include "engine/ops/pool.h"
#include "engine/trace.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_cuda_matches_cpu;
using kestrel::testing::expect_reduced_cuda_matches_f32;
using kestrel::testing::parity_tolerance;
using kestrel::testing::random_tensor;
using kestrel::testing::ReducedParity;

namespace {

using UnaryOp = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor leaf(const Tensor& t) {
  Tensor l = t.detach();
  l.set_requires_grad(true);
  return l;
}

// f32 and f64 through the parity helper, f16 and bf16 against rounded f32.
void expect_all_dtypes(const UnaryOp& op, const std::vector<Tensor>& f32_inputs, const std::string& what,
                       bool with_f64 = true) {
  expect_cuda_matches_cpu(op, f32_inputs, parity_tolerance(DType::F32), what + " f32");
  if (with_f64) {
    std::vector<Tensor> d;
    for (const Tensor& t : f32_inputs) {
      Tensor c = is_floating(t.dtype()) ? t.detach().to(DType::F64) : t;
      if (t.requires_grad()) c.set_requires_grad(true);
      d.push_back(c);
    }
    expect_cuda_matches_cpu(op, d, parity_tolerance(DType::F64), what + " f64");
  }
  expect_reduced_cuda_matches_f32(op, f32_inputs, DType::F16, what + " f16");
  expect_reduced_cuda_matches_f32(op, f32_inputs, DType::BF16, what + " bf16");
}

struct Nhwc {
  int64_t n, h, w, c;
  std::string str() const {
    return "[" + std::to_string(n) + "," + std::to_string(h) + "," + std::to_string(w) + "," + std::to_string(c) + "]";
  }
};

const std::vector<Nhwc> kPoolShapes = {{1, 1, 1, 3},  {1, 7, 7, 7},   {2, 7, 7, 17},
                                       {1, 33, 33, 64}, {2, 33, 33, 3}, {1, 7, 33, 17}};

struct WindowCase {
  int64_t kernel, stride, pad;
};
const std::vector<WindowCase> kWindows = {{2, 2, 0}, {2, 1, 0}, {3, 1, 1}, {3, 2, 1}, {3, 2, 0}, {2, 2, 1}};

bool window_fits(const Nhwc& s, const WindowCase& w) {
  return s.h + 2 * w.pad >= w.kernel && s.w + 2 * w.pad >= w.kernel;
}

std::string window_str(const Nhwc& s, const WindowCase& w) {
  return s.str() + " k" + std::to_string(w.kernel) + " s" + std::to_string(w.stride) + " p" + std::to_string(w.pad);
}

Tensor input_for(const Nhwc& s, uint64_t seed) { return leaf(random_tensor({s.n, s.h, s.w, s.c}, seed, DType::F32)); }

}  // namespace

// ---------------------------------------------------------------- pooling

TEST(CudaPool, MaxPoolMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 1;
  for (const Nhwc& s : kPoolShapes)
    for (const WindowCase& w : kWindows) {
      if (!window_fits(s, w)) continue;
      expect_all_dtypes([w](const std::vector<Tensor>& v) { return max_pool2d(v[0], w.kernel, w.stride, w.pad); },
                        {input_for(s, seed++)}, "max_pool2d " + window_str(s, w));
    }
}

TEST(CudaPool, AvgPoolMatchesCpuBothPadModes) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 100;
  for (bool include_pad : {true, false})
    for (const Nhwc& s : kPoolShapes)
      for (const WindowCase& w : kWindows) {
        if (!window_fits(s, w)) continue;
        expect_all_dtypes(
            [w, include_pad](const std::vector<Tensor>& v) {
              return avg_pool2d(v[0], w.kernel, w.stride, w.pad, include_pad);
            },
            {input_for(s, seed++)},
            "avg_pool2d " + window_str(s, w) + (include_pad ? " include_pad" : " exclude_pad"));
      }
}

TEST(CudaPool, AdaptiveAndGlobalAvgPoolMatchCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 200;
  for (const Nhwc& s : kPoolShapes) {
    const Tensor x = input_for(s, seed++);
    expect_all_dtypes([](const std::vector<Tensor>& v) { return global_avg_pool(v[0]); }, {x},
                      "global_avg_pool " + s.str());
    const std::vector<std::pair<int64_t, int64_t>> sizes = {{1, 1}, {s.h, 1}, {1, s.w}, {3, 5}, {2, 2}};
    for (const auto& [oh, ow] : sizes)
      expect_all_dtypes([oh = oh, ow = ow](const std::vector<Tensor>& v) { return adaptive_avg_pool2d(v[0], oh, ow); },
                        {x}, "adaptive_avg_pool2d " + s.str() + " -> " + std::to_string(oh) + "x" + std::to_string(ow));
  }
}

// Coordinate attention's poolings: one CUDA kernel each way (a timed trace
// sees one op where the composition has four), the CPU's values and gradients.
TEST(CudaPool, CoordPoolMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 250;
  for (const Nhwc& s : kPoolShapes) {
    const Tensor x = input_for(s, seed++);
    expect_all_dtypes([](const std::vector<Tensor>& v) { return coord_pool(v[0]); }, {x}, "coord_pool " + s.str());
  }
  const Tensor x = random_tensor({2, 5, 7, 9}, 260, DType::F32).to(Device::cuda());
  TraceRecorder profile(/*keep_tensors=*/false, /*timed=*/true);
  coord_pool(x);
  ASSERT_EQ(profile.events().size(), 1u);
  EXPECT_EQ(profile.events()[0].op, "coord_pool");
}

TEST(CudaPool, GlobalAvgPoolWideChannels) {
  KESTREL_REQUIRE_CUDA();
  // More than one 32-channel tile, a partial last tile, many pixels per lane.
  const Tensor x = leaf(random_tensor({3, 33, 33, 200}, 7, DType::F32));
  expect_all_dtypes([](const std::vector<Tensor>& v) { return global_avg_pool(v[0]); }, {x},
                    "global_avg_pool [3,33,33,200]");
}

TEST(CudaPool, ResizeBilinearUpAndDownMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 300;
  for (bool align : {false, true})
    for (const Nhwc& s : kPoolShapes) {
      const Tensor x = input_for(s, seed++);
      const std::vector<std::pair<int64_t, int64_t>> sizes = {
          {2 * s.h + 1, 3 * s.w}, {std::max<int64_t>(1, s.h / 2), std::max<int64_t>(1, s.w / 3)}, {1, 1}, {s.h, s.w}};
      for (const auto& [oh, ow] : sizes)
        expect_all_dtypes(
            [oh = oh, ow = ow, align](const std::vector<Tensor>& v) { return resize_bilinear(v[0], oh, ow, align); },
            {x},
            "resize_bilinear " + s.str() + " -> " + std::to_string(oh) + "x" + std::to_string(ow) +
                (align ? " align_corners" : ""));
    }
}

// ---------------------------------------------------------------- batch norm

namespace {

constexpr Activation kActivations[] = {Activation::None,    Activation::ReLU,      Activation::ReLU6,
                                       Activation::Sigmoid, Activation::Tanh,      Activation::SiLU,
                                       Activation::HardSwish, Activation::HardSigmoid, Activation::GELU};

struct BnInputs {
  Tensor x, w, b, rm, rv, res;
};

BnInputs bn_inputs(const Shape& shape, uint64_t seed) {
  const int64_t C = shape.back();
  BnInputs in;
  in.x = leaf(mul_scalar(random_tensor(shape, seed, DType::F32), 2.0));
  in.w = leaf(add_scalar(random_tensor({C}, seed + 1, DType::F32), 1.5));
  in.b = leaf(random_tensor({C}, seed + 2, DType::F32));
  in.rm = random_tensor({C}, seed + 3, DType::F32).detach();
  in.rv = add_scalar(random_tensor({C}, seed + 4, DType::F32), 1.2).detach();
  in.res = leaf(random_tensor(shape, seed + 5, DType::F32));
  return in;
}

BatchNormParams bn_params(bool training) {
  BatchNormParams p;
  p.training = training;
  p.momentum = 0.1;
  p.eps = 1e-5;
  return p;
}

// Inputs: x, weight, bias, running_mean, running_var (updated in place), residual (optional).
UnaryOp bn_op(bool training, Activation act, bool residual) {
  return [training, act, residual](const std::vector<Tensor>& v) {
    Tensor rm = v[3], rv = v[4];
    return batch_norm_act(v[0], v[1], v[2], rm, rv, bn_params(training), act, residual ? v[5] : Tensor());
  };
}

const std::vector<Shape> kBnShapes = {{2, 3, 5, 1}, {1, 2, 3, 7}, {4, 7, 7, 64}, {2, 3, 3, 200}};

}  // namespace

TEST(CudaBatchNorm, TrainAndEvalEveryActivationMatchCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 1;
  for (const Shape& shape : kBnShapes)
    for (Activation act : kActivations)
      for (bool training : {true, false})
        for (bool residual : {false, true}) {
          const BnInputs in = bn_inputs(shape, seed += 10);
          std::vector<Tensor> inputs = {in.x, in.w, in.b, in.rm, in.rv};
          if (residual) inputs.push_back(in.res);
          const std::string what = std::string("batch_norm_act ") + shape_str(shape) + " " + activation_name(act) +
                                   (training ? " train" : " eval") + (residual ? " +residual" : "");
          expect_cuda_matches_cpu(bn_op(training, act, residual), inputs, parity_tolerance(DType::F32), what);
          // f16/bf16 activations with f32 parameters and statistics (mixed precision).
          const std::vector<bool> lower = {true, false, false, false, false, true};
          for (DType dt : {DType::F16, DType::BF16}) {
            const BnInputs h = bn_inputs(shape, seed);
            std::vector<Tensor> hin = {h.x, h.w, h.b, h.rm, h.rv};
            if (residual) hin.push_back(h.res);
            expect_reduced_cuda_matches_f32(bn_op(training, act, residual), hin, dt, what + " " + dtype_name(dt),
                                            ReducedParity{1.0, 1.0, true, lower});
          }
        }
}

TEST(CudaBatchNorm, RunningStatisticsMatchCpuAfterForward) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 500;
  for (const Shape& shape : kBnShapes) {
    const BnInputs in = bn_inputs(shape, seed += 10);
    Tensor rm_cpu = in.rm.clone(), rv_cpu = in.rv.clone();
    Tensor rm_gpu = in.rm.to(Device::cuda()), rv_gpu = in.rv.to(Device::cuda());
    const BatchNormParams p = bn_params(true);
    for (int step = 0; step < 3; ++step) {
      const Tensor x = mul_scalar(random_tensor(shape, seed + step, DType::F32), 1.0 + step);
      batch_norm(x, in.w.detach(), in.b.detach(), rm_cpu, rv_cpu, p);
      const Tensor y = batch_norm(x.to(Device::cuda()), in.w.detach().to(Device::cuda()),
                                  in.b.detach().to(Device::cuda()), rm_gpu, rv_gpu, p);
      ASSERT_TRUE(y.device().is_cuda());
    }
    ASSERT_TRUE(rm_gpu.device().is_cuda());
    expect_close(rm_gpu.cpu(), rm_cpu, 1e-5, 1e-4, "running_mean " + shape_str(shape));
    expect_close(rv_gpu.cpu(), rv_cpu, 1e-5, 1e-4, "running_var " + shape_str(shape));
  }
}

TEST(CudaBatchNorm, ModuleCountsBatchesOnTheDevice) {
  KESTREL_REQUIRE_CUDA();
  nn::BatchNorm2d bn(7);
  bn.to(Device::cuda());
  bn.train();
  const Tensor x = random_tensor({2, 3, 3, 7}, 3, DType::F32).to(Device::cuda());
  for (int i = 0; i < 3; ++i) bn(x);
  bn.eval();
  bn(x);
  ASSERT_TRUE(bn.num_batches_tracked.device().is_cuda());
  EXPECT_EQ(bn.num_batches_tracked.cpu().item(), 3.0);
}

TEST(CudaBatchNorm, RejectsWhatTheKernelsCannotRun) {
  KESTREL_REQUIRE_CUDA();
  const BnInputs in = bn_inputs({2, 3, 3, 7}, 9);
  Tensor rm = in.rm.to(DType::F64).to(Device::cuda()), rv = in.rv.to(DType::F64).to(Device::cuda());
  const Tensor x64 = in.x.detach().to(DType::F64).to(Device::cuda());
  EXPECT_THROW(batch_norm(x64, in.w.detach().to(DType::F64).to(Device::cuda()),
                          in.b.detach().to(DType::F64).to(Device::cuda()), rm, rv, bn_params(true)),
               DTypeError);
  // f16 parameters: the CUDA path takes f32 parameters.
  Tensor rm32 = in.rm.to(Device::cuda()), rv32 = in.rv.to(Device::cuda());
  const Tensor x16 = in.x.detach().to(DType::F16).to(Device::cuda());
  EXPECT_THROW(batch_norm(x16, in.w.detach().to(DType::F16).to(Device::cuda()), in.b.detach().to(Device::cuda()),
                          rm32, rv32, bn_params(true)),
               DTypeError);
}

// ---------------------------------------------------------------- softmax and losses

namespace {

Tensor random_labels(int64_t n, int64_t classes, uint64_t seed) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int64_t>((seed * 2654435761u + 97 * i) % classes);
  return Tensor::from_vector_i64(v, {n});
}

Tensor logits_for(int64_t n, int64_t c, uint64_t seed) {
  return leaf(mul_scalar(random_tensor({n, c}, seed, DType::F32), 4.0));
}

// A soft target per row: positive, summing to one.
Tensor soft_targets(int64_t n, int64_t c, uint64_t seed) {
  NoGradGuard g;
  return softmax(mul_scalar(random_tensor({n, c}, seed, DType::F32), 3.0), 1).detach();
}

const std::vector<std::pair<int64_t, int64_t>> kLossShapes = {{1, 10}, {4, 10}, {1, 100}, {8, 100}, {1, 1000},
                                                               {3, 1000}};

}  // namespace

TEST(CudaSoftmax, EveryDimMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 1;
  const std::vector<Shape> shapes = {{3, 5, 7}, {1, 10}, {4, 1000}, {2, 33, 1}, {1}};
  for (const Shape& shape : shapes)
    for (int64_t dim = 0; dim < static_cast<int64_t>(shape.size()); ++dim)
      for (bool log : {false, true}) {
        const Tensor x = leaf(mul_scalar(random_tensor(shape, seed++, DType::F32), 3.0));
        expect_all_dtypes(
            [dim, log](const std::vector<Tensor>& v) { return log ? log_softmax(v[0], dim) : softmax(v[0], dim); },
            {x}, std::string(log ? "log_softmax " : "softmax ") + shape_str(shape) + " dim " + std::to_string(dim));
      }
}

TEST(CudaLoss, CrossEntropyWithLabelSmoothingMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 10;
  for (const auto& [n, c] : kLossShapes)
    for (double smoothing : {0.0, 0.1}) {
      const Tensor logits = logits_for(n, c, seed++);
      const Tensor labels = random_labels(n, c, seed++);
      const UnaryOp op = [smoothing](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1], smoothing); };
      const std::string what =
          "cross_entropy [" + std::to_string(n) + "," + std::to_string(c) + "] smoothing " + std::to_string(smoothing);
      expect_cuda_matches_cpu(op, {logits, labels}, parity_tolerance(DType::F32), what);
      expect_reduced_cuda_matches_f32(op, {logits, labels}, DType::F16, what + " f16");
      expect_reduced_cuda_matches_f32(op, {logits, labels}, DType::BF16, what + " bf16");
    }
}

TEST(CudaLoss, SoftCrossEntropyMatchesCpuWithTargetGradients) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 100;
  for (const auto& [n, c] : kLossShapes) {
    const Tensor logits = logits_for(n, c, seed++);
    const Tensor q = leaf(soft_targets(n, c, seed++));
    const UnaryOp op = [](const std::vector<Tensor>& v) { return cross_entropy_soft(v[0], v[1]); };
    const std::string what = "cross_entropy_soft [" + std::to_string(n) + "," + std::to_string(c) + "]";
    expect_cuda_matches_cpu(op, {logits, q}, parity_tolerance(DType::F32), what);
    expect_reduced_cuda_matches_f32(op, {logits, q}, DType::F16, what + " f16");
    expect_reduced_cuda_matches_f32(op, {logits, q}, DType::BF16, what + " bf16");
  }
}

TEST(CudaLoss, FocalLossMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 200;
  for (const auto& [n, c] : kLossShapes)
    for (double gamma : {0.0, 2.0})
      for (double alpha : {0.25, 1.0}) {
        const Tensor logits = logits_for(n, c, seed++);
        const Tensor labels = random_labels(n, c, seed++);
        expect_all_dtypes(
            [gamma, alpha](const std::vector<Tensor>& v) { return focal_loss(v[0], v[1], gamma, alpha); },
            {logits, labels},
            "focal_loss [" + std::to_string(n) + "," + std::to_string(c) + "] gamma " + std::to_string(gamma) +
                " alpha " + std::to_string(alpha));
      }
}

TEST(CudaLoss, DistillationKlMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  uint64_t seed = 300;
  for (const auto& [n, c] : kLossShapes)
    for (double temperature : {1.0, 4.0}) {
      const Tensor student = logits_for(n, c, seed++);
      const Tensor teacher = logits_for(n, c, seed++).detach();
      expect_all_dtypes(
          [temperature](const std::vector<Tensor>& v) { return kl_div_distill(v[0], v[1], temperature); },
          {student, teacher},
          "kl_div_distill [" + std::to_string(n) + "," + std::to_string(c) + "] T " + std::to_string(temperature));
    }
}

TEST(CudaLoss, ScalesTheBackwardByTheUpstreamGradientOnTheDevice) {
  KESTREL_REQUIRE_CUDA();
  // loss * 3 backpropagates 3 / N: the scale is read from the device tensor.
  const Tensor logits = logits_for(5, 10, 1);
  const Tensor labels = random_labels(5, 10, 2);
  Tensor g = logits.detach().to(Device::cuda());
  g.set_requires_grad(true);
  mul_scalar(cross_entropy(g, labels.to(Device::cuda()), 0.1), 3.0).backward();
  Tensor c = logits.detach().clone();
  c.set_requires_grad(true);
  mul_scalar(cross_entropy(c, labels, 0.1), 3.0).backward();
  expect_close(g.grad().cpu(), c.grad(), 1e-5, 1e-4, "cross_entropy * 3");
}

TEST(CudaLoss, RejectsBadLabelsAndUnsupportedDtypes) {
  KESTREL_REQUIRE_CUDA();
  const Tensor logits = logits_for(3, 10, 1).detach().to(Device::cuda());
  const Tensor bad = Tensor::from_vector_i64({1, 10, 2}, {3}).to(Device::cuda());
  EXPECT_THROW(cross_entropy(logits, bad), ValueError);
  EXPECT_THROW(focal_loss(logits, bad), ValueError);
  const Tensor labels = random_labels(3, 10, 4).to(Device::cuda());
  EXPECT_THROW(cross_entropy(logits.to(DType::F64), labels), DTypeError);
  EXPECT_THROW(cross_entropy(logits, labels.cpu()), DeviceError);
}
