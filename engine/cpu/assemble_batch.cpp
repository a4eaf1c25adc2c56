#include "engine/cpu/assemble_batch.h"

#include <algorithm>

#include "engine/cpu/parallel.h"

namespace kestrel::cpu {

namespace {

// Writes view v, normalized, into `row` [H, W, C].
void write_view(const uint8_t* images, int64_t H, int64_t W, int64_t C, const ImageView& v, const AssembleOptions& o,
                float* row) {
  const uint8_t* image = images + v.image * H * W * C;
  auto norm = [&](float raw, int64_t c) {
    const size_t k = o.mean.size() == 1 ? 0 : static_cast<size_t>(c);
    return (raw - o.mean[k]) / o.std[k];
  };
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      const bool in_hole =
          y >= v.hole_top && y < v.hole_top + v.hole_h && x >= v.hole_left && x < v.hole_left + v.hole_w;
      const int64_t py = v.top + y - o.pad, px = v.left + (v.flip ? W - 1 - x : x) - o.pad;
      const bool inside = !in_hole && py >= 0 && py < H && px >= 0 && px < W;
      float* dst = row + (y * W + x) * C;
      for (int64_t c = 0; c < C; ++c)
        dst[c] = norm(inside ? static_cast<float>(image[(py * W + px) * C + c]) * o.scale : 0.0f, c);
    }
}

}  // namespace

void assemble_batch(const uint8_t* images, int64_t H, int64_t W, int64_t C, const std::vector<ImageView>& views,
                    const std::vector<RowPlan>& rows, const AssembleOptions& o, float* out) {
  const int64_t n = static_cast<int64_t>(views.size()), per = H * W * C;
  if (rows.empty()) {
    parallel_for(n, n > 1, [&](int64_t r) { write_view(images, H, W, C, views[r], o, out + r * per); });
    return;
  }
  // Every view once, then each row composed from them.
  std::vector<float> unmixed(static_cast<size_t>(n * per));
  parallel_for(n, n > 1, [&](int64_t r) { write_view(images, H, W, C, views[r], o, unmixed.data() + r * per); });
  parallel_for(n, n > 1, [&](int64_t r) { compose_row(unmixed.data(), H, W, C, rows[r], out + r * per); });
}

void compose_row(const float* unmixed, int64_t h, int64_t w, int64_t c, const RowPlan& p, float* row) {
  const int64_t per = h * w * c;
  std::copy_n(unmixed + p.base * per, per, row);
  for (const AssembleTile& t : p.tiles)
    for (int y = 0; y < t.h; ++y)
      std::copy_n(unmixed + ((t.src * h + t.src_top + y) * w + t.src_left) * c, t.w * c,
                  row + ((t.top + y) * w + t.left) * c);
  if (p.blend >= 0) {
    const float l = p.weight;
    const float* other = unmixed + p.blend * per;
    for (int64_t k = 0; k < per; ++k) row[k] = l * row[k] + (1 - l) * other[k];
  }
}

}  // namespace kestrel::cpu
