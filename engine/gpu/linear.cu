// Bias kernels for linear and convolution; see linear.h.
#include "engine/gpu/linear.h"

#include <algorithm>

#include "engine/gpu/device_scalar.cuh"

namespace kestrel::gpu {

namespace {

constexpr int kColTile = 32;     // columns per block: one warp reads 32 adjacent elements of a row
constexpr int kRowLanes = 8;     // rows read in parallel per block
constexpr int kRowsPerSplit = 1024;
constexpr int kMaxSplits = 512;

unsigned blocks_for(int64_t n, int64_t per_block, int64_t cap) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + per_block - 1) / per_block, 1, cap));
}

template <typename T>
__global__ void broadcast_rows_kernel(const T* __restrict__ row, T* __restrict__ out, int64_t cols, int64_t total) {
  KESTREL_GRID_LOOP(i, total) out[i] = row[i % cols];
}

// Block (kColTile columns x kRowLanes lanes) sums the rows of split
// blockIdx.y for its columns; the lanes are combined in a fixed tree, so the
// partial sums do not depend on scheduling.
template <typename T, typename Acc>
__global__ void column_partial_kernel(const T* __restrict__ a, Acc* __restrict__ partial, int64_t rows, int64_t cols,
                                      int64_t rows_per_split) {
  __shared__ Acc lanes[kRowLanes][kColTile];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t end = min(rows, begin + rows_per_split);
  Acc sum = 0;
  if (c < cols)
    for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) sum += to_math(a[r * cols + c]);
  lanes[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  for (int half = kRowLanes / 2; half > 0; half >>= 1) {
    if (threadIdx.y < half) lanes[threadIdx.y][threadIdx.x] += lanes[threadIdx.y + half][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < cols) partial[static_cast<int64_t>(blockIdx.y) * cols + c] = lanes[0][threadIdx.x];
}

// Adds the splits' partial sums in split order.
template <typename T, typename Acc>
__global__ void column_finalize_kernel(const Acc* __restrict__ partial, T* __restrict__ out, int64_t cols,
                                       int splits) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  Acc sum = 0;
  for (int s = 0; s < splits; ++s) sum += partial[static_cast<int64_t>(s) * cols + c];
  out[c] = from_math<T>(sum);
}

}  // namespace

void broadcast_rows(const Tensor& row, const Tensor& out, const char* op) {
  KCHECK(row.is_contiguous() && out.is_contiguous() && row.dtype() == out.dtype() && row.device() == out.device(),
         ValueError, op, ": broadcast_rows needs contiguous tensors of one dtype and device (row ",
         shape_str(row.shape()), ", out ", shape_str(out.shape()), ")");
  const int64_t cols = row.numel(), total = out.numel();
  if (total == 0) return;
  KCHECK(cols > 0 && total % cols == 0, ShapeError, op, ": cannot broadcast a row of ", cols, " elements over ",
         shape_str(out.shape()));
  OnDevice on(out);
  dispatch_float_dev(out.dtype(), op, [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    broadcast_rows_kernel<T><<<grid_for(total), kThreads, 0, on.stream>>>(
        static_cast<const T*>(row.data_ptr()), static_cast<T*>(out.data_ptr()), cols, total);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), op, ": broadcasting bias ", shape_str(row.shape()), " over ",
                         shape_str(out.shape()));
}

Tensor column_sums(const Tensor& a, int64_t cols, const char* op) {
  KCHECK(a.is_contiguous(), ValueError, op, ": column_sums needs a contiguous tensor, got strides ",
         shape_str(a.strides()));
  KCHECK(cols > 0 ? a.numel() % cols == 0 : a.numel() == 0, ShapeError, op, ": ", shape_str(a.shape()),
         " is not a matrix with ", cols, " columns");
  Tensor out = Tensor::empty({cols}, a.dtype(), a.device());
  if (cols == 0) return out;
  const int64_t rows = a.numel() / cols;
  const int splits = static_cast<int>(blocks_for(rows, kRowsPerSplit, kMaxSplits));
  const int64_t rows_per_split = (rows + splits - 1) / splits;
  OnDevice on(a);
  dispatch_float_dev(a.dtype(), op, [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    using Acc = MathT<T>;
    const Tensor workspace = Tensor::empty({static_cast<int64_t>(splits) * cols * static_cast<int64_t>(sizeof(Acc))},
                                           DType::U8, a.device());
    Acc* partial = static_cast<Acc*>(workspace.data_ptr());
    const dim3 grid(blocks_for(cols, kColTile, INT32_MAX), static_cast<unsigned>(splits));
    column_partial_kernel<T, Acc><<<grid, dim3(kColTile, kRowLanes), 0, on.stream>>>(
        static_cast<const T*>(a.data_ptr()), partial, rows, cols, rows_per_split);
    column_finalize_kernel<T, Acc><<<blocks_for(cols, kThreads, INT32_MAX), kThreads, 0, on.stream>>>(
        partial, static_cast<T*>(out.data_ptr()), cols, splits);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), op, ": column sums of ", shape_str(a.shape()), " as [",
                         a.numel() / cols, ", ", cols, "]");
  return out;
}

}  // namespace kestrel::gpu
