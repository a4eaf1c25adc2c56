// Builds a normalized f32 NHWC training batch from u8 images resident on the
// device, in one pass: each output row is a view of a stored image (a crop of
// the image zero-padded by `pad`, optionally mirrored, optionally with a
// cutout hole), optionally mixed with other rows' views (tiles pasted over it,
// a MixUp blend). The CPU reference is engine/cpu/assemble_batch.cpp; the
// plan layout below is packed by engine/ops/assemble_batch.cpp.
// Compiles; tested on the CUDA emulator only at the time of writing.
#pragma once
#include <cstdint>

#include "kernels/kernel_types.h"

namespace kestrel::kernels {

// One int32 record per row, for views and row plans (floats bit-cast).
constexpr int kViewInts = 8;  // image, top, left, flip, hole_top, hole_left, hole_h, hole_w
constexpr int kTileInts = 7;  // view, top, left, h, w, src_top, src_left
constexpr int kMaxTiles = 4;
constexpr int kRowInts = 4 + kMaxTiles * kTileInts;  // base, blend, weight (f32 bits), num_tiles, tiles

struct AssembleBatchShape {
  int n = 0;                // output rows (and views)
  int H = 0, W = 0, C = 0;  // image and output size
  int pad = 0;              // zero padding around each image before the crop
  float scale = 1.0f;       // u8 -> float factor, before normalizing
  int64_t num_images = 0;   // rows of `images`
};

// images: u8 [num_images, H, W, C]; mean_std: f32 [2 * C] (means, then
// standard deviations); views: int32 [n, kViewInts]; rows: int32 [n, kRowInts];
// out: f32 [n, H, W, C].
cudaError_t assemble_batch(const AssembleBatchShape& s, const uint8_t* images, const float* mean_std,
                           const int32_t* views, const int32_t* rows, float* out, cudaStream_t stream);

}  // namespace kestrel::kernels
