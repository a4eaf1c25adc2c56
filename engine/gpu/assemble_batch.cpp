#include "engine/gpu/assemble_batch.h"

#include <climits>
#include <cstring>

#include "engine/cuda/runtime.h"
#include "kernels/assemble_batch.h"

namespace kestrel::gpu {

namespace {

int32_t as_i32(int64_t v) {
  KCHECK(v >= INT32_MIN && v <= INT32_MAX, ShapeError, "assemble_batch: ", v, " does not fit the kernel's int32 plan");
  return static_cast<int32_t>(v);
}

int32_t float_bits(float f) {
  int32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// [mean C][std C][views n * kViewInts][rows n * kRowInts], floats bit-cast.
Tensor pack_plan(int64_t C, const std::vector<ImageView>& views, const std::vector<RowPlan>& rows,
                 const AssembleOptions& o) {
  const auto n = static_cast<int64_t>(views.size());
  Tensor plan = Tensor::empty({2 * C + n * (kernels::kViewInts + kernels::kRowInts)}, DType::I32);
  int32_t* p = plan.data<int32_t>();
  for (int64_t c = 0; c < C; ++c) {
    const size_t k = o.mean.size() == 1 ? 0 : static_cast<size_t>(c);
    p[c] = float_bits(o.mean[k]);
    p[C + c] = float_bits(o.std[k]);
  }
  int32_t* v = p + 2 * C;
  for (const ImageView& view : views) {
    const int32_t rec[kernels::kViewInts] = {as_i32(view.image), view.top,      view.left,   view.flip ? 1 : 0,
                                             view.hole_top,      view.hole_left, view.hole_h, view.hole_w};
    v = std::copy(rec, rec + kernels::kViewInts, v);
  }
  for (int64_t r = 0; r < n; ++r) {
    int32_t* rec = v + r * kernels::kRowInts;
    std::fill(rec, rec + kernels::kRowInts, 0);
    if (rows.empty()) {  // row r is view r
      rec[0] = as_i32(r);
      rec[1] = -1;
      continue;
    }
    const RowPlan& plan_row = rows[static_cast<size_t>(r)];
    rec[0] = as_i32(plan_row.base);
    rec[1] = as_i32(plan_row.blend < 0 ? -1 : plan_row.blend);
    rec[2] = float_bits(plan_row.weight);
    rec[3] = static_cast<int32_t>(plan_row.tiles.size());
    for (size_t k = 0; k < plan_row.tiles.size(); ++k) {
      const AssembleTile& t = plan_row.tiles[k];
      const int32_t tile[kernels::kTileInts] = {as_i32(t.src), t.top, t.left, t.h, t.w, t.src_top, t.src_left};
      std::copy(tile, tile + kernels::kTileInts, rec + 4 + k * kernels::kTileInts);
    }
  }
  return plan;
}

}  // namespace

void assemble_batch(const Tensor& images, const std::vector<ImageView>& views, const std::vector<RowPlan>& rows,
                    const AssembleOptions& options, const Tensor& out) {
  const int64_t C = images.size(3);
  const Tensor plan = pack_plan(C, views, rows, options).to(images.device());
  kernels::AssembleBatchShape s;
  s.n = as_i32(static_cast<int64_t>(views.size()));
  s.H = as_i32(images.size(1));
  s.W = as_i32(images.size(2));
  s.C = as_i32(C);
  s.pad = options.pad;
  s.scale = options.scale;
  s.num_images = images.size(0);
  const int32_t* p = plan.data<int32_t>();
  cuda::DeviceGuard guard(images.device().index);
  KESTREL_CUDA_CHECK_CTX(kernels::assemble_batch(s, images.data<uint8_t>(), reinterpret_cast<const float*>(p),
                                                 p + 2 * C, p + 2 * C + s.n * static_cast<int64_t>(kernels::kViewInts),
                                                 out.data<float>(), cuda::current_stream(images.device().index)),
                         "assemble_batch of ", views.size(), " views of ", shape_str(images.shape()));
}

}  // namespace kestrel::gpu
