#include "engine/ops/assemble_batch.h"

#include "engine/cpu/assemble_batch.h"
#include "engine/gpu/assemble_batch.h"
#include "engine/ops/check.h"

namespace kestrel {

namespace {

constexpr const char* kOp = "assemble_batch";
constexpr size_t kMaxTiles = 4;

bool within(int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; }

void check_plan(int64_t N, int64_t H, int64_t W, int64_t C, const std::vector<ImageView>& views,
                const std::vector<RowPlan>& rows, const AssembleOptions& o) {
  const auto n = static_cast<int64_t>(views.size());
  KCHECK(o.pad >= 0, ValueError, kOp, ": pad must be >= 0, got ", o.pad);
  KCHECK(o.mean.size() == o.std.size() && (o.mean.size() == 1 || static_cast<int64_t>(o.mean.size()) == C),
         ValueError, kOp, ": mean and std need 1 or ", C, " values (the images' channels), got ", o.mean.size(),
         " and ", o.std.size());
  for (float s : o.std) KCHECK(s != 0.0f, ValueError, kOp, ": std must be non-zero");
  for (const ImageView& v : views) {
    KCHECK(within(v.image, 0, N - 1), ShapeError, kOp, ": view of image ", v.image, " but there are ", N);
    KCHECK(within(v.top, 0, 2 * o.pad) && within(v.left, 0, 2 * o.pad), ShapeError, kOp, ": crop corner (", v.top,
           ", ", v.left, ") is outside [0, ", 2 * o.pad, "] for padding ", o.pad);
    const bool hole_ok = v.hole_h == 0 || v.hole_w == 0 ||
                         (v.hole_h > 0 && v.hole_w > 0 && v.hole_top >= 0 && v.hole_left >= 0 &&
                          v.hole_top + v.hole_h <= H && v.hole_left + v.hole_w <= W);
    KCHECK(hole_ok, ShapeError, kOp, ": cutout hole (", v.hole_top, ", ", v.hole_left, ") ", v.hole_h, "x",
           v.hole_w, " is outside the ", H, "x", W, " image");
  }
  KCHECK(rows.empty() || static_cast<int64_t>(rows.size()) == n, ShapeError, kOp, ": ", rows.size(),
         " row plans for ", n, " views");
  for (const RowPlan& r : rows) {
    KCHECK(r.tiles.size() <= kMaxTiles, ValueError, kOp, ": a row has ", r.tiles.size(), " tiles; at most ",
           kMaxTiles);
    check_row_plan(kOp, r, n, H, W);
  }
}

}  // namespace

void check_row_plan(const char* op, const RowPlan& r, int64_t rows, int64_t h, int64_t w) {
  bool rows_ok = within(r.base, 0, rows - 1) && (r.blend < 0 || r.blend < rows);
  for (const AssembleTile& t : r.tiles) rows_ok = rows_ok && within(t.src, 0, rows - 1);
  KCHECK(rows_ok, ShapeError, op, ": a row plan names a row outside the ", rows, " rows");
  for (const AssembleTile& t : r.tiles) {
    const bool inside = t.h >= 0 && t.w >= 0 && t.top >= 0 && t.left >= 0 && t.top + t.h <= h && t.left + t.w <= w &&
                        t.src_top >= 0 && t.src_left >= 0 && t.src_top + t.h <= h && t.src_left + t.w <= w;
    KCHECK(inside, ShapeError, op, ": a tile falls outside the ", h, "x", w, " images");
  }
}

Tensor assemble_batch(const Tensor& images, const std::vector<ImageView>& views, const std::vector<RowPlan>& rows,
                      const AssembleOptions& options) {
  check_defined(images, kOp, "images");
  KCHECK(images.dtype() == DType::U8 && images.dim() == 4 && images.is_contiguous(), ShapeError, kOp,
         ": images must be contiguous u8 [N, H, W, C], got ", dtype_name(images.dtype()), " ",
         shape_str(images.shape()));
  const int64_t N = images.size(0), H = images.size(1), W = images.size(2), C = images.size(3);
  check_plan(N, H, W, C, views, rows, options);
  const auto n = static_cast<int64_t>(views.size());
  Tensor out = Tensor::empty({n, H, W, C}, DType::F32, images.device());
  if constexpr (kHaveCuda) {
    if (images.device().is_cuda()) {
      gpu::assemble_batch(images, views, rows, options, out);
      return out;
    }
  }
  cpu::assemble_batch(images.data<uint8_t>(), H, W, C, views, rows, options, out.data<float>());
  return out;
}

}  // namespace kestrel
