// Ghost module cheap operation in place; see ghost.h. The work is the
// depthwise kernels of depthwise_conv.cu run on pitched channel slices, so
// their proof covers the arithmetic; tests/test_cuda_kernels.cpp checks the
// in-place slicing (first half untouched in forward, both halves in backward)
// against a CPU loop, with C_cheap < C_primary and odd channel counts.
#include "kernels/ghost.h"

#include "kernels/common.cuh"

namespace kestrel::kernels {

DepthwiseConvShape ghost_depthwise_shape(const GhostShape& g) {
  DepthwiseConvShape s;
  s.N = g.N;
  s.H = g.H;
  s.W = g.W;
  s.C = g.C_cheap();
  s.KH = s.KW = g.K;
  s.pad_h = s.pad_w = g.K / 2;
  s.x_pitch = g.C_out;
  s.y_pitch = g.C_out;
  s.act = g.act;
  return s;
}

namespace {
bool valid(const GhostShape& g) {
  return g.C_primary >= 1 && g.C_cheap() >= 1 && g.C_cheap() <= g.C_primary && g.K % 2 == 1;
}
char* offset_bytes(void* p, int64_t elems, KDType dt) { return static_cast<char*>(p) + elems * kdtype_size(dt); }
}  // namespace

cudaError_t ghost_cheap_forward(KDType dt, const GhostShape& g, void* out, const void* w_cheap, const void* bias,
                                cudaStream_t stream) {
  if (!valid(g)) return cudaErrorInvalidValue;
  // Reads channels [0, C_cheap), writes [C_primary, C_out): disjoint.
  return depthwise_conv2d_forward(dt, ghost_depthwise_shape(g), out, w_cheap, bias,
                                  offset_bytes(out, g.C_primary, dt), stream);
}

size_t ghost_cheap_backward_workspace_bytes(const GhostShape& g) {
  return depthwise_conv2d_backward_weight_workspace_bytes(ghost_depthwise_shape(g));
}

cudaError_t ghost_cheap_backward(KDType dt, const GhostShape& g, const void* out, void* dout, const void* w_cheap,
                                 void* dw_cheap, void* dbias, void* workspace, cudaStream_t stream) {
  if (!valid(g) || g.act != KAct::None) return cudaErrorInvalidValue;
  const DepthwiseConvShape s = ghost_depthwise_shape(g);
  const void* dy = offset_bytes(dout, g.C_primary, dt);
  // Weight gradient first: it reads dout's cheap half and the forward input.
  cudaError_t e = depthwise_conv2d_backward_weight(dt, s, out, dy, dw_cheap, dbias, workspace, stream);
  if (e != cudaSuccess) return e;
  // Reads dout[..., C_primary:], accumulates into dout[..., :C_cheap]: disjoint.
  return depthwise_conv2d_backward_data(dt, s, dy, w_cheap, dout, /*accumulate=*/true, stream);
}

}  // namespace kestrel::kernels
