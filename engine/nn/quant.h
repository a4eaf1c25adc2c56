// Quantization-aware training inside the layers: a quantized Conv2d or Linear
// fake-quantizes its input, weight and bias and (unless a folded batch norm
// after it does) its output; models/quantize.h prepares a whole model.
//
// Each activation grid comes from an observed range, a buffer [min, max,
// batches]: the running mean of the batches' min and max for the first 100
// batches, then an exponential average (weight 0.01), observed in training mode
// and under a CalibrationGuard.
#pragma once
#include <string>

#include "engine/nn/module.h"

namespace kestrel::nn {

// While alive, eval-mode forward passes also observe ranges (post-training
// calibration with dropout off).
class CalibrationGuard {
 public:
  CalibrationGuard();
  ~CalibrationGuard();
  CalibrationGuard(const CalibrationGuard&) = delete;
  CalibrationGuard& operator=(const CalibrationGuard&) = delete;

 private:
  bool previous_;
};

// Whether a layer in this mode updates its ranges now.
bool observing_ranges(const Module& m);

// A fresh range buffer: nothing observed yet.
Tensor unobserved_range();

// Updates `range` from x when `observe`, then rounds x to the uint8 grid the
// range gives. An x that this function produced (a quantized activation passed
// on unchanged, say conv -> ReLU-folded output -> conv) is already on a grid and
// is returned as it is, with that grid's scale. `what` names the range in the
// error for one never observed.
struct QuantizedActivation {
  Tensor value;
  float scale;
};
QuantizedActivation quantize_activation(const Tensor& x, const Tensor& range, bool observe, const char* what);

}  // namespace kestrel::nn
