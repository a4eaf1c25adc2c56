#include "engine/cpu/gemm.h"

#include <cblas.h>

#include <omp.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "engine/cpu/parallel.h"
#include "engine/error.h"

namespace kestrel::cpu {

namespace {

// K == 0: the product is empty, C = beta * C (BLAS rejects a zero leading dimension).
template <typename T>
void scale_only(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
}

void check_blas_sizes(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  for (int64_t v : {M, N, K, lda, ldb, ldc})
    KCHECK(v <= INT_MAX, ShapeError, "gemm: dimension ", v, " exceeds the BLAS integer range (M=", M, " N=", N,
           " K=", K, ")");
}

// Raw single-threaded BLAS calls.
void gemm_call(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
              B, ldb, beta, C, ldc);
}
void gemm_call(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
               int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
              B, ldb, beta, C, ldc);
}
// y = alpha * op(A) x + beta * y, A rows x cols (row-major, leading dimension lda).
void gemv_call(bool trans, int rows, int cols, float alpha, const float* A, int lda, const float* x, int incx,
               float beta, float* y, int incy) {
  cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, rows, cols, alpha, A, lda, x, incx, beta, y, incy);
}
void gemv_call(bool trans, int rows, int cols, double alpha, const double* A, int lda, const double* x, int incx,
               double beta, double* y, int incy) {
  cblas_dgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, rows, cols, alpha, A, lda, x, incx, beta, y, incy);
}

// One row or one column of C is a matrix-vector product. As a GEMM, OpenBLAS
// packs the whole matrix before reading it once: a 1000-class classifier at
// batch 1 copied its 4 MB of weights per call (0.75 ms of MobileNetV3-Small's
// 3.2 ms on one thread, against 0.2 ms for onnxruntime's).
template <typename T>
void blas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  if (M == 1) {  // C[0, :] = a op(B), a = row 0 of op(A)
    const int inc_a = ta ? static_cast<int>(lda) : 1;
    if (tb)  // B is [N, K]
      gemv_call(false, n, k, alpha, B, static_cast<int>(ldb), A, inc_a, beta, C, 1);
    else  // B is [K, N]
      gemv_call(true, k, n, alpha, B, static_cast<int>(ldb), A, inc_a, beta, C, 1);
    return;
  }
  if (N == 1) {  // C[:, 0] = op(A) b, b = column 0 of op(B)
    const int inc_b = tb ? 1 : static_cast<int>(ldb);
    if (ta)  // A is [K, M]
      gemv_call(true, k, m, alpha, A, static_cast<int>(lda), B, inc_b, beta, C, static_cast<int>(ldc));
    else  // A is [M, K]
      gemv_call(false, m, k, alpha, A, static_cast<int>(lda), B, inc_b, beta, C, static_cast<int>(ldc));
    return;
  }
  gemm_call(ta, tb, m, n, k, alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta, C,
            static_cast<int>(ldc));
}

// OpenBLAS (pthreads build) keeps its own thread pool whose idle threads spin;
// beside our OpenMP pool they oversubscribe the cores. So BLAS runs
// single-threaded and gemm() splits the work over OpenMP threads itself.
void make_blas_single_threaded() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

constexpr double kParallelFlops = 1 << 18;

// Start of block b of n items split into parts pieces, rounded to multiples of `align`.
int64_t block_start(int64_t n, int parts, int b, int64_t align) {
  if (b >= parts) return n;
  const int64_t raw = n * b / parts;
  return std::min(n, (raw + align - 1) / align * align);
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_only(M, N, beta, C, ldc);
  check_blas_sizes(M, N, K, lda, ldb, ldc);
  make_blas_single_threaded();
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double flops = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  if (threads <= 1 || flops < kParallelFlops) return blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (M >= 16 * threads && M >= N) {  // rows of C
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      const int64_t m0 = block_start(M, threads, t, 8), m1 = block_start(M, threads, t + 1, 8);
      if (m1 > m0)
        blas(trans_a, trans_b, m1 - m0, N, K, alpha, trans_a ? A + m0 : A + m0 * lda, lda, B, ldb, beta,
             C + m0 * ldc, ldc);
    }
    return;
  }
  if (N >= 16 * threads) {  // columns of C
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      const int64_t n0 = block_start(N, threads, t, 8), n1 = block_start(N, threads, t + 1, 8);
      if (n1 > n0)
        blas(trans_a, trans_b, M, n1 - n0, K, alpha, A, lda, trans_b ? B + n0 * ldb : B + n0, ldb, beta, C + n0,
             ldc);
    }
    return;
  }
  if (K >= 64 * threads) {  // small C, long reduction (weight gradients): per-thread partial products
    std::vector<T> partial(static_cast<size_t>(threads) * M * N);
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      const int64_t k0 = block_start(K, threads, t, 8), k1 = block_start(K, threads, t + 1, 8);
      T* P = partial.data() + static_cast<int64_t>(t) * M * N;
      if (k1 > k0)
        blas(trans_a, trans_b, M, N, k1 - k0, T(1), trans_a ? A + k0 * lda : A + k0, lda,
             trans_b ? B + k0 : B + k0 * ldb, ldb, T(0), P, N);
      else
        std::fill(P, P + M * N, T(0));
    }
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        T s = T(0);
        for (int t = 0; t < threads; ++t) s += partial[(static_cast<int64_t>(t) * M + i) * N + j];
        T& c = C[i * ldc + j];
        c = (beta == T(0) ? T(0) : beta * c) + alpha * s;
      }
    return;
  }
  blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

template <typename T>
void column_sums(int64_t rows, int64_t cols, const T* a, T* out) {
  const int nthreads = partial_count(rows * cols > 65536 && rows > 1);
  std::vector<T> partial(static_cast<size_t>(nthreads) * cols, T(0));
  parallel_for_each_thread(rows, nthreads, [&](int t, int64_t r) {
    T* acc = partial.data() + static_cast<int64_t>(t) * cols;
    const T* row = a + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) acc[c] += row[c];
  });
  for (int64_t c = 0; c < cols; ++c) {
    T s = T(0);
    for (int t = 0; t < nthreads; ++t) s += partial[static_cast<int64_t>(t) * cols + c];
    out[c] = s;
  }
}

template void column_sums<float>(int64_t, int64_t, const float*, float*);
template void column_sums<double>(int64_t, int64_t, const double*, double*);

}  // namespace kestrel::cpu
