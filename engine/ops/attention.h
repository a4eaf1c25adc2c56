// Channel-attention blocks as single ops: squeeze-and-excitation and
// coordinate attention, NHWC. On CUDA each runs the fused kernels of
// kernels/squeeze_excite.h and kernels/coord_attention.h (forward and
// backward) for f32/f16/bf16; on the CPU (and for f64) each is the composition
// of engine ops it replaces, so CPU results are exactly those of the composed block.
#pragma once
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel {

// x * gate(conv2(act(conv1(mean_hw(x))))) with 1x1 convolutions:
// x [N,H,W,C]; w1 [Cr,1,1,C] (OHWI) or [Cr,C]; b1 [Cr]; w2 [C,1,1,Cr] or
// [C,Cr]; b2 [C]. Biases may be undefined. On CUDA the weights may be f32
// with an f16/bf16 x (mixed precision); on the CPU they match x's dtype.
Tensor squeeze_excite(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                      Activation act, Activation gate);

// The gate alone from the pooled input [N,1,1,C]: gate(conv2(act(conv1(pooled)))),
// as the CPU's squeeze_excite computes it (a banded block repeats it exactly).
Tensor squeeze_excite_gate(const Tensor& pooled, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                           const Tensor& b2, Activation act, Activation gate);

// Coordinate attention (Hou et al., 2021) with the shared 1x1's batch norm
// already folded into w1/b1:
//   t  = act(conv1(concat(mean_w(x), mean_h(x))))       [N, H+W, mip]
//   y  = x * sigmoid(conv_h(t[:H])) * sigmoid(conv_w(t[H:]))
// w1 [mip,1,1,C] or [mip,C]; b1 [mip]; wh, ww [C,1,1,mip] or [C,mip]; bh, bw
// [C]. Biases may be undefined. Dtype rules as squeeze_excite.
Tensor coord_attention(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& wh, const Tensor& bh,
                       const Tensor& ww, const Tensor& bw, Activation act);

// Coordinate attention's gating, x * gate_h * gate_w: x [N,H,W,C], gate_h
// [N,H,1,C], gate_w [N,1,W,C]. On the CPU (f32, f64) one pass each way
// (engine/cpu/coord_gate.h), equal bit for bit to the two multiplies it
// replaces; elsewhere those multiplies.
Tensor coord_gate(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w);

}  // namespace kestrel
