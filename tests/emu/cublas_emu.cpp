// The cuBLAS calls Kestrel makes, for the CPU emulator: GEMM as a plain
// column-major loop with f64 accumulation (tighter than any cuBLAS algorithm,
// so parity tests keep their meaning). beta == 0 leaves C unread, as BLAS does.
#include <cublas_v2.h>

#include <vector>

#include "tests/emu/cuda_emu.h"
#include "tests/emu/element.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
};

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED (emulator: refused during a capture)";
    default: return "CUBLAS_STATUS (not modelled by the emulator)";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  using kestrel::emu::element_kind;
  using kestrel::emu::load_element;
  using kestrel::emu::store_element;
  const int ta = element_kind(Atype), tb = element_kind(Btype), tc = element_kind(Ctype);
  if (ta < 0 || tb < 0 || tc < 0 || m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool ta_t = transa != CUBLAS_OP_N, tb_t = transb != CUBLAS_OP_N;
  if (lda < (ta_t ? k : m) || ldb < (tb_t ? n : k) || ldc < m) return CUBLAS_STATUS_INVALID_VALUE;
  const bool f64_scalars = compute == CUBLAS_COMPUTE_64F || compute == CUBLAS_COMPUTE_64F_PEDANTIC;
  const double a = f64_scalars ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double b = f64_scalars ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  // Queued on the handle's stream (recorded when it captures): scalars by value, as cuBLAS reads host ones.
  const cudaError_t queued = kestrel::emu::enqueue(handle->stream, [=] {
    // op(A) as rows [m][k] and op(B) as columns [n][k], so each dot product is contiguous.
    std::vector<double> ar(static_cast<size_t>(m) * k), bc(static_cast<size_t>(n) * k);
    for (int i = 0; i < m; ++i)
      for (int p = 0; p < k; ++p)
        ar[static_cast<size_t>(i) * k + p] =
            load_element(A, ta, ta_t ? p + static_cast<int64_t>(i) * lda : i + static_cast<int64_t>(p) * lda);
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p)
        bc[static_cast<size_t>(j) * k + p] =
            load_element(B, tb, tb_t ? j + static_cast<int64_t>(p) * ldb : p + static_cast<int64_t>(j) * ldb);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        const double* x = &ar[static_cast<size_t>(i) * k];
        const double* y = &bc[static_cast<size_t>(j) * k];
        double s = 0;
        for (int p = 0; p < k; ++p) s += x[p] * y[p];
        const int64_t at = i + static_cast<int64_t>(j) * ldc;
        const double old = b == 0.0 ? 0.0 : b * load_element(C, tc, at);
        store_element(C, tc, at, a * s + old);
      }
  });
  return queued == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"
