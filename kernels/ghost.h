// Ghost module's cheap operation, in place (GhostNet, Han et al., 2020).
//
// out [N, H, W, C_out]: the primary 1x1 convolution (a GEMM with ldc = C_out)
// has already written channels [0, C_primary). The cheap depthwise KxK
// convolution (stride 1, "same" padding) of the first C_cheap = C_out -
// C_primary primary channels is written to channels [C_primary, C_out) of the
// same buffer: no concat and no copy. Requires C_primary <= C_out <=
// 2 * C_primary (ratio 2, truncated as GhostNet's out[:, :oup]).
//
// Backward, also in place on dout: dout[..., :C_cheap] += depthwise data
// gradient of dout[..., C_primary:], so dout's first C_primary channels become
// the primary convolution's output gradient; dw/dbias as in depthwise_conv.h
// (workspace from ghost_cheap_backward_workspace_bytes).
// Compiles; untested on GPU.
#pragma once
#include <cstddef>

#include "kernels/depthwise_conv.h"

namespace kestrel::kernels {

struct GhostShape {
  int N = 1, H = 1, W = 1;
  int C_primary = 1, C_out = 2;
  int K = 3;  // cheap depthwise kernel (dw_size in GhostNet)
  // Applied to the cheap half by the forward kernel's epilogue when no
  // pre-activation is kept (inference); the backward needs None.
  KAct act = KAct::None;
  KESTREL_HD int C_cheap() const { return C_out - C_primary; }
};

// The depthwise shape the ghost launchers run (pitched views of out).
DepthwiseConvShape ghost_depthwise_shape(const GhostShape& g);

cudaError_t ghost_cheap_forward(KDType dt, const GhostShape& g, void* out, const void* w_cheap, const void* bias,
                                cudaStream_t stream);

size_t ghost_cheap_backward_workspace_bytes(const GhostShape& g);
cudaError_t ghost_cheap_backward(KDType dt, const GhostShape& g, const void* out, void* dout, const void* w_cheap,
                                 void* dw_cheap, void* dbias, void* workspace, cudaStream_t stream);

}  // namespace kestrel::kernels
