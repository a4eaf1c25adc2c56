// CPU-vs-CUDA parity for engine ops: an op runs on CPU tensors and on CUDA
// copies of the same tensors; outputs and the gradients of every input that
// requires grad must agree within the dtype's tolerance. New CUDA memory is
// poisoned with NaN while the comparison runs, so an element the CUDA path
// never writes fails. Used by tests/test_cuda_*.cpp.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace kestrel::testing {

// Empty when a CUDA device is usable, else why not (build without CUDA, no device).
std::string cuda_skip_reason();

// At the top of a test: skips it, with the reason, when there is no usable device.
#define KESTREL_REQUIRE_CUDA()                                                         \
  do {                                                                                 \
    const std::string kestrel_skip_ = ::kestrel::testing::cuda_skip_reason();          \
    if (!kestrel_skip_.empty()) GTEST_SKIP() << kestrel_skip_;                         \
  } while (0)

struct Tolerance {
  double atol = 0.0;
  double rtol = 0.0;
};
// Stated per dtype: f64 1e-10, f32 1e-4 (abs and rel), f16 2e-3 / 5e-3, bf16 1.6e-2 / 2e-2.
Tolerance parity_tolerance(DType dtype);

using OpFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// Runs `op` on `cpu_inputs` and on their CUDA copies (requires_grad carried
// over). Compares every floating output; then backpropagates sum(out_k * w_k)
// with the same random weights w_k on both sides and compares the gradient of
// every input that requires grad. Integer outputs must match exactly.
// grad_tols[i], when given, holds input i's gradient instead of `tol`: a
// weight's gradient sums over every pixel and rounds more than an output.
void expect_cuda_matches_cpu(const OpFn& op, const std::vector<Tensor>& cpu_inputs, Tolerance tol,
                             const std::string& what, bool check_grads = true,
                             const std::vector<Tolerance>& grad_tols = {});

// The same for a one-output op.
void expect_cuda_matches_cpu(const std::function<Tensor(const std::vector<Tensor>&)>& op,
                             const std::vector<Tensor>& cpu_inputs, Tolerance tol, const std::string& what,
                             bool check_grads = true, const std::vector<Tolerance>& grad_tols = {});

// How a reduced-precision (f16/bf16) CUDA run is held against the CPU f32 run.
struct ReducedParity {
  double tol_scale = 1.0;       // on parity_tolerance(dtype), for outputs and gradients
  double grad_tol_scale = 1.0;  // on top of tol_scale, for gradients (they round more often)
  bool check_grads = true;
  std::vector<bool> lower;      // inputs the CUDA run gets in dtype (default: every floating one)
};

// f16/bf16 have no CPU kernels: runs `op` on CUDA with the (lowered) floating
// inputs in `dtype`, and on the CPU in f32 on the same dtype-rounded values;
// compares every output (which must be in `dtype` on CUDA), then the gradients
// of every input that requires grad, as expect_cuda_matches_cpu does.
void expect_reduced_cuda_matches_f32(const OpFn& op, const std::vector<Tensor>& f32_inputs, DType dtype,
                                     const std::string& what, const ReducedParity& how = {});
void expect_reduced_cuda_matches_f32(const std::function<Tensor(const std::vector<Tensor>&)>& op,
                                     const std::vector<Tensor>& f32_inputs, DType dtype, const std::string& what,
                                     const ReducedParity& how = {});

}  // namespace kestrel::testing
