#include "engine/ops/quantize.h"

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"
#include "engine/trace.h"

namespace kestrel {

QuantGrid activation_grid(float lo, float hi) {
  KCHECK(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, ValueError, "activation range [", lo, ", ", hi,
         "] is not a finite interval");
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  QuantGrid g;
  g.scale = (hi - lo) / 255.0f;
  if (!(g.scale > 0.0f)) g.scale = 1.0f;  // all zeros: any grid holds them
  g.zero_point = std::clamp<int64_t>(static_cast<int64_t>(std::nearbyint(-lo / g.scale)), 0, 255);
  return g;
}

Tensor weight_scales(const Tensor& w) {
  KCHECK(w.dim() >= 2, ShapeError, "weight_scales: expected a weight of 2 or more dims, got ", shape_str(w.shape()));
  NoGradGuard no_grad;
  const Tensor absmax = max(abs(w.detach()).reshape({w.size(0), -1}), 1);
  return clamp(mul_scalar(absmax, 1.0 / kWeightQmax), 1e-12, 3.0e38);
}

namespace {
// t rounded to the symmetric grid [-qmax, qmax] of its dim-0 channel's scale
// (scales: one per channel, a constant to autograd) and back.
Tensor fake_quantize_per_channel(const Tensor& t, const Tensor& scales, int64_t qmax) {
  Shape per_channel(t.dim(), 1);
  per_channel[0] = t.size(0);
  const Tensor s = scales.reshape(per_channel);
  return mul(fake_quantize(div(t, s), 1.0, 0, -qmax, qmax), s);
}
}  // namespace

Tensor fake_quantize_weight(const Tensor& w, const Tensor& scales) {
  Tensor out = fake_quantize_per_channel(w, scales, kWeightQmax);
  if (TraceRecorder* r = active_trace(); r != nullptr && r->keeps_tensors())
    trace_op("fake_quantize_weight", {w, scales}, out);
  return out;
}

Tensor fake_quantize_bias(const Tensor& bias, float input_scale, const Tensor& weight_scales) {
  constexpr int64_t kInt32Max = 2147483647;
  Tensor s;
  {
    NoGradGuard no_grad;
    s = mul_scalar(weight_scales, input_scale);
  }
  return fake_quantize_per_channel(bias, s, kInt32Max);
}

}  // namespace kestrel
