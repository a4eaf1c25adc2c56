#include "test_util.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace kestrel::testing {

void expect_close(const Tensor& actual, const Tensor& expected, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(shape_str(actual.shape()), shape_str(expected.shape())) << what;
  const std::vector<double> a = actual.to_vector_f64(), e = expected.to_vector_f64();
  double worst_excess = -1.0, worst_err = 0.0;
  size_t worst = 0;
  bool bad = false;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::abs(a[i] - e[i]);
    const double allowed = atol + rtol * std::abs(e[i]);
    if (std::isnan(a[i]) != std::isnan(e[i]) || err > allowed) bad = true;
    if (std::isnan(a[i]) || err - allowed > worst_excess) {
      worst_excess = std::isnan(a[i]) ? 1e300 : err - allowed;
      worst_err = err;
      worst = i;
    }
  }
  if (bad) {
    ADD_FAILURE() << what << ": largest error " << worst_err << " at flat index " << worst << " (actual " << a[worst]
                  << ", expected " << e[worst] << "), tolerance atol=" << atol << " rtol=" << rtol << ", shape "
                  << shape_str(actual.shape());
  }
}

Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype) {
  Generator g(seed);
  return add_scalar(mul_scalar(Tensor::rand(shape, g, DType::F64), 2.0), -1.0).to(dtype);
}

void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      double eps, double atol, double rtol, uint64_t seed) {
  for (Tensor& t : inputs) {
    if (!t.defined()) continue;
    ASSERT_EQ(t.dtype(), DType::F64) << "gradcheck needs f64 inputs";
    t.zero_grad();
  }
  Tensor out = f(inputs);
  Tensor w = random_tensor(out.shape(), seed, DType::F64);
  Tensor loss = sum(mul(out, w));
  loss.backward();
  auto eval = [&]() {
    NoGradGuard g;
    return sum(mul(f(inputs), w)).item();
  };
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    ASSERT_TRUE(x.grad().defined()) << "input " << k << " received no gradient";
    const std::vector<double> analytic = x.grad().to_vector_f64();
    double* p = x.data<double>();
    ASSERT_TRUE(x.is_contiguous());
    double worst = 0.0;
    int64_t worst_i = -1;
    double worst_a = 0, worst_n = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double orig = p[i];
      p[i] = orig + eps;
      const double plus = eval();
      p[i] = orig - eps;
      const double minus = eval();
      p[i] = orig;
      const double numeric = (plus - minus) / (2 * eps);
      const double excess = std::abs(analytic[i] - numeric) - (atol + rtol * std::abs(numeric));
      if (excess > worst || std::isnan(analytic[i])) {
        worst = std::isnan(analytic[i]) ? 1e300 : excess;
        worst_i = i;
        worst_a = analytic[i];
        worst_n = numeric;
      }
    }
    EXPECT_LT(worst_i, 0) << "input " << k << " shape " << shape_str(x.shape()) << ": analytic gradient " << worst_a
                          << " vs finite difference " << worst_n << " at flat index " << worst_i << " (atol " << atol
                          << ", rtol " << rtol << ")";
  }
}

std::string python_with_torch() {
  for (const char* py : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = std::string(py) + " -c 'import torch' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

int run_python(const std::string& python, const std::string& script, const std::string& args) {
  const std::string cmd = python + " " + source_path(script) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  std::string output;
  while (fgets(buf, sizeof(buf), pipe)) output += buf;
  const int rc = pclose(pipe);
  std::cout << output;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("kestrel_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

std::string source_path(const std::string& relative) { return std::string(KESTREL_SOURCE_DIR) + "/" + relative; }

}  // namespace kestrel::testing
