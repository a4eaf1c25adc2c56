// Builds a normalized f32 NHWC batch from u8 images on their own device, in
// one pass: the pixel work of the resident loader (data/resident_loader.h).
//
// Output row r reads view r of a stored image: the image zero-padded by
// `pad` on each side, cropped to its own size at (top, left), mirrored when
// `flip`, with a cutout hole (value 0 before normalizing) in the mirrored
// crop; then (u8 * scale - mean[c]) / std[c]. A row plan can then paste
// tiles of other views over the row and blend it with another view (MixUp):
// out = weight * row + (1 - weight) * view blend. Values match the host
// transforms (to_float, random_crop, random_hflip, cutout, normalize) and
// data::apply_mix bit for bit on the CPU; CUDA rounds each operation the same
// way.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace kestrel {

struct ImageView {
  int64_t image = 0;      // row of the u8 images
  int top = 0, left = 0;  // crop corner in the padded image, each in [0, 2 * pad]
  bool flip = false;
  int hole_top = 0, hole_left = 0, hole_h = 0, hole_w = 0;  // inside the crop; h or w 0: none
};

// A rectangle of an output row taken from view `src` at (src_top, src_left).
struct AssembleTile {
  int64_t src = 0;
  int top = 0, left = 0, h = 0, w = 0;
  int src_top = 0, src_left = 0;
};

// Row = view `base`, then each tile pasted over it in order (at most 4), then,
// when blend >= 0, weight * row + (1 - weight) * view blend.
struct RowPlan {
  int64_t base = 0;
  std::vector<AssembleTile> tiles;
  int64_t blend = -1;
  float weight = 1.0f;
};

struct AssembleOptions {
  int pad = 0;
  float scale = 1.0f / 255.0f;
  std::vector<float> mean = {0.0f}, std = {1.0f};  // one value, or one per channel
};

// Throws ShapeError (naming `op`) unless every row `r` names lies in [0, rows)
// and every tile lies inside the h x w images.
void check_row_plan(const char* op, const RowPlan& r, int64_t rows, int64_t h, int64_t w);

// images: u8 [N, H, W, C] contiguous, on the CPU or a CUDA device. rows: one
// per view, or empty (row r is view r). Returns f32 [views, H, W, C] on the
// images' device.
Tensor assemble_batch(const Tensor& images, const std::vector<ImageView>& views, const std::vector<RowPlan>& rows,
                      const AssembleOptions& options);

}  // namespace kestrel
