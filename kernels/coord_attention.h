// Coordinate attention (Hou et al., 2021), fused forward, NHWC:
//   ph[n,h,c] = mean_w x[n,h,w,c]            pw[n,w,c] = mean_h x[n,h,w,c]
//   t[n,p,j]  = act(b1[j] + sum_c w1[j,c] * pooled[n,p,c])   p over the H+W positions
//   ah[n,h,c] = sigmoid(bh[c] + sum_j wh[c,j] * t[n,h,j])
//   aw[n,w,c] = sigmoid(bw[c] + sum_j ww[c,j] * t[n,H+w,j])
//   y[n,h,w,c] = x[n,h,w,c] * ah[n,h,c] * aw[n,w,c]              (y may alias x)
// The shared 1x1 transform's batch norm must be folded into w1/b1 (inference,
// or a training step that runs BN separately through the engine). Weights in
// dt (or, in the overloads with param_dt, in param_dt: dt or F32): w1 [mip, C],
// b1 [mip], wh/ww [C, mip], bh/bw [C]; biases may be null.
// Workspace (f32) keeps pooled [N, H+W, C], t before act [N, H+W, mip] and
// gates [N, H+W, C] for the backward pass, which computes (per sample)
//   dah[h,c] = sum_w dy*x*aw[w,c]      daw[w,c] = sum_h dy*x*ah[h,c]
//   dz = da * g * (1 - g)              dt[p,j] = act'(t) * sum_c wg[c,j] dz[p,c]
//   dx = dy*ah*aw + (sum_j w1[j,c] dt[h,j]) / W + (sum_j w1[j,c] dt[H+w,j]) / H
//   dwh = sum_{n,h} dz act(t)^T, dbh = sum dz (likewise dww, dbw over w),
//   dw1 = sum_{n,p} dt pooled^T, db1 = sum dt
// with every reduction in a fixed order (bitwise reproducible; see
// gate_weight_grads.cuh). Compiles; untested on GPU.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

struct CoordAttentionShape {
  int N = 1, H = 1, W = 1, C = 1, mip = 8;
};

struct CoordAttentionSaved {
  float* pooled;  // [N, H+W, C]
  float* hidden;  // [N, H+W, mip], before act
  float* gates;   // [N, H+W, C]: ah for p < H, aw for p >= H
};

size_t coord_attention_workspace_bytes(const CoordAttentionShape& s);
CoordAttentionSaved coord_attention_saved(const CoordAttentionShape& s, void* workspace);

cudaError_t coord_attention_forward(KDType dt, const CoordAttentionShape& s, KAct act, const void* x,
                                    const void* w1, const void* b1, const void* wh, const void* bh, const void* ww,
                                    const void* bw, void* y, void* workspace, cudaStream_t stream);
cudaError_t coord_attention_forward(KDType dt, KDType param_dt, const CoordAttentionShape& s, KAct act, const void* x,
                                    const void* w1, const void* b1, const void* wh, const void* bh, const void* ww,
                                    const void* bw, void* y, void* workspace, cudaStream_t stream);

// forward_workspace: the forward's workspace, unchanged since. dx may alias dy.
// Weight and bias gradients in param_dt; any of them may be null (skipped).
size_t coord_attention_backward_workspace_bytes(const CoordAttentionShape& s);
cudaError_t coord_attention_backward(KDType dt, KDType param_dt, const CoordAttentionShape& s, KAct act,
                                     const void* dy, const void* x, const void* w1, const void* wh, const void* ww,
                                     const void* forward_workspace, void* dx, void* dw1, void* db1, void* dwh,
                                     void* dbh, void* dww, void* dbw, void* workspace, cudaStream_t stream);

// The gate alone, y = x * ah * aw, for a training step whose shared transform
// and its batch norm run through the engine: gates in the workspace's layout
// ([N, H+W, C] f32, ah rows first); s.mip is unused.
cudaError_t coord_gate_forward(KDType dt, const CoordAttentionShape& s, const void* x, const float* gates, void* y,
                               cudaStream_t stream);
// dx = dy * ah * aw; dgates[n,p,c] = dah[h,c] for p = h < H, daw[w,c] for p =
// H + w (the sums above). Either output may be null (skipped).
cudaError_t coord_gate_backward(KDType dt, const CoordAttentionShape& s, const void* dy, const void* x,
                                const float* gates, void* dx, float* dgates, cudaStream_t stream);

}  // namespace kestrel::kernels
