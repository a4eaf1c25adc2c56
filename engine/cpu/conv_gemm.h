// f32 convolution forward as an implicit GEMM on AVX-512, for every
// convolution that is not depthwise (1x1 and dense k x k alike):
//   - no im2col buffer: each output pixel reads its taps from the input;
//   - the weights are repacked once per call in panels of 32 output channels;
//   - the sums start from the bias, stay in registers over a block of the
//     reduction, and get the activation before their one store, so C is
//     never zeroed and the epilogue is not a second pass.
// Each output element is summed by one thread in one fixed order, so the
// result does not depend on the thread count. The same registers serve the
// weight gradient (weight_gradient_gemm).
#pragma once
#include <cstdint>
#include <memory>

#include "engine/cpu/conv.h"

namespace kestrel::cpu {

constexpr int64_t kConvPanel = 32;  // output channels per weight panel: two AVX-512 registers

// Weights [c_out, kh, kw, c_in / groups] as [groups][panels][k][32]: for each
// reduction index k (kh, kw, c order, as im2col), the weights of 32
// consecutive output channels of the group, zero past the group's last.
struct PackedConvWeights {
  int64_t groups = 0, k = 0, panels = 0;
  std::unique_ptr<float[], void (*)(void*)> data{nullptr, nullptr};  // 64-byte aligned
  const float* panel(int64_t grp, int64_t p) const { return data.get() + (grp * panels + p) * k * kConvPanel; }
};

PackedConvWeights pack_conv_weights(const ConvGeom& g, const float* w);
// The weights of the convolution whose forward pass is g's input gradient at
// stride 1 (one group): kernel flipped, in and out channels swapped. Packed
// straight from w: a panel row is 32 consecutive input channels of w.
PackedConvWeights pack_conv_weights_transposed(const ConvGeom& g, const float* w);

// Whether conv2d_forward<float> takes this path for a non-depthwise
// convolution: the CPU has AVX-512, and neither KESTREL_NO_AVX512 nor
// KESTREL_NO_CONV_GEMM (im2col and BLAS instead, to compare) is set.
bool implicit_gemm_enabled();

// y = act(conv(x, w) + bias + residual) for a convolution that is not
// depthwise; bias and residual (shaped as y) may be null.
void implicit_gemm_conv(const ConvGeom& g, const float* x, const PackedConvWeights& w, const float* bias, float* y,
                        Activation act, const float* residual = nullptr);

// A convolution's weight gradient (one group), overwriting gw [c_out, kh, kw,
// c_in]: for each tap, gw[o, tap, c] = sum over output pixels m of gy[m, o]
// times the input pixel that the tap of m reads. The reduction goes in
// chunks fixed by the shape, each summed by one thread, then added in order:
// the result does not depend on the thread count.
void weight_gradient_gemm(const ConvGeom& g, const float* x, const float* gy, float* gw);
// Whether conv2d_backward_weight<float> takes it: implicit_gemm_enabled(),
// one group, and 1x1 or at least 16 input channels.
bool weight_gradient_gemm_applies(const ConvGeom& g);

}  // namespace kestrel::cpu
