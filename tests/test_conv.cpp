// conv2d: forward and backward against naive loops, finite differences in f64,
// and PyTorch (tests/interop/check_conv.py).
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops/conv.h"
#include "engine/trace.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

namespace {

struct ConvCase {
  std::string name;
  int64_t n, h, w, c_in, c_out, kh, kw;
  Conv2dParams p;
  bool bias;
};

Conv2dParams params(int64_t stride, int64_t pad, int64_t dilation = 1, int64_t groups = 1) {
  Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.dilation_h = p.dilation_w = dilation;
  p.groups = groups;
  return p;
}

Conv2dParams params_hw(int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups) {
  Conv2dParams p;
  p.stride_h = sh;
  p.stride_w = sw;
  p.pad_h = ph;
  p.pad_w = pw;
  p.dilation_h = dh;
  p.dilation_w = dw;
  p.groups = groups;
  return p;
}

// Every variant the engine has a code path for, at odd sizes.
std::vector<ConvCase> forward_cases() {
  return {
      {"basic3x3", 2, 7, 7, 3, 5, 3, 3, params(1, 1), true},
      {"n1_h33_stride2", 1, 33, 33, 3, 4, 3, 3, params(2, 1), true},
      {"nopad_nobias", 2, 7, 9, 3, 4, 3, 3, params(1, 0), false},
      {"dilation2", 1, 9, 7, 4, 3, 3, 3, params(1, 2, 2), true},
      {"dilation3_rect_kernel", 2, 11, 8, 2, 3, 3, 2, params_hw(1, 2, 1, 0, 3, 2, 1), true},
      {"stride2_dilation2", 1, 13, 13, 3, 2, 3, 3, params(2, 2, 2), false},
      {"groups2", 2, 7, 7, 4, 6, 3, 3, params(1, 1, 1, 2), true},
      {"groups2_stride2_nobias", 1, 8, 8, 6, 4, 3, 3, params(2, 1, 1, 2), false},
      {"depthwise3x3", 2, 7, 7, 5, 5, 3, 3, params(1, 1, 1, 5), true},
      {"depthwise_stride2", 1, 33, 33, 3, 3, 3, 3, params(2, 1, 1, 3), true},
      {"depthwise5x5_dilation2", 2, 9, 9, 4, 4, 5, 5, params(1, 4, 2, 4), false},
      {"depthwise_multiplier2", 1, 7, 7, 3, 6, 3, 3, params(1, 1, 1, 3), true},
      {"pointwise", 2, 7, 7, 3, 7, 1, 1, params(1, 0), true},
      {"pointwise_groups2_nobias", 1, 5, 3, 4, 6, 1, 1, params(1, 0, 1, 2), false},
      {"pointwise_stride2", 1, 7, 7, 3, 4, 1, 1, params(2, 0), true},
      {"pointwise_padded", 1, 3, 3, 2, 3, 1, 1, params(1, 1), true},
      {"h1w1_pointwise", 3, 1, 1, 3, 5, 1, 1, params(1, 0), true},
      {"h1w1_3x3_pad1", 2, 1, 1, 3, 4, 3, 3, params(1, 1), true},
      {"h1w1_depthwise", 2, 1, 1, 3, 3, 3, 3, params(1, 1, 1, 3), true},
      {"single_channel", 1, 6, 5, 1, 1, 2, 3, params(1, 1), true},
  };
}

// Tiny versions for finite differences.
std::vector<ConvCase> gradcheck_cases() {
  return {
      {"basic3x3", 2, 4, 5, 3, 2, 3, 3, params(1, 1), true},
      {"stride2", 1, 5, 5, 2, 3, 3, 3, params(2, 1), true},
      {"dilation2", 1, 5, 6, 2, 2, 3, 3, params(1, 2, 2), true},
      {"groups2", 1, 4, 4, 4, 2, 3, 3, params(1, 1, 1, 2), true},
      {"depthwise", 2, 4, 4, 3, 3, 3, 3, params(1, 1, 1, 3), true},
      {"depthwise_stride2_dilation2", 1, 6, 5, 2, 2, 3, 3, params(2, 2, 2, 2), true},
      {"pointwise", 2, 3, 3, 3, 2, 1, 1, params(1, 0), true},
      {"pointwise_groups2", 1, 3, 2, 4, 2, 1, 1, params(1, 0, 1, 2), false},
      {"h1w1", 1, 1, 1, 2, 2, 3, 3, params(1, 1), true},
  };
}

Tensor make_weight(const ConvCase& c, uint64_t seed, DType dt) {
  return random_tensor({c.c_out, c.kh, c.kw, c.c_in / c.p.groups}, seed, dt);
}

// Plain loops over every output and tap, in f64.
Tensor naive_conv(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t O = w.size(0), KH = w.size(1), KW = w.size(2), CG = w.size(3);
  const int64_t OG = O / p.groups;
  const int64_t OH = (H + 2 * p.pad_h - p.dilation_h * (KH - 1) - 1) / p.stride_h + 1;
  const int64_t OW = (W + 2 * p.pad_w - p.dilation_w * (KW - 1) - 1) / p.stride_w + 1;
  const std::vector<double> xv = x.to_vector_f64(), wv = w.to_vector_f64();
  const std::vector<double> bv = b.defined() ? b.to_vector_f64() : std::vector<double>(O, 0.0);
  std::vector<double> y(N * OH * OW * O);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t o = 0; o < O; ++o) {
          const int64_t grp = o / OG;
          double acc = bv[o];
          for (int64_t kh = 0; kh < KH; ++kh)
            for (int64_t kw = 0; kw < KW; ++kw)
              for (int64_t ci = 0; ci < CG; ++ci) {
                const int64_t ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
                const int64_t iw = ow * p.stride_w - p.pad_w + kw * p.dilation_w;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += xv[((n * H + ih) * W + iw) * C + grp * CG + ci] * wv[((o * KH + kh) * KW + kw) * CG + ci];
              }
          y[((n * OH + oh) * OW + ow) * O + o] = acc;
        }
  return Tensor::from_vector_f64(y, {N, OH, OW, O});
}

// Naive input and weight gradients for upstream gradient gy, in f64.
void naive_conv_backward(const Tensor& x, const Tensor& w, const Tensor& gy_t, const Conv2dParams& p, Tensor& gx_t,
                         Tensor& gw_t) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t O = w.size(0), KH = w.size(1), KW = w.size(2), CG = w.size(3);
  const int64_t OG = O / p.groups, OH = gy_t.size(1), OW = gy_t.size(2);
  const std::vector<double> xv = x.to_vector_f64(), wv = w.to_vector_f64(), gy = gy_t.to_vector_f64();
  std::vector<double> gx(xv.size(), 0.0), gw(wv.size(), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t o = 0; o < O; ++o) {
          const double g = gy[((n * OH + oh) * OW + ow) * O + o];
          const int64_t grp = o / OG;
          for (int64_t kh = 0; kh < KH; ++kh)
            for (int64_t kw = 0; kw < KW; ++kw) {
              const int64_t ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
              const int64_t iw = ow * p.stride_w - p.pad_w + kw * p.dilation_w;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              for (int64_t ci = 0; ci < CG; ++ci) {
                const int64_t xi = ((n * H + ih) * W + iw) * C + grp * CG + ci;
                const int64_t wi = ((o * KH + kh) * KW + kw) * CG + ci;
                gx[xi] += g * wv[wi];
                gw[wi] += g * xv[xi];
              }
            }
        }
  gx_t = Tensor::from_vector_f64(gx, x.shape());
  gw_t = Tensor::from_vector_f64(gw, w.shape());
}

void run_forward_case(const ConvCase& c, DType dt, double atol) {
  SCOPED_TRACE(c.name);
  const Tensor x = random_tensor({c.n, c.h, c.w, c.c_in}, 1, dt);
  const Tensor w = make_weight(c, 2, dt);
  const Tensor b = c.bias ? random_tensor({c.c_out}, 3, dt) : Tensor();
  const Tensor y = conv2d(x, w, b, c.p);
  EXPECT_EQ(y.dtype(), dt);
  expect_close(y, naive_conv(x, w, b, c.p), atol, atol, c.name);
}

void run_backward_case(const ConvCase& c, DType dt, double atol) {
  SCOPED_TRACE(c.name);
  Tensor x = random_tensor({c.n, c.h, c.w, c.c_in}, 4, dt).set_requires_grad();
  Tensor w = make_weight(c, 5, dt).set_requires_grad();
  Tensor b = c.bias ? random_tensor({c.c_out}, 6, dt).set_requires_grad() : Tensor();
  Tensor y = conv2d(x, w, b, c.p);
  const Tensor gy = random_tensor(y.shape(), 7, dt);
  y.backward(gy);
  Tensor gx, gw;
  naive_conv_backward(x, w, gy, c.p, gx, gw);
  expect_close(x.grad(), gx, atol, atol, c.name + " grad input");
  expect_close(w.grad(), gw, atol, atol, c.name + " grad weight");
  if (c.bias) expect_close(b.grad(), sum(gy.to(DType::F64), {0, 1, 2}), atol, atol, c.name + " grad bias");
}

}  // namespace

TEST(Conv2d, OutputSizeFollowsTheStandardFormula) {
  EXPECT_EQ(conv_output_size(7, 3, 1, 1, 1), 7);
  EXPECT_EQ(conv_output_size(33, 3, 2, 1, 1), 17);
  EXPECT_EQ(conv_output_size(9, 3, 1, 2, 2), 9);
  EXPECT_EQ(conv_output_size(8, 3, 2, 0, 3), 1);
  EXPECT_EQ(conv_output_size(2, 3, 1, 0, 1), 0);
}

TEST(Conv2d, ForwardMatchesNaiveLoopsInFloat32) {
  for (const ConvCase& c : forward_cases()) run_forward_case(c, DType::F32, 1e-5);
}

TEST(Conv2d, ForwardMatchesNaiveLoopsInFloat64) {
  for (const ConvCase& c : forward_cases()) run_forward_case(c, DType::F64, 1e-12);
}

TEST(Conv2d, BackwardMatchesNaiveLoopsInFloat32) {
  for (const ConvCase& c : forward_cases()) run_backward_case(c, DType::F32, 2e-5);
}

// The depthwise forward keeps 64-byte channel blocks in registers and runs
// interior pixels four at a time: channel counts around the block sizes (16
// and 8 floats, 8 and 4 doubles) and widths with and without an interior.
std::vector<ConvCase> depthwise_block_cases() {
  std::vector<ConvCase> cases;
  for (int64_t c : {7, 8, 12, 16, 20, 27, 40})
    cases.push_back({"depthwise_c" + std::to_string(c), 2, 9, 11, c, c, 3, 3, params(1, 1, 1, c), c % 2 == 0});
  cases.push_back({"depthwise_stride2_c24", 1, 13, 17, 24, 24, 3, 3, params(2, 1, 1, 24), true});
  cases.push_back({"depthwise5x5_dilation2_c20", 1, 12, 14, 20, 20, 5, 5, params(1, 4, 2, 20), true});
  cases.push_back({"depthwise_nopad_c9", 1, 6, 12, 9, 9, 3, 3, params(1, 0, 1, 9), false});
  cases.push_back({"depthwise_narrow_c20", 1, 3, 2, 20, 20, 3, 3, params(1, 1, 1, 20), true});
  // The sliding kernel (dilation 1, stride 1 or 2, 3 or 5 taps across):
  // runs of 8 (stride 1) or 4 pixels, those that reach into the padding with
  // its columns read as zeros and only the row's pixels stored.
  cases.push_back({"depthwise_c16_w14", 2, 5, 14, 16, 16, 3, 3, params(1, 1, 1, 16), true});
  cases.push_back({"depthwise5x5_c20_w21", 1, 7, 21, 20, 20, 5, 5, params(1, 2, 1, 20), true});
  cases.push_back({"depthwise5x5_stride2_c33", 1, 11, 23, 33, 33, 5, 5, params(2, 2, 1, 33), false});
  cases.push_back({"depthwise5x5_c40_w7", 2, 7, 7, 40, 40, 5, 5, params(1, 2, 1, 40), true});  // all edges
  cases.push_back({"depthwise5x5_c24_w2", 1, 3, 2, 24, 24, 5, 5, params(1, 2, 1, 24), true});  // narrower than 5
  cases.push_back({"depthwise_stride2_c16_w7", 1, 7, 7, 16, 16, 3, 3, params(2, 1, 1, 16), true});
  cases.push_back({"depthwise5x5_stride2_c48_w14", 1, 6, 14, 48, 48, 5, 5, params(2, 2, 1, 48), true});
  cases.push_back({"depthwise_pad2_c17_w5", 1, 4, 5, 17, 17, 3, 3, params(1, 2, 1, 17), true});  // windows all padding
  return cases;
}

TEST(Conv2d, DepthwiseChannelBlocksMatchNaiveLoops) {
  for (const ConvCase& c : depthwise_block_cases()) {
    run_forward_case(c, DType::F32, 1e-5);
    run_forward_case(c, DType::F64, 1e-12);
  }
}

// The depthwise backward: the input gradient's sliding kernel (S * P input
// pixels from shared gy columns; at stride 2 the pixels of a group alternate
// between two sets of taps) and the weight gradient's register sums over
// interior columns, whose channels go in whole and half blocks with a
// per-element tail. Widths around the group sizes, both parities at stride 2,
// no padding, and 7 taps (the weight kernel only).
TEST(Conv2d, DepthwiseBackwardMatchesNaiveLoops) {
  std::vector<ConvCase> cases = depthwise_block_cases();
  for (int64_t w : {8, 15, 16, 17, 33})
    cases.push_back({"depthwise_stride2_w" + std::to_string(w), 2, 6, w, 16, 16, 3, 3, params(2, 1, 1, 16), true});
  cases.push_back({"depthwise_stride2_nopad_c40", 1, 9, 21, 40, 40, 3, 3, params(2, 0, 1, 40), false});
  cases.push_back({"depthwise5x5_stride2_w30_c24", 2, 9, 30, 24, 24, 5, 5, params(2, 2, 1, 24), true});
  cases.push_back({"depthwise5x5_w30_c48", 1, 6, 30, 48, 48, 5, 5, params(1, 2, 1, 48), false});
  cases.push_back({"depthwise_w37_c20", 2, 4, 37, 20, 20, 3, 3, params(1, 1, 1, 20), true});
  cases.push_back({"depthwise7x7_c24", 1, 10, 19, 24, 24, 7, 7, params(1, 3, 1, 24), true});
  cases.push_back({"depthwise_rect_pad_c16", 1, 8, 18, 16, 16, 3, 5, params_hw(1, 1, 1, 2, 1, 1, 16), true});
  for (const ConvCase& c : cases) {
    run_backward_case(c, DType::F32, 5e-5);
    run_backward_case(c, DType::F64, 1e-12);
  }
}

// The gradients that go through the AVX-512 kernels (KESTREL_NO_CONV_GEMM=1
// runs the BLAS path): at stride 1 the input gradient as the flipped,
// transposed convolution through the implicit GEMM (padding (k-1)d - p: 1x1,
// 3x3, dilated, 5x5 with less than "same" padding); the weight gradient
// through its own kernel, over im2col rows for a stem. Channel counts across the
// 32-channel panels and 12-row tiles, pixel counts that are not a multiple of
// 12, and one large enough for several reduction chunks.
TEST(Conv2d, GemmBackwardMatchesNaiveLoops) {
  const std::vector<ConvCase> cases = {
      {"pointwise_c20_to_40", 2, 7, 9, 20, 40, 1, 1, params(1, 0), true},
      {"pointwise_c45_to_33", 1, 5, 7, 45, 33, 1, 1, params(1, 0), false},
      {"pointwise_c160_to_80", 3, 4, 4, 160, 80, 1, 1, params(1, 0), true},
      {"pointwise_c7_to_13", 2, 3, 5, 7, 13, 1, 1, params(1, 0), false},
      {"pointwise_long_c24_to_17", 4, 37, 41, 24, 17, 1, 1, params(1, 0), true},
      {"dense3x3_c40_to_36", 2, 9, 11, 40, 36, 3, 3, params(1, 1), true},
      {"dense3x3_dilation2_c33_to_20", 1, 12, 10, 33, 20, 3, 3, params(1, 2, 2), false},
      {"dense5x5_pad1_c16_to_40", 1, 9, 8, 16, 40, 5, 5, params(1, 1), true},
      {"dense3x1_c70_to_12", 2, 6, 5, 70, 12, 3, 1, params_hw(1, 1, 1, 0, 1, 1, 1), false},
      // A stem (3 input channels): its weight gradient over im2col rows, here
      // in two chunks of whole images (the second adds to the first).
      {"stem3x3_two_im2col_chunks", 3, 256, 256, 3, 8, 3, 3, params(1, 1), true},
      {"stem7x7_stride2", 2, 21, 19, 3, 10, 7, 7, params(2, 3), false},
  };
  for (const ConvCase& c : cases) {
    run_backward_case(c, DType::F32, 2e-4);
    run_backward_case(c, DType::F64, 1e-12);
  }
}

TEST(Conv2d, FusedActivationEpilogueMatchesConvThenActivation) {
  std::vector<ConvCase> cases = depthwise_block_cases();
  cases.push_back({"pointwise_c20_to_40", 2, 7, 9, 20, 40, 1, 1, params(1, 0), true});
  cases.push_back({"stem3x3", 2, 9, 9, 3, 20, 3, 3, params(1, 1), true});
  cases.push_back({"groups2_nobias", 1, 8, 8, 6, 4, 3, 3, params(2, 1, 1, 2), false});
  NoGradGuard inference;
  for (Activation act : {Activation::ReLU, Activation::ReLU6, Activation::HardSwish, Activation::SiLU})
    for (const ConvCase& c : cases)
      for (DType dt : {DType::F32, DType::F64}) {
        const std::string what = c.name + " " + activation_name(act) + " " + dtype_name(dt);
        const Tensor x = mul_scalar(random_tensor({c.n, c.h, c.w, c.c_in}, 21, dt), 4.0);  // reach ReLU6's cap
        const Tensor w = make_weight(c, 22, dt);
        const Tensor b = c.bias ? random_tensor({c.c_out}, 23, dt) : Tensor();
        TraceRecorder rec;
        const Tensor y = conv2d_act(x, w, b, c.p, act);
        ASSERT_EQ(rec.events().size(), 1u) << what << ": expected one fused op";
        EXPECT_EQ(rec.events()[0].op, "conv2d_act") << what;
        const double tol = dt == DType::F32 ? 1e-4 : 1e-12;
        expect_close(y, activation(naive_conv(x, w, b, c.p), act), tol, tol, what);
      }
}

// With a residual: in the implicit GEMM's epilogue (f32, not depthwise; the
// weights packed for the call, as they are not frozen), else added in a pass
// of its own; either way traced as one op.
TEST(Conv2d, FusedResidualEpilogueMatchesConvPlusResidualThenActivation) {
  std::vector<ConvCase> cases = {depthwise_block_cases()[0]};
  cases.push_back({"pointwise_c20_to_40", 2, 7, 9, 20, 40, 1, 1, params(1, 0), true});
  cases.push_back({"dense3x3_c16_to_37", 2, 6, 5, 16, 37, 3, 3, params(1, 1), false});
  NoGradGuard inference;
  for (Activation act : {Activation::None, Activation::ReLU, Activation::SiLU})
    for (const ConvCase& c : cases)
      for (DType dt : {DType::F32, DType::F64}) {
        const std::string what = c.name + " " + activation_name(act) + " " + dtype_name(dt);
        const Tensor x = random_tensor({c.n, c.h, c.w, c.c_in}, 41, dt);
        const Tensor w = make_weight(c, 42, dt);
        const Tensor b = c.bias ? random_tensor({c.c_out}, 43, dt) : Tensor();
        const Tensor expected_conv = naive_conv(x, w, b, c.p);
        const Tensor residual = random_tensor(expected_conv.shape(), 44, dt);
        TraceRecorder rec;
        const Tensor y = conv2d_act(x, w, b, c.p, act, residual);
        ASSERT_EQ(rec.events().size(), 1u) << what << ": expected one fused op";
        EXPECT_EQ(rec.events()[0].op, "conv2d_act") << what;
        const double tol = dt == DType::F32 ? 1e-4 : 1e-12;
        expect_close(y, activation(add(expected_conv, residual.to(expected_conv.dtype())), act), tol, tol, what);
      }
  const ConvCase& c = cases[1];
  const Tensor x = random_tensor({c.n, c.h, c.w, c.c_in}, 45, DType::F32);
  try {
    conv2d_act(x, make_weight(c, 46, DType::F32), Tensor(), c.p, Activation::ReLU, Tensor::zeros({1, 7, 9, 40}));
    ADD_FAILURE() << "a residual of another shape was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("residual [1,7,9,40] f32 must match the output [2,7,9,40] f32"),
              std::string::npos)
        << e.what();
  }
}

TEST(Conv2d, FusedActivationWithAGradientFallsBackToConvThenActivation) {
  const ConvCase c = depthwise_block_cases()[4];
  const Tensor x = random_tensor({c.n, c.h, c.w, c.c_in}, 31, DType::F64).set_requires_grad();
  const Tensor w = make_weight(c, 32, DType::F64);
  expect_gradcheck([&](const std::vector<Tensor>& in) { return conv2d_act(in[0], w, Tensor(), c.p, Activation::SiLU); },
                   {x});
}

TEST(Conv2d, LargeInputsSpanSeveralIm2colChunksAndStillMatch) {
  // K = 3*3*128 and 64x64 outputs: one image per im2col chunk, three chunks.
  ConvCase c{"chunked", 3, 64, 64, 128, 5, 3, 3, params(1, 1), true};
  run_forward_case(c, DType::F32, 1e-4);
  run_backward_case(c, DType::F32, 1e-3);
}

TEST(Conv2d, BackwardMatchesFiniteDifferences) {
  for (const ConvCase& c : gradcheck_cases()) {
    SCOPED_TRACE(c.name);
    std::vector<Tensor> inputs{random_tensor({c.n, c.h, c.w, c.c_in}, 11).set_requires_grad(),
                               make_weight(c, 12, DType::F64).set_requires_grad(),
                               c.bias ? random_tensor({c.c_out}, 13).set_requires_grad() : Tensor()};
    const Conv2dParams p = c.p;
    expect_gradcheck([p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); }, inputs);
  }
}

TEST(Conv2d, DepthwiseBackwardMatchesFiniteDifferences) {
  for (int64_t stride : {1, 2}) {
    ConvCase c{"depthwise", 2, 5, 6, 4, 4, 3, 3, params(stride, 1, 1, 4), true};
    std::vector<Tensor> inputs{random_tensor({c.n, c.h, c.w, c.c_in}, 21).set_requires_grad(),
                               make_weight(c, 22, DType::F64).set_requires_grad(),
                               random_tensor({c.c_out}, 23).set_requires_grad()};
    const Conv2dParams p = c.p;
    expect_gradcheck([p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); }, inputs);
  }
}

TEST(Conv2d, GradientsFlowOnlyToInputsThatRequireThem) {
  const ConvCase c{"partial", 1, 5, 5, 3, 4, 3, 3, params(1, 1), true};
  Tensor x = random_tensor({1, 5, 5, 3}, 31);
  Tensor w = make_weight(c, 32, DType::F64).set_requires_grad();
  Tensor b = random_tensor({4}, 33);
  Tensor y = conv2d(x, w, b, c.p);
  y.backward(Tensor::ones(y.shape(), DType::F64));
  EXPECT_FALSE(x.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  ASSERT_TRUE(w.grad().defined());
  Tensor gx, gw;
  naive_conv_backward(x, w, Tensor::ones(y.shape(), DType::F64), c.p, gx, gw);
  expect_close(w.grad(), gw, 1e-12, 1e-12, "weight only");

  Tensor x2 = random_tensor({1, 5, 5, 3}, 34).set_requires_grad();
  Tensor y2 = conv2d(x2, w.detach(), Tensor(), c.p);
  y2.backward(Tensor::ones(y2.shape(), DType::F64));
  naive_conv_backward(x2, w, Tensor::ones(y2.shape(), DType::F64), c.p, gx, gw);
  expect_close(x2.grad(), gx, 1e-12, 1e-12, "input only");
}

TEST(Conv2d, NonContiguousInputsGiveTheSameResult) {
  const ConvCase c{"strided", 2, 6, 5, 3, 4, 3, 3, params(1, 1), true};
  const Tensor x_nchw = random_tensor({2, 3, 6, 5}, 41, DType::F32);
  const Tensor x = x_nchw.permute({0, 2, 3, 1});  // NHWC view of NCHW storage
  ASSERT_FALSE(x.is_contiguous());
  const Tensor w = make_weight(c, 42, DType::F32);
  const Tensor b = random_tensor({4}, 43, DType::F32);
  expect_close(conv2d(x, w, b, c.p), conv2d(x.contiguous(), w, b, c.p), 0.0, 0.0, "non-contiguous input");
}

TEST(Conv2d, BadShapesRaiseShapeErrorsThatNameTheProblem) {
  const Tensor x = Tensor::zeros({1, 8, 8, 6});
  auto message = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const ShapeError& e) {
      return e.what();
    }
    return "no ShapeError";
  };
  const std::string groups = message([&] { conv2d(x, Tensor::zeros({4, 3, 3, 2}), Tensor(), params(1, 1, 1, 4)); });
  EXPECT_NE(groups.find("groups=4 does not divide the 6 input channels"), std::string::npos) << groups;
  const std::string out_groups =
      message([&] { conv2d(x, Tensor::zeros({3, 3, 3, 3}), Tensor(), params(1, 1, 1, 2)); });
  EXPECT_NE(out_groups.find("does not divide the 3 output channels"), std::string::npos) << out_groups;
  const std::string channels = message([&] { conv2d(x, Tensor::zeros({4, 3, 3, 5}), Tensor(), params(1, 1)); });
  EXPECT_NE(channels.find("input has 6 channels but weight expects 5"), std::string::npos) << channels;
  EXPECT_NE(channels.find("[1,8,8,6]"), std::string::npos) << channels;
  const std::string bias = message([&] { conv2d(x, Tensor::zeros({4, 3, 3, 6}), Tensor::zeros({5}), params(1, 1)); });
  EXPECT_NE(bias.find("bias"), std::string::npos) << bias;
  const std::string big = message([&] { conv2d(x, Tensor::zeros({4, 5, 5, 6}), Tensor(), params(1, 0, 3)); });
  EXPECT_NE(big.find("does not fit"), std::string::npos) << big;
  EXPECT_THROW(conv2d(Tensor::zeros({8, 8, 6}), Tensor::zeros({4, 3, 3, 6}), Tensor(), params(1, 1)), ShapeError);
  EXPECT_THROW(conv2d(x, Tensor::zeros({4, 3, 3, 6}), Tensor(), params(0, 1)), ValueError);
  EXPECT_THROW(conv2d(x, Tensor::zeros({4, 3, 3, 6}, DType::F64), Tensor(), params(1, 1)), DTypeError);
}

TEST(Conv2d, TraceRecordsMultiplyAddsAndAttributes) {
  const Tensor x = Tensor::zeros({2, 8, 8, 6});
  const Tensor w = Tensor::zeros({4, 3, 3, 3});
  TraceRecorder rec;
  const Tensor y = conv2d(x, w, Tensor(), params(2, 1, 1, 2));
  ASSERT_EQ(rec.events().size(), 1u);
  const TraceEvent& e = rec.events()[0];
  EXPECT_EQ(e.op, "conv2d");
  EXPECT_EQ(e.output_shape, (Shape{2, 4, 4, 4}));
  EXPECT_EQ(e.macs, 2 * 4 * 4 * 4 * 3 * 3 * 3);
  EXPECT_EQ(e.attrs.at("groups"), "2");
  EXPECT_EQ(e.attrs.at("stride"), "2x2");
}

TEST(Conv2d, AllVariantsMatchPyTorchForwardAndBackward) {
  const std::string py = kestrel::testing::python_with_torch();
  if (py.empty()) GTEST_SKIP() << "python3 with torch not found; skipping the PyTorch interop check";
  const std::string dir = kestrel::testing::temp_path("conv_interop");
  std::filesystem::create_directories(dir);
  std::ofstream spec(dir + "/cases.txt");
  std::vector<ConvCase> cases = forward_cases();
  cases.push_back({"wide_depthwise", 2, 16, 16, 32, 32, 3, 3, params(1, 1, 1, 32), true});
  cases.push_back({"wide_pointwise", 2, 8, 8, 32, 48, 1, 1, params(1, 0), false});
  uint64_t seed = 100;
  for (const ConvCase& c : cases) {
    Tensor x = random_tensor({c.n, c.h, c.w, c.c_in}, seed++, DType::F32).set_requires_grad();
    Tensor w = make_weight(c, seed++, DType::F32).set_requires_grad();
    Tensor b = c.bias ? random_tensor({c.c_out}, seed++, DType::F32).set_requires_grad() : Tensor();
    Tensor y = conv2d(x, w, b, c.p);
    const Tensor gy = random_tensor(y.shape(), seed++, DType::F32);
    y.backward(gy);
    const std::string pre = dir + "/" + c.name + "_";
    kestrel::testing::save_npy(pre + "x.npy", x);
    kestrel::testing::save_npy(pre + "w.npy", w);
    kestrel::testing::save_npy(pre + "gy.npy", gy);
    kestrel::testing::save_npy(pre + "y.npy", y);
    kestrel::testing::save_npy(pre + "gx.npy", x.grad());
    kestrel::testing::save_npy(pre + "gw.npy", w.grad());
    if (c.bias) {
      kestrel::testing::save_npy(pre + "b.npy", b);
      kestrel::testing::save_npy(pre + "gb.npy", b.grad());
    }
    spec << c.name << " " << c.p.stride_h << " " << c.p.stride_w << " " << c.p.pad_h << " " << c.p.pad_w << " "
         << c.p.dilation_h << " " << c.p.dilation_w << " " << c.p.groups << " " << (c.bias ? 1 : 0) << "\n";
  }
  spec.close();
  EXPECT_EQ(kestrel::testing::run_python(py, "tests/interop/check_conv.py", dir), 0)
      << "tests/interop/check_conv.py found a mismatch (see its output above)";
}
