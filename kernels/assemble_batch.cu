// Batch assembly from resident u8 images; see assemble_batch.h.
//
// Proof: tests/test_cuda_data.cpp compares it with the CPU reference on
// random views, holes, tiles and blends. Napkin math: each output element
// reads one or two bytes and writes four: about 6 * n * H * W * C bytes, so a
// 256 x 32 x 32 x 3 batch is 4.7 MB, a few microseconds of an H100's
// bandwidth: the loader's cost is the plan upload, not the pixels.
#include "kernels/assemble_batch.h"

#include <algorithm>

#include "kernels/common.cuh"

namespace kestrel::kernels {
namespace {

constexpr int kThreads = 256;

// Normalized value of view v at output position (y, x), channel c.
__device__ __forceinline__ float view_value(const AssembleBatchShape& s, const uint8_t* images,
                                            const float* mean_std, const int32_t* views, int v, int y, int x,
                                            int c) {
  const int32_t* view = views + static_cast<int64_t>(v) * kViewInts;
  float raw = 0.0f;
  const bool in_hole = y >= view[4] && y < view[4] + view[6] && x >= view[5] && x < view[5] + view[7];
  if (!in_hole) {
    const int sx = view[3] ? s.W - 1 - x : x;
    const int py = view[1] + y - s.pad, px = view[2] + sx - s.pad;
    if (py >= 0 && py < s.H && px >= 0 && px < s.W)
      raw = static_cast<float>(images[((static_cast<int64_t>(view[0]) * s.H + py) * s.W + px) * s.C + c]) * s.scale;
  }
  return __fdiv_rn(__fsub_rn(raw, mean_std[c]), mean_std[s.C + c]);
}

__global__ void assemble_batch_kernel(AssembleBatchShape s, const uint8_t* __restrict__ images,
                                      const float* __restrict__ mean_std, const int32_t* __restrict__ views,
                                      const int32_t* __restrict__ rows, float* __restrict__ out) {
  const int64_t total = static_cast<int64_t>(s.n) * s.H * s.W * s.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % s.C);
    int64_t t = i / s.C;
    const int x = static_cast<int>(t % s.W);
    t /= s.W;
    const int y = static_cast<int>(t % s.H);
    const int r = static_cast<int>(t / s.H);
    const int32_t* row = rows + static_cast<int64_t>(r) * kRowInts;
    int v = row[0], vy = y, vx = x;
    for (int k = 0; k < row[3]; ++k) {  // later tiles cover earlier ones
      const int32_t* tile = row + 4 + k * kTileInts;
      if (y >= tile[1] && y < tile[1] + tile[3] && x >= tile[2] && x < tile[2] + tile[4]) {
        v = tile[0];
        vy = tile[5] + (y - tile[1]);
        vx = tile[6] + (x - tile[2]);
      }
    }
    float value = view_value(s, images, mean_std, views, v, vy, vx, c);
    if (row[1] >= 0) {  // MixUp: l * value + (1 - l) * other, rounded as the CPU rounds it
      const float l = __int_as_float(row[2]);
      const float other = view_value(s, images, mean_std, views, row[1], y, x, c);
      value = __fadd_rn(__fmul_rn(l, value), __fmul_rn(__fsub_rn(1.0f, l), other));
    }
    out[i] = value;
  }
}

}  // namespace

cudaError_t assemble_batch(const AssembleBatchShape& s, const uint8_t* images, const float* mean_std,
                           const int32_t* views, const int32_t* rows, float* out, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(s.n) * s.H * s.W * s.C;
  if (total <= 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1, 65536));
  assemble_batch_kernel<<<blocks, kThreads, 0, stream>>>(s, images, mean_std, views, rows, out);
  return cudaGetLastError();
}

}  // namespace kestrel::kernels
