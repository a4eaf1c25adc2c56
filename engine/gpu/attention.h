// CUDA squeeze-and-excitation and coordinate attention on the fused kernels
// (kernels/squeeze_excite.h, kernels/coord_attention.h). Tensors are
// contiguous on one device; x is f32, f16 or bf16, the weights and biases are
// x's dtype or f32, weights as 2-d matrices ([out, in]). The forward keeps the
// kernel's f32 workspace (pooled, hidden, gates) for the backward. Launches go
// on the current stream. Compiles; untested on GPU at the time of writing.
#pragma once
#include <vector>

#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel::gpu {

// The fused kernels keep one sample's C + 2 * hidden floats (SE's hidden is
// Cr, coordinate attention's mip) in dynamic shared memory, whose default
// limit is 48 KiB; wider layers compose engine ops instead.
constexpr int64_t kFusedAttentionSharedFloats = 48 * 1024 / 4;
inline bool fused_attention_fits(int64_t channels, int64_t hidden) {
  return channels + 2 * hidden <= kFusedAttentionSharedFloats;
}

struct FusedAttentionForward {
  Tensor y;
  Tensor saved;  // the forward workspace the backward reads
};

FusedAttentionForward squeeze_excite_forward(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                             const Tensor& b2, Activation act, Activation gate);

struct SqueezeExciteGrads {
  Tensor x, w1, b1, w2, b2;  // undefined where not requested
};

// need: which of x, w1, b1, w2, b2 want a gradient.
SqueezeExciteGrads squeeze_excite_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w1,
                                           const Tensor& w2, const Tensor& b2, const Tensor& saved, Activation act,
                                           Activation gate, const std::vector<bool>& need);

FusedAttentionForward coord_attention_forward(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& wh,
                                              const Tensor& bh, const Tensor& ww, const Tensor& bw, Activation act);

struct CoordAttentionGrads {
  Tensor x, w1, b1, wh, bh, ww, bw;  // undefined where not requested
};

// need: which of x, w1, b1, wh, bh, ww, bw want a gradient.
CoordAttentionGrads coord_attention_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w1,
                                             const Tensor& wh, const Tensor& ww, const Tensor& saved, Activation act,
                                             const std::vector<bool>& need);

// Coordinate attention's gate alone, x * gate_h * gate_w (kestrel::coord_gate
// in training, where the shared transform's batch norm is not folded): the
// gates as one f32 tensor [N, H+W, C], gate_h's rows first.
Tensor coord_gate_forward(const Tensor& x, const Tensor& gates);

struct CoordGateGrads {
  Tensor x, gates;  // gates: f32 [N, H+W, C]; undefined where not requested
};
CoordGateGrads coord_gate_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gates, bool need_x,
                                   bool need_gates);

}  // namespace kestrel::gpu
