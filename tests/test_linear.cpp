// matmul and linear: naive loops, finite differences, PyTorch.
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include "engine/cpu/gemm.h"
#include "engine/ops/linear.h"
#include "engine/trace.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

namespace {

Tensor naive_matmul(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const std::vector<double> av = a.to_vector_f64(), bv = b.to_vector_f64();
  std::vector<double> c(M * N, 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) c[i * N + j] += av[i * K + k] * bv[k * N + j];
  return Tensor::from_vector_f64(c, {M, N});
}

}  // namespace

TEST(Matmul, MatchesNaiveLoopsAtOddShapes) {
  for (auto [m, k, n] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {3, 5, 7}, {33, 17, 1}, {1, 64, 9}, {65, 3, 40}}) {
    for (DType dt : {DType::F32, DType::F64}) {
      const Tensor a = random_tensor({m, k}, 1, dt), b = random_tensor({k, n}, 2, dt);
      const Tensor c = matmul(a, b);
      EXPECT_EQ(c.dtype(), dt);
      expect_close(c, naive_matmul(a, b), dt == DType::F32 ? 1e-5 : 1e-12, 1e-5,
                   "matmul " + shape_str({m, k, n}));
    }
  }
}

TEST(Matmul, LargeProductsSplitAcrossThreadsStillMatch) {
  // Shapes chosen to take each split of cpu::gemm: rows, columns, and the reduction dim.
  for (auto [m, k, n] : std::vector<std::array<int64_t, 3>>{{300, 64, 20}, {20, 64, 300}, {8, 8192, 6}}) {
    const Tensor a = random_tensor({m, k}, 30, DType::F32), b = random_tensor({k, n}, 31, DType::F32);
    expect_close(matmul(a, b), naive_matmul(a, b), 1e-4, 1e-4, "matmul " + shape_str({m, k, n}));
  }
  Tensor x = random_tensor({8, 8192}, 32, DType::F64).set_requires_grad();
  Tensor w = random_tensor({6, 8192}, 33, DType::F64).set_requires_grad();
  Tensor b = random_tensor({6}, 34, DType::F64).set_requires_grad();
  Tensor y = linear(x, w, b);
  expect_close(y, add(naive_matmul(x, w.transpose(0, 1).contiguous()), b), 1e-10, 1e-10, "linear with bias, split K");
  const Tensor gy = random_tensor(y.shape(), 35, DType::F64);
  y.backward(gy);
  expect_close(x.grad(), naive_matmul(gy, w), 1e-10, 1e-10, "grad x");
  expect_close(w.grad(), naive_matmul(gy.transpose(0, 1).contiguous(), x), 1e-10, 1e-10, "grad w");
}

// One row or one column of C is BLAS's matrix-vector product: every
// transpose, leading dimensions wider than the matrix, beta 0 and 1, and sizes
// the threads split.
TEST(Gemm, SingleRowsAndColumnsMatchNaiveLoopsInEveryLayout) {
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{1, 7, 5}, {6, 1, 5}, {1, 600, 1024}, {700, 1, 512}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.f, 1.f}) {
          const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 3, ldc = N + 3;
          const std::vector<float> a = random_tensor({(ta ? K : M) * lda}, 40).to_vector();
          const std::vector<float> b = random_tensor({(tb ? N : K) * ldb}, 41).to_vector();
          std::vector<float> c = random_tensor({M * ldc}, 42).to_vector();
          std::vector<double> want(c.begin(), c.end());
          const float alpha = 0.5f;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double sum = 0;
              for (int64_t k = 0; k < K; ++k)
                sum += static_cast<double>(ta ? a[k * lda + i] : a[i * lda + k]) *
                       static_cast<double>(tb ? b[j * ldb + k] : b[k * ldb + j]);
              want[i * ldc + j] = alpha * sum + beta * want[i * ldc + j];
            }
          cpu::gemm<float>(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j)
              ASSERT_NEAR(c[i * ldc + j], want[i * ldc + j], 1e-4 * (1 + std::abs(want[i * ldc + j])))
                  << "M " << M << " N " << N << " K " << K << " ta " << ta << " tb " << tb << " beta " << beta
                  << " at " << i << "," << j;
          for (int64_t i = 0; i < M; ++i)  // the padding past each row of C is untouched
            for (int64_t j = N; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], static_cast<float>(want[i * ldc + j]));
        }
}

TEST(Matmul, TransposedAndStridedOperandsNeedNoCopyAndStayCorrect) {
  const Tensor at = random_tensor({6, 4}, 3, DType::F32);  // a = at^T is [4,6], column-major
  const Tensor b_wide = random_tensor({6, 10}, 4, DType::F32);
  const Tensor b = b_wide.narrow(1, 2, 5);  // row stride 10, 5 columns
  expect_close(matmul(at.transpose(0, 1), b), naive_matmul(at.transpose(0, 1).contiguous(), b.contiguous()), 1e-5,
               1e-5, "transposed a, narrowed b");
  const Tensor bt = random_tensor({5, 6}, 5, DType::F32);
  expect_close(matmul(at.transpose(0, 1), bt.transpose(0, 1)),
               naive_matmul(at.transpose(0, 1).contiguous(), bt.transpose(0, 1).contiguous()), 1e-5, 1e-5,
               "both transposed");
}

TEST(Matmul, BackwardMatchesFiniteDifferences) {
  expect_gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); },
                   {random_tensor({3, 4}, 6).set_requires_grad(), random_tensor({4, 5}, 7).set_requires_grad()});
  // Through transposed views: gradients must land in the base tensors' layout.
  expect_gradcheck(
      [](const std::vector<Tensor>& in) { return matmul(in[0].transpose(0, 1), in[1].transpose(0, 1)); },
      {random_tensor({4, 3}, 8).set_requires_grad(), random_tensor({2, 4}, 9).set_requires_grad()});
}

TEST(Matmul, MismatchedInnerDimensionsRaiseAShapeError) {
  try {
    matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5}));
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[2,3] x [4,5]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(matmul(Tensor::zeros({2, 3, 1}), Tensor::zeros({3, 5})), ShapeError);
}

TEST(Linear, MatchesNaiveLoopsWithAndWithoutBiasAndLeadingDims) {
  for (DType dt : {DType::F32, DType::F64}) {
    const double tol = dt == DType::F32 ? 1e-5 : 1e-12;
    const Tensor x = random_tensor({2, 3, 7}, 10, dt), w = random_tensor({5, 7}, 11, dt), b = random_tensor({5}, 12, dt);
    const Tensor ref = naive_matmul(x.reshape({6, 7}), w.transpose(0, 1).contiguous()).reshape({2, 3, 5});
    expect_close(linear(x, w, Tensor()), ref, tol, tol, "no bias");
    expect_close(linear(x, w, b), add(ref, b.to(DType::F64)), tol, tol, "bias");
    const Tensor x1 = random_tensor({7}, 13, dt);
    const Tensor y1 = linear(x1, w, b);
    EXPECT_EQ(y1.shape(), (Shape{5}));
    const Tensor ref1 = naive_matmul(x1.reshape({1, 7}), w.transpose(0, 1).contiguous()).reshape({5});
    expect_close(y1, add(ref1, b.to(DType::F64)), tol, tol, "one sample, no batch dimension");
  }
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  expect_gradcheck([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); },
                   {random_tensor({2, 3, 4}, 14).set_requires_grad(), random_tensor({5, 4}, 15).set_requires_grad(),
                    random_tensor({5}, 16).set_requires_grad()});
  expect_gradcheck([](const std::vector<Tensor>& in) { return linear(in[0], in[1], Tensor()); },
                   {random_tensor({1, 3}, 17).set_requires_grad(), random_tensor({2, 3}, 18).set_requires_grad()});
}

TEST(Linear, WrongFeatureCountRaisesAShapeErrorNamingBothShapes) {
  try {
    linear(Tensor::zeros({8, 10}), Tensor::zeros({4, 12}), Tensor());
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("10 features"), std::string::npos) << m;
    EXPECT_NE(m.find("[4,12]"), std::string::npos) << m;
  }
  EXPECT_THROW(linear(Tensor::zeros({8, 12}), Tensor::zeros({4, 12}), Tensor::zeros({3})), ShapeError);
}

TEST(Linear, TraceRecordsMultiplyAdds) {
  TraceRecorder rec;
  linear(Tensor::zeros({8, 12}), Tensor::zeros({4, 12}), Tensor::zeros({4}));
  ASSERT_EQ(rec.events().size(), 1u);
  EXPECT_EQ(rec.events()[0].macs, 8 * 12 * 4);
}

TEST(Linear, MatchesPyTorchForwardAndBackward) {
  const std::string py = kestrel::testing::python_with_torch();
  if (py.empty()) GTEST_SKIP() << "python3 with torch not found; skipping the PyTorch interop check";
  const std::string dir = kestrel::testing::temp_path("linear_interop");
  std::filesystem::create_directories(dir);
  Tensor x = random_tensor({4, 3, 33}, 20, DType::F32).set_requires_grad();
  Tensor w = random_tensor({17, 33}, 21, DType::F32).set_requires_grad();
  Tensor b = random_tensor({17}, 22, DType::F32).set_requires_grad();
  Tensor y = linear(x, w, b);
  const Tensor gy = random_tensor(y.shape(), 23, DType::F32);
  y.backward(gy);
  using kestrel::testing::save_npy;
  for (auto& [name, t] : std::vector<std::pair<std::string, Tensor>>{
           {"x", x}, {"w", w}, {"b", b}, {"gy", gy}, {"y", y}, {"gx", x.grad()}, {"gw", w.grad()}, {"gb", b.grad()}})
    save_npy(dir + "/" + name + ".npy", t);
  EXPECT_EQ(kestrel::testing::run_python(py, "tests/interop/check_linear.py", dir), 0)
      << "tests/interop/check_linear.py found a mismatch (see its output above)";
}
