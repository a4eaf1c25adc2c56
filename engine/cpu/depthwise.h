// Depthwise convolutions (groups == C_in == C_out) on NHWC activations:
// direct loops with channels innermost, each output element summed by one
// thread in one order. Weights arrive as [c, kh, kw, 1]; the kernels read
// them as [kh, kw, c] (depthwise_weight_taps_major in conv.h).
#pragma once
#include "engine/cpu/conv.h"

namespace kestrel::cpu {

template <typename T>
void depthwise_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y, Activation act);
// gx = d(loss)/dx given gy (overwrites gx).
template <typename T>
void depthwise_backward_input(const ConvGeom& g, const T* gy, const T* w, T* gx);
// gw = d(loss)/dw (overwrites gw); x may be a channel slice (g.x_pixel_stride).
template <typename T>
void depthwise_backward_weight(const ConvGeom& g, const T* x, const T* gy, T* gw);

}  // namespace kestrel::cpu
