#include "engine/cpu/gemm.h"

#include <cblas.h>

#include <omp.h>

#include <climits>
#include <vector>

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

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_only(M, N, beta, C, ldc);
  check_blas_sizes(M, N, K, lda, ldb, ldc);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B,
              static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_only(M, N, beta, C, ldc);
  check_blas_sizes(M, N, K, lda, ldb, ldc);
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B,
              static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

template <typename T>
void column_sums(int64_t rows, int64_t cols, const T* a, T* out) {
  const bool parallel = rows * cols > 65536 && rows > 1;
  const int nthreads = parallel ? omp_get_max_threads() : 1;
  std::vector<T> partial(static_cast<size_t>(nthreads) * cols, T(0));
#pragma omp parallel num_threads(nthreads) if (parallel)
  {
    T* acc = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * cols;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = a + r * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) acc[c] += row[c];
    }
  }
  for (int64_t c = 0; c < cols; ++c) {
    T s = T(0);
    for (int t = 0; t < nthreads; ++t) s += partial[static_cast<int64_t>(t) * cols + c];
    out[c] = s;
  }
}

template void column_sums<float>(int64_t, int64_t, const float*, float*);
template void column_sums<double>(int64_t, int64_t, const double*, double*);

}  // namespace kestrel::cpu
