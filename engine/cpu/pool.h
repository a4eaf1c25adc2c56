// CPU pooling and resize kernels on NHWC activations, raw pointers.
// Forward passes parallelise over output rows; backward passes gather per input
// row (engine/cpu/taps.h), so they are deterministic and need no atomics.
#pragma once
#include <cstdint>

namespace kestrel::cpu {

struct PoolGeom {
  int64_t n = 0, h = 0, w = 0, c = 0;  // input [n, h, w, c]
  int64_t oh = 0, ow = 0;              // output [n, oh, ow, c]
  int64_t kernel = 1, stride = 1, pad = 0;
};

// argmax holds, per output element, the flat index ih * w + iw of the chosen input.
template <typename T>
void max_pool2d_forward(const PoolGeom& g, const T* x, T* y, int32_t* argmax);
template <typename T>
void max_pool2d_backward(const PoolGeom& g, const T* gy, const int32_t* argmax, T* gx);

template <typename T>
void avg_pool2d_forward(const PoolGeom& g, bool count_include_pad, const T* x, T* y);
template <typename T>
void avg_pool2d_backward(const PoolGeom& g, bool count_include_pad, const T* gy, T* gx);

// Output bin i covers [floor(i*in/out), ceil((i+1)*in/out)) as in PyTorch.
// A 1x1 output (global pooling) sums in the order of the two functions below.
template <typename T>
void adaptive_avg_pool2d_forward(const PoolGeom& g, const T* x, T* y);

// Global average pooling in two steps, so that rows can be summed as they are
// made (a banded block, engine/ops/conv.h) with the same result: each row's
// sum left to right, then an image's row sums top to bottom. Rows in
// parallel, where the single running sum per image left one thread at batch 1.
// row_sums: sums[r, c] = sum over w of x[r, w, c], for rows of width pixels.
template <typename T>
void row_sums(const T* x, int64_t rows, int64_t width, int64_t c, T* sums);
// y[n, c] = (sum over h of sums[n, h, c]) / (h * width).
template <typename T>
void mean_of_row_sums(const T* sums, int64_t n, int64_t h, int64_t width, int64_t c, T* y);
template <typename T>
void adaptive_avg_pool2d_backward(const PoolGeom& g, const T* gy, T* gx);

// Coordinate attention's two poolings in one pass over x [n, h, w, c]:
// y [n, h + w, c], rows [0, h) the mean of each row (adaptive_avg_pool2d to
// h x 1), rows [h, h + w) the mean of each column (to 1 x w). The same sums in
// the same order as those, so the same values bit for bit.
template <typename T>
void coord_pool_forward(const T* x, int64_t n, int64_t h, int64_t w, int64_t c, T* y);
// Its gradient, gx [n, h, w, c] from gy [n, h + w, c]: each pixel's row
// gradient / w plus its column gradient / h, the sum of the two adaptive
// poolings' backward passes bit for bit.
template <typename T>
void coord_pool_backward(const T* gy, int64_t n, int64_t h, int64_t w, int64_t c, T* gx);

template <typename T>
void resize_bilinear_forward(const PoolGeom& g, bool align_corners, const T* x, T* y);
template <typename T>
void resize_bilinear_backward(const PoolGeom& g, bool align_corners, const T* gy, T* gx);

}  // namespace kestrel::cpu
