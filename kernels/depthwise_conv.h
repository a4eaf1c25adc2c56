// Depthwise 2-D convolution on NHWC activations (groups == channels,
// multiplier 1): forward, backward for data, backward for weights.
//
// Layouts
//   x  [N, H, W, *]   pixel pitch x_pitch elements (>= C), channels 0..C-1
//   y  [N, OH, OW, *] pixel pitch y_pitch elements (>= C)
//   w  [C, KH, KW]    the engine's OHWI weight [C, KH, KW, 1] as is
//   bias [C] or null  (same element type as x)
// The pitches let the ghost module read the first half of a tensor's channels
// and write the second half in place (kernels/ghost.h).
//
// Element types f32, f16, bf16; all arithmetic in f32. Kernel sizes 3, 5 and 7
// have unrolled kernels; any other size up to 7 (per side) runs a generic kernel.
// Channels are processed 16 bytes at a time when C, both pitches and the
// pointers allow it, otherwise one element at a time.
//
// Every launcher returns the launch status (cudaGetLastError) and does not
// synchronize. Compiles; untested on GPU at the time of writing.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

struct DepthwiseConvShape {
  int N = 1, H = 1, W = 1, C = 1;
  int KH = 3, KW = 3;
  int stride_h = 1, stride_w = 1;
  int pad_h = 1, pad_w = 1;
  int dil_h = 1, dil_w = 1;
  int x_pitch = 0;  // 0 means C
  int y_pitch = 0;  // 0 means C
  // Applied by the forward kernel after the bias (an inference epilogue, e.g.
  // a batch norm folded into w and bias, then its activation). The backward
  // launchers need None: they do not see the pre-activation.
  KAct act = KAct::None;
  KESTREL_HD int OH() const { return (H + 2 * pad_h - dil_h * (KH - 1) - 1) / stride_h + 1; }
  KESTREL_HD int OW() const { return (W + 2 * pad_w - dil_w * (KW - 1) - 1) / stride_w + 1; }
  KESTREL_HD int xp() const { return x_pitch > 0 ? x_pitch : C; }
  KESTREL_HD int yp() const { return y_pitch > 0 ? y_pitch : C; }
};

// Largest kernel side the kernels accept.
constexpr int kDepthwiseMaxKernel = 7;

// Returns a message naming the first invalid field, or null when the shape is valid.
const char* depthwise_conv_check(const DepthwiseConvShape& s);

// y = act(depthwise(x, w) + bias), act = s.act
cudaError_t depthwise_conv2d_forward(KDType dt, const DepthwiseConvShape& s, const void* x, const void* w,
                                     const void* bias, void* y, cudaStream_t stream);

// dx = depthwise_transpose(dy, w); with accumulate, dx += ... instead of dx = ...
// dy uses y_pitch and dx uses x_pitch.
cudaError_t depthwise_conv2d_backward_data(KDType dt, const DepthwiseConvShape& s, const void* dy, const void* w,
                                           void* dx, bool accumulate, cudaStream_t stream);

// dw [C, KH, KW] (element type dt) and, when dbias is not null, dbias [C].
// Deterministic: per-split partial sums go to an f32 workspace of
// depthwise_conv2d_backward_weight_workspace_bytes(s) bytes, then one pass
// adds them in a fixed order.
size_t depthwise_conv2d_backward_weight_workspace_bytes(const DepthwiseConvShape& s);
cudaError_t depthwise_conv2d_backward_weight(KDType dt, const DepthwiseConvShape& s, const void* x, const void* dy,
                                             void* dw, void* dbias, void* workspace, cudaStream_t stream);

}  // namespace kestrel::kernels
