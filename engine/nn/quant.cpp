#include "engine/nn/quant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/quantize.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"

namespace kestrel::nn {

namespace {

thread_local bool g_calibrating = false;

// The activations quantize_activation returned and that are still alive.
struct QuantizedTensor {
  std::weak_ptr<Storage> storage;
  int64_t offset;
  Shape shape;
  float scale;
};
thread_local std::vector<QuantizedTensor> g_quantized;

const QuantizedTensor* find_quantized(const Tensor& x) {
  for (const QuantizedTensor& q : g_quantized) {
    const auto s = q.storage.lock();
    if (s && s == x.storage() && q.offset == x.offset() && q.shape == x.shape()) return &q;
  }
  return nullptr;
}

void remember_quantized(const Tensor& x, float scale) {
  g_quantized.erase(std::remove_if(g_quantized.begin(), g_quantized.end(),
                                   [](const QuantizedTensor& q) { return q.storage.expired(); }),
                    g_quantized.end());
  g_quantized.push_back({x.storage(), x.offset(), x.shape(), scale});
}

constexpr double kMinAverageWeight = 0.01;

// Updates the layer's range buffer (a handle) from x; returns its new values.
std::vector<float> observe(Tensor range, const Tensor& x) {
  NoGradGuard no_grad;
  const Tensor flat = x.detach().reshape({-1});
  // The batch's extremes and the running range in one read (one device sync on CUDA).
  const std::vector<float> read =
      concat({max(flat, 0, true), neg(max(neg(flat), 0, true)), range.detach()}, 0).cpu().to_vector();
  const float hi = read[0], lo = read[1];
  std::vector<float> r(read.begin() + 2, read.end());
  const double n = r[2];
  const double w = std::max(1.0 / (n + 1.0), kMinAverageWeight);
  r[0] = static_cast<float>(n == 0 ? lo : r[0] + w * (lo - r[0]));
  r[1] = static_cast<float>(n == 0 ? hi : r[1] + w * (hi - r[1]));
  r[2] = static_cast<float>(n + 1);
  range.copy_(Tensor::from_vector(r, {3}).to(range.device()));
  return r;
}

}  // namespace

CalibrationGuard::CalibrationGuard() : previous_(g_calibrating) { g_calibrating = true; }
CalibrationGuard::~CalibrationGuard() { g_calibrating = previous_; }

bool observing_ranges(const Module& m) { return m.is_training() || g_calibrating; }

Tensor unobserved_range() { return Tensor::zeros({3}); }

QuantizedActivation quantize_activation(const Tensor& x, const Tensor& range, bool observe_now, const char* what) {
  if (const QuantizedTensor* q = find_quantized(x)) return {x, q->scale};
  KCHECK(x.dtype() == DType::F32, DTypeError, "quantization-aware layers run in f32 (", current_trace_scope(),
         " got ", dtype_name(x.dtype()), "; turn --amp off)");
  // One read of the buffer either way (a device sync on CUDA).
  const std::vector<float> r = observe_now ? observe(range, x) : range.cpu().to_vector();
  KCHECK(r[2] > 0, ValueError, current_trace_scope(), ": the ", what,
         " range was never observed (calibrate the quantized model first, as kestrel qat does)");
  const QuantGrid g = activation_grid(r[0], r[1]);
  Tensor out = fake_quantize(x, g.scale, g.zero_point, g.qmin, g.qmax);
  remember_quantized(out, g.scale);
  return {out, g.scale};
}

}  // namespace kestrel::nn
