// 2-D convolution on NHWC activations.
//
// Weight layout inside Kestrel: OHWI, [C_out, KH, KW, C_in / groups], so that
// im2col rows [N*OH*OW, KH*KW*C_in/g] times W^T give NHWC output directly and a
// 1x1 convolution is a plain GEMM. Checkpoints hold PyTorch's OIHW; the
// conversion happens at the file boundary (engine/nn/module.cpp).
#pragma once
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"

namespace kestrel {

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
};

// x [N,H,W,C_in], weight [C_out,KH,KW,C_in/groups], bias [C_out] or undefined.
// Returns [N,OH,OW,C_out]. Depthwise when groups == C_in.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);

// act(conv2d(x, weight, bias)). For inference (no gradient needed) the bias
// and the activation are applied in the convolution's epilogue, while the
// output is in registers or cache, instead of in a second pass over memory:
// on the CPU for every convolution, on CUDA for depthwise ones. With a
// gradient, and for other CUDA convolutions, conv2d then activation.
// A residual (shaped as the output) is added before the activation: in the
// epilogue too for the CPU's implicit GEMM (dense, not depthwise, f32),
// otherwise as a separate add.
Tensor conv2d_act(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p, Activation act,
                  const Tensor& residual = Tensor());

int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation);

// One convolution of a chain: act(conv(x, weight) + bias).
struct ConvStage {
  Tensor weight, bias;
  Conv2dParams params;
  Activation act = Activation::None;
};

// A squeeze-and-excitation between the depthwise and the projection:
// x * gate(w2 * act(w1 * mean_hw(x) + b1) + b2), 1x1 weights [out,1,1,in]
// (or [out,in]), biases optional (engine/ops/attention.h).
struct SqueezeExciteStage {
  Tensor w1, b1, w2, b2;
  Activation act = Activation::ReLU, gate = Activation::Sigmoid;
};

// The ghost module (engine/ops/ghost.h) of a model fused for inference on
// the CPU: the primary 1x1 convolution writes the first C_primary channels of
// the output and the cheap depthwise one reads them there and writes the
// rest, so there is no concat copy. The same kernels as conv2d_act, so the
// same results bit for bit. ghost_in_place_applies: f32 CPU tensors, no
// gradient, frozen weights, the AVX-512 implicit GEMM, a 1x1 primary weight
// [C_primary,1,1,C_in] and a depthwise cheap one [C_cheap,K,K,1] with
// 2 <= C_cheap <= C_primary and K odd, and no trace recording the layers.
bool ghost_in_place_applies(const Tensor& x, const Tensor& w_primary, const Tensor& b_primary, const Tensor& w_cheap,
                            const Tensor& b_cheap);
Tensor ghost_in_place(const Tensor& x, const Tensor& w_primary, const Tensor& b_primary, const Tensor& w_cheap,
                      const Tensor& b_cheap, Activation act);

// An inverted-residual block's convolutions at inference: [1x1 expand ->]
// depthwise [-> squeeze-excite] -> 1x1 project [+ residual, shaped as the
// output], computed in bands of output rows, so that each expanded band is
// used while it is in cache instead of the whole expanded tensor going out to
// memory and back. With a squeeze-excite the gate needs every pixel of the
// depthwise output: the bands write it out with each row's sums (the pooling,
// engine/cpu/pool.h), then bands of it are gated and projected in cache, so
// the gated tensor never goes to memory either.
// The same results as the chained ops (conv2d_act, squeeze_excite), bit for bit.
// inverted_residual_banded_applies says whether it can run: f32 CPU tensors,
// no gradient, frozen weights (a model fused for inference), the AVX-512
// implicit GEMM, no trace recording the layers (a timed one sees one op), and
// an expanded tensor of at least min_expanded_bytes (the whole batch's): one
// that fits in L2 gains nothing from bands.
bool inverted_residual_banded_applies(const Tensor& x, const ConvStage* expand, const ConvStage& depthwise,
                                      const SqueezeExciteStage* se, const ConvStage& project,
                                      int64_t min_expanded_bytes = int64_t{1} << 20);
Tensor inverted_residual_banded(const Tensor& x, const ConvStage* expand, const ConvStage& depthwise,
                                const SqueezeExciteStage* se, const ConvStage& project,
                                const Tensor& residual = Tensor());

}  // namespace kestrel
