// Shared test helpers: comparisons that print the worst element, finite
// difference gradient checks, and the Python interop runner.
#pragma once
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/autograd.h"
#include "engine/io/onnx_export.h"
#include "engine/nn/module.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "engine/trace.h"
#include "models/common.h"

namespace kestrel {
// gtest prints DType test parameters by name through this (argument-dependent lookup).
void PrintTo(DType dtype, std::ostream* os);
}  // namespace kestrel

// Skips a test in a build without ONNX export (it needs libonnx).
#define KESTREL_REQUIRE_ONNX()                 \
  if (!::kestrel::io::onnx_export_available()) \
  GTEST_SKIP() << "this build has no ONNX support (tools/setup.sh installs libonnx-dev)"

namespace kestrel::testing {

// Fails the test if any |a-b| > atol + rtol*|b|; reports the worst index.
void expect_close(const Tensor& actual, const Tensor& expected, double atol, double rtol = 0.0,
                  const std::string& what = "");

// Checks d(sum(f(inputs) * w))/d(inputs[i]) against central differences for
// every input with requires_grad. Inputs must be f64.
void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      double eps = 1e-6, double atol = 1e-6, double rtol = 1e-5, uint64_t seed = 7);

// Gives every batch norm of `model` random weights and biases and running
// statistics of `x` (one training-mode pass with momentum 1), then leaves it in
// eval mode: eval-mode activations stay O(1) and every BN parameter and buffer
// matters in a comparison.
void calibrate_batch_norms(nn::Module& model, const Tensor& x, uint64_t seed);

// The message of the Error (ValueError unless given) f throws; a test failure
// when it throws none.
template <typename Error = ValueError>
std::string expect_message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << (std::is_same_v<Error, ValueError> ? "expected a ValueError"
                                                      : "expected an error of the tested type");
  return "";
}

// Logits of `m` in eval mode, without gradients (the mode is left at eval).
Tensor eval_logits(nn::Module& m, const Tensor& x);

// Options for a zoo model: classes, the CIFAR stem, input channels, width.
models::ModelOptions zoo_options(int64_t classes, bool cifar_stem = false, int64_t in_channels = 3,
                                 double width_mult = 1.0);

// A zoo model with 10 classes and the CIFAR stem, seeded, in eval mode and
// fused for inference (models/fuse.h) at size x size x 3, as predict runs it.
nn::ModulePtr fused_cifar_stem_model(const std::string& name, int64_t size);

// How many events of `op` a trace recorded.
int64_t count_ops(const TraceRecorder& trace, const std::string& op);

// Random f64/f32 tensor with values in [-1, 1) (uniform) from a seeded generator.
Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::F64);

// A python3 that imports `module` (torch, onnxruntime) for interop tests:
// empty string when there is none.
std::string python_with(const std::string& module);
inline std::string python_with_torch() { return python_with("torch"); }
// Runs `python script args`, returns the exit code; output goes to the test log.
int run_python(const std::string& python, const std::string& script, const std::string& args);
// A path in this process's scratch folder, removed when the process exits
// (kept when KESTREL_KEEP_TEST_FILES is set, to look at a failure).
std::string temp_path(const std::string& name);
// A fresh image-folder data set under temp_path(name): {train,test}/{a,b,c}/N.png,
// 12 images of size x size RGB per class whose patterns (rows, columns,
// checkerboard) a small CNN separates. Returns its root.
std::string write_pattern_folder_dataset(const std::string& name, int size = 12);
// The rows of a training run's metrics.jsonl (one JSON object per epoch).
std::vector<nlohmann::json> read_metrics_jsonl(const std::string& run_dir);
// Writes a tensor as a NumPy .npy file (f32, f64 or i64) for Python reference scripts.
void save_npy(const std::string& path, const Tensor& t);
// Reads a .npy file written by numpy (f32, f64, i64; C order).
Tensor load_npy(const std::string& path);
std::string source_path(const std::string& relative);
std::string read_text(const std::string& path);

// Runs the built kestrel binary with stdout and stderr captured, under
// `launcher` (an mpirun command line, say) when one is given.
struct CliResult {
  int rc = 0;
  std::string out, err;
};
CliResult kestrel_cli(const std::string& args, const std::string& launcher = "");
// A failing command prints exactly one line, "kestrel: error: ...", containing `expect`.
void expect_one_line_error(const CliResult& r, const std::string& expect, const std::string& what);

}  // namespace kestrel::testing
