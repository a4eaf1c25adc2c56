#include "cuda_parity.h"

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
  return "no usable CUDA device: " + cuda::unavailable_reason();
#else
  return "Kestrel was built without CUDA (nvcc not found or KESTREL_CUDA=OFF)";
#endif
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

}  // namespace
#endif

void expect_cuda_matches_cpu(const OpFn& op, const std::vector<Tensor>& cpu_inputs, Tolerance tol,
                             const std::string& what, bool check_grads) {
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
  Tensor closs, gloss;
  for (size_t k = 0; k < cout.size(); ++k) {
    compare(gout[k], cout[k], tol, what + ": output " + std::to_string(k));
    if (!check_grads || !is_floating(cout[k].dtype()) || !cout[k].requires_grad()) continue;
    const Tensor w = random_tensor(cout[k].shape(), 1000 + k, cout[k].dtype());
    const Tensor cterm = sum(mul(cout[k], w));
    const Tensor gterm = sum(mul(gout[k], w.to(Device::cuda())));
    closs = closs.defined() ? add(closs, cterm) : cterm;
    gloss = gloss.defined() ? add(gloss, gterm) : gterm;
  }
  if (!closs.defined()) return;
  closs.backward();
  {
    PoisonScope poison;
    gloss.backward();
  }
  for (size_t i = 0; i < cin.size(); ++i) {
    if (!cin[i].defined() || !cin[i].requires_grad()) continue;
    const std::string name = what + ": gradient of input " + std::to_string(i);
    ASSERT_EQ(cin[i].grad().defined(), gin[i].grad().defined()) << name;
    if (cin[i].grad().defined()) compare(gin[i].grad(), cin[i].grad(), tol, name);
  }
#else
  (void)op, (void)cpu_inputs, (void)tol, (void)what, (void)check_grads;
  GTEST_SKIP() << cuda_skip_reason();
#endif
}

void expect_cuda_matches_cpu(const std::function<Tensor(const std::vector<Tensor>&)>& op,
                             const std::vector<Tensor>& cpu_inputs, Tolerance tol, const std::string& what,
                             bool check_grads) {
  expect_cuda_matches_cpu(OpFn([&op](const std::vector<Tensor>& in) { return std::vector<Tensor>{op(in)}; }),
                          cpu_inputs, tol, what, check_grads);
}

}  // namespace kestrel::testing
