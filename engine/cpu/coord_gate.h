// The coordinate-attention gate on the CPU: y = x * gate_h * gate_w, with x
// [N,H,W,C] and the gates [N,H,1,C] and [N,1,W,C] (NHWC, contiguous, f32 or
// f64). Forward and backward are one pass each over x, where the two
// broadcast multiplies took two forward and four backward (plus two sums).
// The rounding is theirs: (x * gate_h) * gate_w; the gates' gradients sum
// the rounded products in double, in row order, as engine sums do. So the
// results equal the composed ops' bit for bit.
#pragma once
#include "engine/tensor.h"

namespace kestrel::cpu {

void coord_gate_forward(const Tensor& x, const Tensor& gate_h, const Tensor& gate_w, const Tensor& y);

// Undefined outputs are not computed.
void coord_gate_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gate_h, const Tensor& gate_w,
                         const Tensor& grad_x, const Tensor& grad_gate_h, const Tensor& grad_gate_w);

}  // namespace kestrel::cpu
