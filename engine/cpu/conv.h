// CPU convolution kernels on NHWC activations and OHWI weights, raw pointers.
//
//   depthwise (groups==C_in==C_out) -> direct loops, channels innermost (depthwise.h)
//   f32 with AVX-512                -> implicit GEMM (conv_gemm.h): the forward
//                                      pass, and a 1x1 convolution's gradients
//   otherwise: 1x1, stride 1, no padding -> one BLAS GEMM per group over [N*H*W, C_in/g]
//              anything else       -> im2col per group (chunks of whole images) + GEMM
//
// Backward input uses a gather (col2im by input pixel) so every output element
// is written by one thread and the result does not depend on the thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/ops/elementwise.h"

namespace kestrel::cpu {

struct ConvGeom {
  int64_t n = 0, h = 0, w = 0, c_in = 0;  // input [n, h, w, c_in]
  int64_t oh = 0, ow = 0, c_out = 0;      // output [n, oh, ow, c_out]
  int64_t kh = 1, kw = 1;                 // weight [c_out, kh, kw, c_in / groups]
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
  // Elements from one pixel of x (y) to the next when it is a channel slice
  // of a wider tensor (a ghost module's halves); 0: dense, c_in (c_out).
  // Only implicit_gemm_conv (y), depthwise_forward_taps_major (x and y) and
  // depthwise_backward_weight (x) take slices; every other kernel needs both
  // dense.
  int64_t x_pixel_stride = 0, y_pixel_stride = 0;

  int64_t xs() const { return x_pixel_stride != 0 ? x_pixel_stride : c_in; }
  int64_t ys() const { return y_pixel_stride != 0 ? y_pixel_stride : c_out; }
  bool dense() const { return xs() == c_in && ys() == c_out; }
  int64_t cin_g() const { return c_in / groups; }
  int64_t cout_g() const { return c_out / groups; }
  int64_t k() const { return kh * kw * cin_g(); }  // im2col row length per group
  bool pointwise() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  bool depthwise() const { return groups == c_in && c_out == c_in && groups > 1; }
};

// y = act(conv(x, w) + bias); bias may be null. The activation is applied
// while the output is still in cache (inference with a folded batch norm).
template <typename T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y,
                    Activation act = Activation::None);
// A depthwise convolution's weights [c, kh, kw, 1] as [kh, kw, c], the layout
// its kernels read, and its forward pass given them (a frozen model keeps
// them so; conv2d_forward relays them out on each call).
template <typename T>
std::vector<T> depthwise_weight_taps_major(const ConvGeom& g, const T* w);
template <typename T>
void depthwise_forward_taps_major(const ConvGeom& g, const T* x, const T* wt, const T* bias, T* y,
                                  Activation act = Activation::None);
// gx = d(loss)/dx given gy (overwrites gx).
template <typename T>
void conv2d_backward_input(const ConvGeom& g, const T* gy, const T* w, T* gx);
// gw = d(loss)/dw (overwrites gw).
template <typename T>
void conv2d_backward_weight(const ConvGeom& g, const T* x, const T* gy, T* gw);
// gb[c] = sum of gy over all positions (overwrites gb).
template <typename T>
void conv2d_backward_bias(const ConvGeom& g, const T* gy, T* gb);

}  // namespace kestrel::cpu
