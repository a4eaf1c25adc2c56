// Row-major GEMM on the CPU through OpenBLAS.
#pragma once
#include <cstdint>

namespace kestrel::cpu {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, all row-major with
// leading dimensions lda, ldb, ldc (elements). op(X) = X^T when trans_x.
// Must not be called from inside an OpenMP parallel region: OpenBLAS threads itself.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

// out[c] = sum over r of a[r, c] for a contiguous [rows, cols] matrix (bias gradients).
// Per-thread partial sums reduced in thread order: deterministic for a thread count.
template <typename T>
void column_sums(int64_t rows, int64_t cols, const T* a, T* out);

}  // namespace kestrel::cpu
