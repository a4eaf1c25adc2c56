#include "engine/gpu/blas.h"

#include <cublas_v2.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>

#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "engine/gpu/library_handle.h"

namespace kestrel::gpu {

namespace {

// -1: not decided yet (read KESTREL_TF32 on first use), 0 off, 1 on.
std::atomic<int> g_tf32{-1};

[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const std::string& context) {
  throw DeviceError(detail::concat(context, ": ", call, " failed: ", cublasGetStatusString(status), " (status ",
                                   static_cast<int>(status), ")"));
}

#define KESTREL_CUBLAS_CHECK(call, context)                              \
  do {                                                                   \
    const cublasStatus_t kestrel_status_ = (call);                       \
    if (kestrel_status_ != CUBLAS_STATUS_SUCCESS)                        \
      throw_cublas_error(kestrel_status_, #call, (context));             \
  } while (0)

cublasHandle_t create_handle(int device) {
  cublasHandle_t handle = nullptr;
  KESTREL_CUBLAS_CHECK(cublasCreate(&handle), "cuBLAS handle for cuda:" + std::to_string(device));
  // Keep f16/bf16 reductions in f32: results then match an f32 reference.
  KESTREL_CUBLAS_CHECK(cublasSetMathMode(handle, static_cast<cublasMath_t>(
                                                     CUBLAS_DEFAULT_MATH |
                                                     CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                       "cuBLAS handle for cuda:" + std::to_string(device));
  return handle;
}

// The current device's handle, bound to its current stream (library_handle.h).
cublasHandle_t handle_for_current_stream() {
  thread_local LibraryHandles<cublasHandle_t> handles;
  return handles.get(create_handle, [](cublasHandle_t h, cudaStream_t stream) {
    KESTREL_CUBLAS_CHECK(cublasSetStream(h, stream), "binding the cuBLAS handle to the current stream");
  });
}

cublasOperation_t to_op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

struct GemmTypes {
  cudaDataType_t data;
  cublasComputeType_t compute;
};

GemmTypes gemm_types(DType dtype, const char* op) {
  switch (dtype) {
    case DType::F32: return {CUDA_R_32F, tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F};
    case DType::F16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F};
    case DType::BF16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F};
    case DType::F64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F};
    default: break;
  }
  throw DTypeError(detail::concat(op, ": CUDA matrix multiply supports f32, f16, bf16 and f64, not ",
                                  dtype_name(dtype)));
}

}  // namespace

bool tf32_enabled() {
  int state = g_tf32.load();
  if (state < 0) {
    const char* env = std::getenv("KESTREL_TF32");
    const int from_env = (env != nullptr && std::string(env) == "1") ? 1 : 0;
    g_tf32.compare_exchange_strong(state, from_env);
    state = g_tf32.load();
  }
  return state == 1;
}

void set_tf32_enabled(bool on) { g_tf32.store(on ? 1 : 0); }

void gemm(int device, DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const void* A, int64_t lda, const void* B, int64_t ldb, double beta, void* C, int64_t ldc, const char* op) {
  const auto context = [&] {
    return detail::concat(op, ": cuBLAS GEMM on cuda:", device, ", ", dtype_name(dtype), " M=", M, " N=", N, " K=", K,
                          " trans_a=", trans_a, " trans_b=", trans_b, " lda=", lda, " ldb=", ldb, " ldc=", ldc);
  };
  KCHECK(M >= 0 && N >= 0 && K >= 0, ValueError, context(), ": negative size");
  KCHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
         ValueError, context(), ": sizes beyond 32-bit integers are not supported");
  if (M == 0 || N == 0) return;
  const GemmTypes types = gemm_types(dtype, op);
  cuda::DeviceGuard guard(device);
  if (K == 0 && beta == 0.0) {  // an empty sum: C = 0 (BLAS leaves C unread when beta is 0)
    const size_t elem = dtype_size(dtype);
    KESTREL_CUDA_CHECK_CTX(cudaMemset2DAsync(C, static_cast<size_t>(ldc) * elem, 0, static_cast<size_t>(N) * elem,
                                             static_cast<size_t>(M), cuda::current_stream(device)),
                           context());
    return;
  }
  cublasHandle_t handle = handle_for_current_stream();
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a
  // row-major matrix read column-major is its transpose: swap the operands
  // and keep each one's transpose flag.
  const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
  const bool f64 = dtype == DType::F64;
  const void* alpha_p = f64 ? static_cast<const void*>(&alpha) : static_cast<const void*>(&alpha_f);
  const void* beta_p = f64 ? static_cast<const void*>(&beta) : static_cast<const void*>(&beta_f);
  const cublasStatus_t status =
      cublasGemmEx(handle, to_op(trans_b), to_op(trans_a), static_cast<int>(N), static_cast<int>(M),
                   static_cast<int>(K), alpha_p, B, types.data, static_cast<int>(ldb), A, types.data,
                   static_cast<int>(lda), beta_p, C, types.data, static_cast<int>(ldc), types.compute,
                   CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, "cublasGemmEx", context());
}

}  // namespace kestrel::gpu
