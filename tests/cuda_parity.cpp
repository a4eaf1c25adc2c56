#include "cuda_parity.h"

#include <cstdlib>

#include "engine/autograd.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"
#include "test_util.h"

#if defined(KESTREL_HAVE_CUDA)
#include "engine/cuda/runtime.h"
#endif

namespace kestrel::testing {

std::string cuda_skip_reason() {
#if defined(KESTREL_HAVE_CUDA)
  if (cuda::cuda_available()) return "";
  const std::string reason = "no usable CUDA device: " + cuda::unavailable_reason();
#else
  const std::string reason = "Kestrel was built without CUDA (nvcc not found or KESTREL_CUDA=OFF)";
#endif
  // tools/gpu_check.sh sets it: on the GPU machine a skip would hide that nothing was tested.
  const char* required = std::getenv("KESTREL_REQUIRE_GPU");
  if (required != nullptr && std::string(required) == "1") ADD_FAILURE() << "KESTREL_REQUIRE_GPU=1 but " << reason;
  return reason;
}

Tolerance parity_tolerance(DType dtype) {
  switch (dtype) {
    case DType::F64: return {1e-10, 1e-10};
    case DType::F32: return {1e-4, 1e-4};
    case DType::F16: return {2e-3, 5e-3};
    case DType::BF16: return {1.6e-2, 2e-2};
    default: return {0.0, 0.0};
  }
}

#if defined(KESTREL_HAVE_CUDA)
namespace {

// Poisons new CUDA tensors for the lifetime of the scope.
struct PoisonScope {
  PoisonScope() { cuda::set_poison_allocations(true); }
  ~PoisonScope() { cuda::set_poison_allocations(false); }
};

std::vector<Tensor> to_cuda(const std::vector<Tensor>& inputs) {
  std::vector<Tensor> out;
  for (const Tensor& t : inputs) {
    if (!t.defined()) {
      out.emplace_back();
      continue;
    }
    Tensor c = t.detach().to(Device::cuda());
    if (t.requires_grad()) c.set_requires_grad(true);
    out.push_back(c);
  }
  return out;
}

void compare(const Tensor& gpu, const Tensor& cpu, Tolerance tol, const std::string& what) {
  ASSERT_TRUE(gpu.device().is_cuda()) << what << ": CUDA path returned a " << gpu.device().str() << " tensor";
  ASSERT_EQ(gpu.dtype(), cpu.dtype()) << what;
  if (is_floating(cpu.dtype()))
    expect_close(gpu.cpu(), cpu, tol.atol, tol.rtol, what);
  else
    EXPECT_EQ(gpu.cpu().to_vector_i64(), cpu.to_vector_i64()) << what;
}

// Backpropagates sum_k sum(out_k * w_k) on both sides with the same random
// weights w_k (in the CUDA output's dtype), over the floating outputs that
// require grad; false when there is none.
bool backprop_weighted_outputs(const std::vector<Tensor>& cout, const std::vector<Tensor>& gout) {
  Tensor closs, gloss;
  for (size_t k = 0; k < cout.size(); ++k) {
    if (!is_floating(cout[k].dtype()) || !cout[k].requires_grad()) continue;
    const Tensor w = random_tensor(cout[k].shape(), 1000 + k, gout[k].dtype());
    const Tensor cterm = sum(mul(cout[k], w.to(cout[k].dtype())));
    const Tensor gterm = sum(mul(gout[k], w.to(Device::cuda())));
    closs = closs.defined() ? add(closs, cterm) : cterm;
    gloss = gloss.defined() ? add(gloss, gterm) : gterm;
  }
  if (!closs.defined()) return false;
  closs.backward();
  PoisonScope poison;
  gloss.backward();
  return true;
}

}  // namespace
#endif

void expect_cuda_matches_cpu(const OpFn& op, const std::vector<Tensor>& cpu_inputs, Tolerance tol,
                             const std::string& what, bool check_grads, const std::vector<Tolerance>& grad_tols) {
#if defined(KESTREL_HAVE_CUDA)
  std::vector<Tensor> cin = cpu_inputs;
  for (Tensor& t : cin)
    if (t.defined()) t.zero_grad();
  std::vector<Tensor> gin = to_cuda(cin);
  std::vector<Tensor> cout = op(cin);
  std::vector<Tensor> gout;
  {
    PoisonScope poison;
    gout = op(gin);
  }
  ASSERT_EQ(cout.size(), gout.size()) << what;
  for (size_t k = 0; k < cout.size(); ++k) compare(gout[k], cout[k], tol, what + ": output " + std::to_string(k));
  if (!check_grads || !backprop_weighted_outputs(cout, gout)) return;
  for (size_t i = 0; i < cin.size(); ++i) {
    if (!cin[i].defined() || !cin[i].requires_grad()) continue;
    const std::string name = what + ": gradient of input " + std::to_string(i);
    ASSERT_EQ(cin[i].grad().defined(), gin[i].grad().defined()) << name;
    if (cin[i].grad().defined()) compare(gin[i].grad(), cin[i].grad(), i < grad_tols.size() ? grad_tols[i] : tol, name);
  }
#else
  (void)op, (void)cpu_inputs, (void)tol, (void)what, (void)check_grads, (void)grad_tols;
  GTEST_SKIP() << cuda_skip_reason();
#endif
}

void expect_cuda_matches_cpu(const std::function<Tensor(const std::vector<Tensor>&)>& op,
                             const std::vector<Tensor>& cpu_inputs, Tolerance tol, const std::string& what,
                             bool check_grads, const std::vector<Tolerance>& grad_tols) {
  expect_cuda_matches_cpu(OpFn([&op](const std::vector<Tensor>& in) { return std::vector<Tensor>{op(in)}; }),
                          cpu_inputs, tol, what, check_grads, grad_tols);
}

void expect_reduced_cuda_matches_f32(const OpFn& op, const std::vector<Tensor>& f32_inputs, DType dtype,
                                     const std::string& what, const ReducedParity& how) {
#if defined(KESTREL_HAVE_CUDA)
  std::vector<bool> lower = how.lower;
  lower.resize(f32_inputs.size(), true);
  std::vector<Tensor> cin, gin;
  for (size_t i = 0; i < f32_inputs.size(); ++i) {
    const Tensor& t = f32_inputs[i];
    const bool reduce = lower[i] && t.defined() && is_floating(t.dtype());
    Tensor c = reduce ? t.detach().to(dtype).to(DType::F32) : t.detach().clone();
    Tensor g = (reduce ? t.detach().to(dtype) : t.detach()).to(Device::cuda());
    if (t.requires_grad()) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    cin.push_back(c);
    gin.push_back(g);
  }
  const Tolerance tol{parity_tolerance(dtype).atol * how.tol_scale, parity_tolerance(dtype).rtol * how.tol_scale};
  const std::vector<Tensor> cout = op(cin);
  std::vector<Tensor> gout;
  {
    PoisonScope poison;
    gout = op(gin);
  }
  ASSERT_EQ(cout.size(), gout.size()) << what;
  for (size_t k = 0; k < cout.size(); ++k) {
    const std::string name = what + ": output " + std::to_string(k);
    ASSERT_TRUE(gout[k].device().is_cuda()) << name << ": CUDA path returned a " << gout[k].device().str() << " tensor";
    ASSERT_EQ(gout[k].dtype(), dtype) << name;
    expect_close(gout[k].cpu().to(DType::F32), cout[k], tol.atol, tol.rtol, name);
  }
  if (!how.check_grads || !backprop_weighted_outputs(cout, gout)) return;
  const Tolerance gtol{tol.atol * how.grad_tol_scale, tol.rtol * how.grad_tol_scale};
  for (size_t i = 0; i < cin.size(); ++i) {
    if (!cin[i].defined() || !cin[i].requires_grad()) continue;
    const std::string name = what + ": gradient of input " + std::to_string(i);
    ASSERT_EQ(cin[i].grad().defined(), gin[i].grad().defined()) << name;
    if (!cin[i].grad().defined()) continue;
    ASSERT_EQ(gin[i].grad().dtype(), gin[i].dtype()) << name;
    expect_close(gin[i].grad().cpu().to(DType::F32), cin[i].grad(), gtol.atol, gtol.rtol, name);
  }
#else
  (void)op, (void)f32_inputs, (void)dtype, (void)what, (void)how;
  GTEST_SKIP() << cuda_skip_reason();
#endif
}

void expect_reduced_cuda_matches_f32(const std::function<Tensor(const std::vector<Tensor>&)>& op,
                                     const std::vector<Tensor>& f32_inputs, DType dtype, const std::string& what,
                                     const ReducedParity& how) {
  expect_reduced_cuda_matches_f32(
      OpFn([&op](const std::vector<Tensor>& in) { return std::vector<Tensor>{op(in)}; }), f32_inputs, dtype, what,
      how);
}

}  // namespace kestrel::testing
