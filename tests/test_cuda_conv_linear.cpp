// CUDA conv2d, matmul and linear against the CPU backend (tests/cuda_parity.h):
// outputs and the gradients of every input, f32 with TF32 off at the f32
// tolerance, f16/bf16 at theirs, f64 GEMMs at the f64 tolerance. Conv cases
// cover each CUDA path: depthwise kernels (k 3/5/7, stride 1/2, dilation
// 1/2/3), 1x1 GEMM, and cuDNN (dense, strided, dilated, grouped).
// Tests needing a device skip without one; the host-side routing and error
// checks run in any CUDA build.
#include <gtest/gtest.h>

#include <cstdlib>
#include <ostream>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "engine/ops/conv.h"
#include "engine/ops/linear.h"
#include "test_util.h"

#if defined(KESTREL_HAVE_CUDA)
#include "engine/gpu/blas.h"
#include "engine/gpu/conv.h"
#endif

namespace kestrel::testing {
namespace {

using UnaryOp = std::function<Tensor(const std::vector<Tensor>&)>;

// Random f32 values that are exact in `dtype`, so an f32 CPU run sees the
// very inputs a half-precision CUDA run does.
Tensor input(const Shape& shape, uint64_t seed, DType dtype, bool requires_grad = true) {
  Tensor t = random_tensor(shape, seed, dtype == DType::F64 ? DType::F64 : DType::F32);
  if (dtype == DType::F16 || dtype == DType::BF16) t = t.to(dtype).to(DType::F32);
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

// f32/f64: op as is. f16/bf16: CUDA runs op on inputs cast to dtype, the CPU
// runs it in f32; both round the output to dtype, so the gradient flowing
// back is the same rounded tensor on both sides. What is left to differ is
// the CUDA path's accumulation order and the rounding of its results.
UnaryOp in_dtype(DType dtype, UnaryOp op) {
  if (dtype != DType::F16 && dtype != DType::BF16) return op;
  return [dtype, op](const std::vector<Tensor>& in) {
    const bool cuda = in.front().device().is_cuda();
    std::vector<Tensor> args;
    for (const Tensor& t : in) args.push_back(cuda && t.defined() ? t.to(dtype) : t);
    return op(args).to(dtype).to(DType::F32);
  };
}

// ---------------------------------------------------------------- conv2d

struct ConvCase {
  std::string kind;
  int64_t n, h, w, c_in, c_out, k, stride, pad, dilation, groups;
  bool bias;
};

std::string describe(const ConvCase& c, DType dtype) {
  return detail::concat(c.kind, " ", dtype_name(dtype), " x [", c.n, ",", c.h, ",", c.w, ",", c.c_in, "] -> ",
                        c.c_out, " k", c.k, " s", c.stride, " p", c.pad, " d", c.dilation, " g", c.groups,
                        c.bias ? " bias" : " no bias");
}

void expect_conv_parity(const ConvCase& c, DType dtype) {
  Conv2dParams p;
  p.stride_h = p.stride_w = c.stride;
  p.pad_h = p.pad_w = c.pad;
  p.dilation_h = p.dilation_w = c.dilation;
  p.groups = c.groups;
  std::vector<Tensor> inputs{input({c.n, c.h, c.w, c.c_in}, 1, dtype),
                             input({c.c_out, c.k, c.k, c.c_in / c.groups}, 2, dtype),
                             c.bias ? input({c.c_out}, 3, dtype) : Tensor()};
  const UnaryOp conv = [p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); };
  expect_cuda_matches_cpu(in_dtype(dtype, conv), inputs, parity_tolerance(dtype), describe(c, dtype));
}

std::vector<ConvCase> dense_cases() {
  return {
      {"dense 3x3", 2, 7, 7, 3, 17, 3, 1, 1, 1, 1, true},
      {"dense 3x3", 1, 33, 33, 17, 7, 3, 2, 1, 1, 1, false},
      {"dense 3x3", 1, 1, 1, 32, 32, 3, 1, 1, 1, 1, true},
      {"dense 3x3", 1, 7, 7, 7, 3, 3, 1, 0, 1, 1, true},
      {"1x1", 2, 7, 7, 17, 32, 1, 1, 0, 1, 1, true},
      {"1x1", 1, 33, 33, 32, 7, 1, 1, 0, 1, 1, false},
      {"1x1", 1, 1, 1, 3, 7, 1, 1, 0, 1, 1, true},
      {"1x1 stride 2", 1, 7, 7, 7, 3, 1, 2, 0, 1, 1, true},
      {"7x7 stride 2 pad 3", 1, 33, 33, 3, 32, 7, 2, 3, 1, 1, true},
      {"7x7 stride 2 pad 3", 2, 7, 7, 3, 7, 7, 2, 3, 1, 1, false},
      {"dense dilated", 1, 33, 33, 7, 17, 3, 1, 2, 2, 1, true},
      {"dense dilated", 2, 7, 7, 17, 7, 3, 2, 3, 3, 1, false},
      {"grouped", 2, 7, 7, 32, 32, 3, 1, 1, 1, 4, true},
      {"grouped", 1, 33, 33, 12, 6, 3, 2, 1, 1, 3, false},
      {"grouped 1x1", 1, 7, 7, 32, 16, 1, 1, 0, 1, 2, true},
      {"depthwise multiplier 2", 1, 7, 7, 7, 14, 3, 1, 1, 1, 7, true},
  };
}

// Every kernel size x stride x dilation, channels and sizes cycling through
// odd values; "same" padding.
std::vector<ConvCase> depthwise_cases() {
  const int64_t channels[] = {3, 7, 17, 32};
  const int64_t sizes[] = {7, 33, 1};
  std::vector<ConvCase> cases;
  int i = 0;
  for (int64_t k : {3, 5, 7})
    for (int64_t stride : {1, 2})
      for (int64_t dilation : {1, 2, 3}) {
        const int64_t c = channels[i % 4], hw = sizes[i % 3];
        cases.push_back({"depthwise", 1 + i % 2, hw, hw, c, c, k, stride, dilation * (k - 1) / 2, dilation, c,
                         i % 2 == 0});
        ++i;
      }
  return cases;
}

class CudaConvParity : public ::testing::TestWithParam<DType> {};

TEST_P(CudaConvParity, DenseOneByOneStridedDilatedAndGroupedMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  for (const ConvCase& c : dense_cases()) expect_conv_parity(c, GetParam());
}

TEST_P(CudaConvParity, DepthwiseKernelsMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  for (const ConvCase& c : depthwise_cases()) expect_conv_parity(c, GetParam());
}

TEST_P(CudaConvParity, NonSquareKernelAndAsymmetricStrideMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  for (const int64_t groups : {int64_t{1}, int64_t{7}}) {
    Conv2dParams p;
    p.stride_h = 2;
    p.pad_h = 2;
    p.pad_w = 1;
    p.dilation_w = 2;
    p.groups = groups;
    std::vector<Tensor> inputs{input({1, 9, 11, 7}, 4, dtype), input({7, 5, 3, 7 / groups}, 5, dtype),
                               input({7}, 6, dtype)};
    const UnaryOp conv = [p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); };
    expect_cuda_matches_cpu(in_dtype(dtype, conv), inputs, parity_tolerance(dtype),
                            detail::concat("5x3 kernel, groups ", groups, ", ", dtype_name(dtype)));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaConvParity, ::testing::Values(DType::F32, DType::F64, DType::F16, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

TEST(CudaConv, GradientOfTheInputAloneAndOfTheBiasAloneMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  for (const int64_t groups : {int64_t{1}, int64_t{17}}) {
    Conv2dParams p;
    p.pad_h = p.pad_w = 1;
    p.groups = groups;
    const Tensor x = input({2, 7, 7, 17}, 7, DType::F32);
    const Tensor w = input({17, 3, 3, 17 / groups}, 8, DType::F32, false);
    const Tensor b = input({17}, 9, DType::F32);
    const UnaryOp conv = [p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); };
    expect_cuda_matches_cpu(conv, {x, w, Tensor()}, parity_tolerance(DType::F32), "input gradient only");
    expect_cuda_matches_cpu(conv, {x.detach(), w, b}, parity_tolerance(DType::F32), "bias gradient only");
  }
}

// ---------------------------------------------------------------- matmul and linear

class CudaMatmulParity : public ::testing::TestWithParam<DType> {};

TEST_P(CudaMatmulParity, PlainTransposedAndStridedOperandsMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  const Tolerance tol = parity_tolerance(dtype);
  const UnaryOp plain = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  for (const Shape& mkn : {Shape{5, 7, 3}, Shape{1, 7, 1}, Shape{33, 17, 32}, Shape{7, 1, 17}})
    expect_cuda_matches_cpu(in_dtype(dtype, plain),
                            {input({mkn[0], mkn[1]}, 10, dtype), input({mkn[1], mkn[2]}, 11, dtype)}, tol,
                            detail::concat("matmul ", shape_str(mkn), " ", dtype_name(dtype)));
  // Transposed views (no copy: the GEMM reads them with the transpose flag).
  const UnaryOp transposed = [](const std::vector<Tensor>& in) {
    return matmul(in[0].transpose(0, 1), in[1].transpose(0, 1));
  };
  expect_cuda_matches_cpu(in_dtype(dtype, transposed), {input({7, 5}, 12, dtype), input({3, 7}, 13, dtype)}, tol,
                          detail::concat("matmul of transposed views ", dtype_name(dtype)));
  // Row-strided views (leading dimension larger than the row).
  const UnaryOp strided = [](const std::vector<Tensor>& in) {
    return matmul(in[0].narrow(1, 2, 7), in[1].narrow(1, 1, 3));
  };
  expect_cuda_matches_cpu(in_dtype(dtype, strided), {input({5, 12}, 14, dtype), input({7, 9}, 15, dtype)}, tol,
                          detail::concat("matmul of row-strided views ", dtype_name(dtype)));
}

TEST_P(CudaMatmulParity, LinearTwoAndThreeDimensionalInputWithAndWithoutBiasMatchesTheCpu) {
  KESTREL_REQUIRE_CUDA();
  const DType dtype = GetParam();
  const Tolerance tol = parity_tolerance(dtype);
  const UnaryOp lin = [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); };
  for (const bool bias : {true, false}) {
    const auto b = [&](int64_t out) { return bias ? input({out}, 22, dtype) : Tensor(); };
    expect_cuda_matches_cpu(in_dtype(dtype, lin), {input({5, 7}, 20, dtype), input({3, 7}, 21, dtype), b(3)}, tol,
                            detail::concat("linear 2-D ", dtype_name(dtype), bias ? " bias" : ""));
    expect_cuda_matches_cpu(in_dtype(dtype, lin),
                            {input({2, 5, 7}, 23, dtype), input({17, 7}, 24, dtype), b(17)}, tol,
                            detail::concat("linear 3-D ", dtype_name(dtype), bias ? " bias" : ""));
    expect_cuda_matches_cpu(in_dtype(dtype, lin),
                            {input({33, 32}, 25, dtype), input({17, 32}, 26, dtype), b(17)}, tol,
                            detail::concat("linear 33x32 -> 17 ", dtype_name(dtype), bias ? " bias" : ""));
    expect_cuda_matches_cpu(in_dtype(dtype, lin),
                            {input({1, 1}, 27, dtype), input({1, 1}, 28, dtype), b(1)}, tol,
                            detail::concat("linear 1 -> 1 ", dtype_name(dtype), bias ? " bias" : ""));
  }
  // Bias gradient over many rows: the column sums split the rows.
  expect_cuda_matches_cpu(in_dtype(dtype, lin),
                          {input({3000, 7}, 29, dtype, false), input({3, 7}, 30, dtype, false), input({3}, 31, dtype)},
                          tol, detail::concat("linear bias gradient over 3000 rows ", dtype_name(dtype)));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaMatmulParity, ::testing::Values(DType::F32, DType::F64, DType::F16, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

#if defined(KESTREL_HAVE_CUDA)

// Sets TF32 for a scope and restores the previous setting.
struct Tf32Scope {
  bool previous = gpu::tf32_enabled();
  explicit Tf32Scope(bool on) { gpu::set_tf32_enabled(on); }
  ~Tf32Scope() { gpu::set_tf32_enabled(previous); }
};

TEST(CudaMatmul, Tf32SwitchKeepsResultsCloseAndDefaultsOff) {
  if (std::getenv("KESTREL_TF32") == nullptr) {
    EXPECT_FALSE(gpu::tf32_enabled());
  }
  KESTREL_REQUIRE_CUDA();
  Tf32Scope tf32(true);
  EXPECT_TRUE(gpu::tf32_enabled());
  const UnaryOp plain = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  // TF32 keeps 10 mantissa bits: products are within ~1e-3 relative.
  expect_cuda_matches_cpu(plain, {input({33, 64}, 40, DType::F32), input({64, 17}, 41, DType::F32)}, {2e-2, 2e-2},
                          "matmul with TF32");
}

cpu::ConvGeom geometry(int64_t c_in, int64_t c_out, int64_t k, int64_t stride, int64_t pad, int64_t groups) {
  cpu::ConvGeom g;
  g.n = 1;
  g.h = g.w = 8;
  g.c_in = c_in;
  g.c_out = c_out;
  g.kh = g.kw = k;
  g.sh = g.sw = stride;
  g.ph = g.pw = pad;
  g.groups = groups;
  g.oh = g.ow = (8 + 2 * pad - k) / stride + 1;
  return g;
}

TEST(CudaConv, RoutesDepthwiseToTheKernelsOneByOneToGemmAndTheRestToCudnn) {
  using gpu::ConvPath;
  EXPECT_EQ(gpu::conv2d_path(geometry(32, 32, 3, 1, 1, 32), DType::F32), ConvPath::Depthwise);
  EXPECT_EQ(gpu::conv2d_path(geometry(17, 17, 7, 2, 3, 17), DType::BF16), ConvPath::Depthwise);
  EXPECT_EQ(gpu::conv2d_path(geometry(17, 17, 9, 1, 4, 17), DType::F32), ConvPath::Cudnn);     // kernel > 7
  EXPECT_EQ(gpu::conv2d_path(geometry(17, 17, 3, 1, 1, 17), DType::F64), ConvPath::Cudnn);     // no f64 kernels
  EXPECT_EQ(gpu::conv2d_path(geometry(7, 14, 3, 1, 1, 7), DType::F32), ConvPath::Cudnn);       // multiplier 2
  EXPECT_EQ(gpu::conv2d_path(geometry(17, 32, 1, 1, 0, 1), DType::F16), ConvPath::Gemm);
  EXPECT_EQ(gpu::conv2d_path(geometry(17, 32, 1, 2, 0, 1), DType::F32), ConvPath::Cudnn);      // strided 1x1
  EXPECT_EQ(gpu::conv2d_path(geometry(32, 32, 1, 1, 0, 4), DType::F32), ConvPath::Cudnn);      // grouped 1x1
  EXPECT_EQ(gpu::conv2d_path(geometry(3, 32, 3, 1, 1, 1), DType::F32), ConvPath::Cudnn);
}

TEST(CudaMatmul, GemmArgumentErrorsNameTheOpAndSizes) {
  try {
    gpu::gemm(0, DType::I32, false, false, 2, 3, 4, 1.0, nullptr, 4, nullptr, 3, 0.0, nullptr, 3, "my_op");
    FAIL() << "expected DTypeError";
  } catch (const DTypeError& e) {
    EXPECT_NE(std::string(e.what()).find("my_op"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("i32"), std::string::npos) << e.what();
  }
  try {
    gpu::gemm(0, DType::F32, false, false, -1, 3, 4, 1.0, nullptr, 4, nullptr, 3, 0.0, nullptr, 3, "my_op");
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("my_op: cuBLAS GEMM"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("M=-1 N=3 K=4"), std::string::npos) << e.what();
  }
}

#if defined(KESTREL_HAVE_CUDNN)
TEST(CudaConv, CudnnAlgorithmIsChosenOnceAndThenServedFromTheCache) {
  KESTREL_REQUIRE_CUDA();
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  // A shape no other test uses, so the first call is a miss.
  const Tensor x = random_tensor({1, 13, 11, 5}, 50, DType::F32).to(Device::cuda());
  const Tensor w = random_tensor({6, 3, 3, 5}, 51, DType::F32).to(Device::cuda());
  const gpu::ConvAlgoCacheStats start = gpu::conv_algo_cache_stats();
  const Tensor first = conv2d(x, w, Tensor(), p);
  const gpu::ConvAlgoCacheStats after_first = gpu::conv_algo_cache_stats();
  EXPECT_EQ(after_first.misses, start.misses + 1);
  EXPECT_EQ(after_first.hits, start.hits);
  const Tensor second = conv2d(x, w, Tensor(), p);
  const gpu::ConvAlgoCacheStats after_second = gpu::conv_algo_cache_stats();
  EXPECT_EQ(after_second.misses, after_first.misses);
  EXPECT_EQ(after_second.hits, after_first.hits + 1);
  expect_close(second.cpu(), first.cpu(), 0.0, 0.0, "the same algorithm gives the same bits");
}

// A ranked algorithm that cuDNN refuses when run (the emulator refuses
// algorithm 0 on request) gives way to the next, in all three directions, and
// the cache then starts from the one that ran.
TEST(CudaConv, RefusedAlgorithmGivesWayToTheNextOneAndTheCacheRemembers) {
  KESTREL_REQUIRE_CUDA();
#if !defined(KESTREL_CUDA_EMULATOR)
  GTEST_SKIP() << "needs the emulator's KESTREL_EMU_CUDNN_REFUSE_ALGO";
#endif
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  p.stride_w = 2;
  // A shape no other test uses, so every direction starts with a cache miss.
  const Tensor x = input({2, 9, 8, 6}, 60, DType::F32), w = input({5, 3, 3, 6}, 61, DType::F32);
  const UnaryOp conv = [p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), p); };
  ::setenv("KESTREL_EMU_CUDNN_REFUSE_ALGO", "0", 1);
  const gpu::ConvAlgoCacheStats start = gpu::conv_algo_cache_stats();
  expect_cuda_matches_cpu(conv, {x, w}, parity_tolerance(DType::F32), "refused algorithm 0, first call");
  const gpu::ConvAlgoCacheStats first = gpu::conv_algo_cache_stats();
  EXPECT_EQ(first.fallbacks, start.fallbacks + 3) << "forward, input gradient and weight gradient each fell back";
  expect_cuda_matches_cpu(conv, {x, w}, parity_tolerance(DType::F32), "refused algorithm 0, cached");
  EXPECT_EQ(gpu::conv_algo_cache_stats().fallbacks, first.fallbacks) << "the cache starts at the algorithm that ran";
  ::setenv("KESTREL_EMU_CUDNN_REFUSE_ALGO", "1", 1);  // now the only one left is refused too
  try {
    conv2d(x.to(Device::cuda()), w.to(Device::cuda()), Tensor(), p);
    ADD_FAILURE() << "no error when every algorithm is refused";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("every usable cuDNN algorithm was refused"), std::string::npos) << e.what();
  }
  ::unsetenv("KESTREL_EMU_CUDNN_REFUSE_ALGO");
}

TEST(CudaConv, BenchmarkModeTimesTheAlgorithmsOncePerShapeAndMatchesCpu) {
  KESTREL_REQUIRE_CUDA();
  struct BenchmarkScope {
    bool previous = gpu::cudnn_benchmark_enabled();
    BenchmarkScope() { gpu::set_cudnn_benchmark(true); }
    ~BenchmarkScope() { gpu::set_cudnn_benchmark(previous); }
  };
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  p.stride_h = p.stride_w = 2;
  const Tensor x = random_tensor({2, 9, 10, 7}, 52, DType::F32);
  const Tensor w = random_tensor({5, 3, 3, 7}, 53, DType::F32);
  const Tensor heuristic = conv2d(x.to(Device::cuda()), w.to(Device::cuda()), Tensor(), p);
  BenchmarkScope benchmark;
  const gpu::ConvAlgoCacheStats start = gpu::conv_algo_cache_stats();
  const Tensor timed = conv2d(x.to(Device::cuda()), w.to(Device::cuda()), Tensor(), p);
  EXPECT_EQ(gpu::conv_algo_cache_stats().misses, start.misses + 1) << "a measured choice is cached apart";
  (void)conv2d(x.to(Device::cuda()), w.to(Device::cuda()), Tensor(), p);
  EXPECT_EQ(gpu::conv_algo_cache_stats().misses, start.misses + 1) << "and measured once per shape";
  expect_close(timed.cpu(), conv2d(x, w, Tensor(), p), 1e-4, 1e-4, "conv2d with the measured algorithm vs CPU");
  expect_close(timed.cpu(), heuristic.cpu(), 1e-4, 1e-4, "measured vs heuristic algorithm");
  // All three directions timed on their own operands; the forward adds onto a
  // bias already in its output, which the timing runs must not overwrite.
  const UnaryOp with_bias = [p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); };
  expect_cuda_matches_cpu(with_bias,
                          {input({1, 7, 6, 7}, 55, DType::F32), input({5, 3, 3, 7}, 56, DType::F32),
                           input({5}, 57, DType::F32)},
                          parity_tolerance(DType::F32), "benchmark mode, bias and gradients");
}
#endif

#endif  // KESTREL_HAVE_CUDA

}  // namespace
}  // namespace kestrel::testing
