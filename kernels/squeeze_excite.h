// Squeeze-and-excitation, fused forward, NHWC:
//   pooled[n,c] = mean_hw x[n,hw,c]
//   hidden[n,j] = inner(b1[j] + sum_c w1[j,c] * pooled[n,c])      j < Cr
//   scale[n,c]  = gate(b2[c] + sum_j w2[c,j] * hidden[n,j])
//   y[n,hw,c]   = x[n,hw,c] * scale[n,c]                           (y may alias x)
// x, y, w1 [Cr, C], b1 [Cr], w2 [C, Cr], b2 [C]: element type dt (the 1x1
// convolutions' weights in the engine's OHWI layout are exactly these); the
// overloads with param_dt take the weights and biases (and give their
// gradients) in param_dt, which is dt or F32. Biases may be null.
// The workspace keeps pooled, hidden (pre-activation) and scale in f32 for a
// backward pass: squeeze_excite_saved(...) points into it.
// Forward: three launches (split pooling, one block per sample for both FCs,
// apply). Backward (given dy, x, the weights and the forward's workspace):
//   ds[n,c] = sum_hw dy*x          dz = ds * gate'(z)   (z recomputed from hidden)
//   dh[n,j] = inner'(hidden) * sum_c w2[c,j] dz[n,c]
//   dx      = dy * scale + (sum_j w1[j,c] dh[n,j]) / HW          (dx may alias dy)
//   dw2 = dz^T act(hidden), db2 = sum_n dz, dw1 = dh^T pooled, db1 = sum_n dh
// All reductions run in a fixed order (split sums, then the splits in order;
// see gate_weight_grads.cuh): results are bitwise reproducible.
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
cudaError_t squeeze_excite_forward(KDType dt, KDType param_dt, const SqueezeExciteShape& s, KAct inner, KAct gate,
                                   const void* x, const void* w1, const void* b1, const void* w2, const void* b2,
                                   void* y, void* workspace, cudaStream_t stream);

// forward_workspace: the forward's workspace, unchanged since. dw1, dw2 and the
// bias gradients are written in param_dt (any of them may be null: skipped).
size_t squeeze_excite_backward_workspace_bytes(const SqueezeExciteShape& s);
cudaError_t squeeze_excite_backward(KDType dt, KDType param_dt, const SqueezeExciteShape& s, KAct inner, KAct gate,
                                    const void* dy, const void* x, const void* w1, const void* w2, const void* b2,
                                    const void* forward_workspace, void* dx, void* dw1, void* db1, void* dw2,
                                    void* db2, void* workspace, cudaStream_t stream);

}  // namespace kestrel::kernels
