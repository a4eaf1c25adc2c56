// Squeeze-and-excitation, fused forward, NHWC:
//   pooled[n,c] = mean_hw x[n,hw,c]
//   hidden[n,j] = inner(b1[j] + sum_c w1[j,c] * pooled[n,c])      j < Cr
//   scale[n,c]  = gate(b2[c] + sum_j w2[c,j] * hidden[n,j])
//   y[n,hw,c]   = x[n,hw,c] * scale[n,c]                           (y may alias x)
// x, y, w1 [Cr, C], b1 [Cr], w2 [C, Cr], b2 [C]: element type dt (the 1x1
// convolutions' weights in the engine's OHWI layout are exactly these).
// The workspace keeps pooled, hidden (pre-activation) and scale in f32 for a
// backward pass: squeeze_excite_saved(...) points into it.
// Three launches: split pooling, one block per sample for both FCs, apply.
// Compiles; untested on GPU.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

struct SqueezeExciteShape {
  int N = 1, HW = 1, C = 1, Cr = 1;
};

struct SqueezeExciteSaved {
  float* pooled;  // [N, C]
  float* hidden;  // [N, Cr] before the inner activation
  float* scale;   // [N, C] after the gate
};

size_t squeeze_excite_workspace_bytes(const SqueezeExciteShape& s);
SqueezeExciteSaved squeeze_excite_saved(const SqueezeExciteShape& s, void* workspace);

cudaError_t squeeze_excite_forward(KDType dt, const SqueezeExciteShape& s, KAct inner, KAct gate, const void* x,
                                   const void* w1, const void* b1, const void* w2, const void* b2, void* y,
                                   void* workspace, cudaStream_t stream);

}  // namespace kestrel::kernels
