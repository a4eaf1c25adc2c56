// Deterministic CUDA reductions; see reduce.h.
//
// Row sums: a row of at most kSeqRow elements is summed by one thread in
// index order; a longer row is cut into chunks of kRowChunk elements, each
// summed by one block of kThreads threads (thread t takes elements t,
// t + kThreads, ... in order, then a fixed shuffle tree), and the per-chunk
// partials are row-summed again. Column sums: one thread per column sums
// kColChunk consecutive rows in order; the per-chunk partials are
// column-summed again. Chunk sizes and block size are constants, so the
// order of every addition depends only on the shape.
#include "engine/gpu/reduce.h"

#include "engine/gpu/device_scalar.cuh"

namespace kestrel::gpu {
namespace {

constexpr int64_t kSeqRow = 32;
constexpr int64_t kRowChunk = 16384;
constexpr int64_t kColChunk = 128;

static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block sums assume whole warps");

// Sum over the block; the result is valid in thread 0. Fixed order.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? scratch[lane] : A(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  return v;
}

// One thread per row, in index order.
template <typename In, typename Out, typename A>
__global__ void __launch_bounds__(kThreads) sum_rows_seq_kernel(const In* __restrict__ x, int64_t outer,
                                                                int64_t inner, Out* __restrict__ out) {
  KESTREL_GRID_LOOP(row, outer) {
    const In* p = x + row * inner;
    A acc = A(0);
    for (int64_t i = 0; i < inner; ++i) acc += static_cast<A>(to_math(p[i]));
    out[row] = from_math<Out>(acc);
  }
}

// One block per (row, chunk) task; out[row * chunks + chunk].
template <typename In, typename Out, typename A>
__global__ void __launch_bounds__(kThreads) sum_rows_chunk_kernel(const In* __restrict__ x, int64_t outer,
                                                                  int64_t inner, int64_t chunks,
                                                                  Out* __restrict__ out) {
  __shared__ A scratch[kThreads / 32];
  for (int64_t task = blockIdx.x; task < outer * chunks; task += gridDim.x) {
    const int64_t row = task / chunks, chunk = task % chunks;
    const int64_t begin = chunk * kRowChunk, end = inner < begin + kRowChunk ? inner : begin + kRowChunk;
    const In* p = x + row * inner;
    A acc = A(0);
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) acc += static_cast<A>(to_math(p[i]));
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[task] = from_math<Out>(acc);
    __syncthreads();  // scratch is reused by the next task
  }
}

// One thread per (chunk, column); out[chunk * cols + column].
template <typename In, typename Out, typename A>
__global__ void __launch_bounds__(kThreads) sum_cols_chunk_kernel(const In* __restrict__ x, int64_t rows,
                                                                  int64_t cols, int64_t chunks,
                                                                  Out* __restrict__ out) {
  const int64_t col_blocks = (cols + kThreads - 1) / kThreads;
  for (int64_t task = blockIdx.x; task < chunks * col_blocks; task += gridDim.x) {
    const int64_t chunk = task / col_blocks;
    const int64_t col = (task % col_blocks) * kThreads + threadIdx.x;
    if (col >= cols) continue;
    const int64_t begin = chunk * kColChunk, end = rows < begin + kColChunk ? rows : begin + kColChunk;
    A acc = A(0);
    for (int64_t r = begin; r < end; ++r) acc += static_cast<A>(to_math(x[r * cols + col]));
    out[chunk * cols + col] = from_math<Out>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) max_mid_kernel(const T* __restrict__ x, int64_t outer, int64_t n,
                                                           int64_t inner, T* __restrict__ values,
                                                           int64_t* __restrict__ indices) {
  KESTREL_GRID_LOOP(task, outer * inner) {
    const int64_t o = task / inner, i = task % inner;
    const T* p = x + o * n * inner + i;
    T best = p[0];
    auto best_m = to_math(best);
    int64_t arg = 0;
    for (int64_t k = 1; k < n; ++k) {
      const T v = p[k * inner];
      if (to_math(v) > best_m) {
        best = v;
        best_m = to_math(v);
        arg = k;
      }
    }
    values[task] = best;
    indices[task] = arg;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) max_scatter_kernel(const T* __restrict__ g,
                                                               const int64_t* __restrict__ idx, int64_t outer,
                                                               int64_t n, int64_t inner, T* __restrict__ gi) {
  KESTREL_GRID_LOOP(task, outer * inner) {
    const int64_t o = task / inner, i = task % inner;
    gi[(o * n + idx[task]) * inner + i] = g[task];
  }
}

// Blocks for a loop that hands one task to each block.
unsigned task_grid(int64_t tasks) { return grid_for(tasks, 1); }

template <typename A>
Tensor workspace(int64_t n, Device device) {
  return Tensor::empty({n}, DTypeOf<A>::value, device);
}

template <typename In, typename Out, typename A>
void sum_rows_launch(const In* x, int64_t outer, int64_t inner, Out* out, Device device, cudaStream_t stream) {
  if (inner <= kSeqRow) {
    sum_rows_seq_kernel<In, Out, A><<<grid_for(outer), kThreads, 0, stream>>>(x, outer, inner, out);
    return;
  }
  const int64_t chunks = (inner + kRowChunk - 1) / kRowChunk;
  if (chunks == 1) {
    sum_rows_chunk_kernel<In, Out, A><<<task_grid(outer), kThreads, 0, stream>>>(x, outer, inner, 1, out);
    return;
  }
  const Tensor partial = workspace<A>(outer * chunks, device);
  A* pp = static_cast<A*>(partial.data_ptr());
  sum_rows_chunk_kernel<In, A, A><<<task_grid(outer * chunks), kThreads, 0, stream>>>(x, outer, inner, chunks, pp);
  sum_rows_launch<A, Out, A>(pp, outer, chunks, out, device, stream);
}

template <typename In, typename Out, typename A>
void sum_cols_launch(const In* x, int64_t rows, int64_t cols, Out* out, Device device, cudaStream_t stream) {
  const int64_t chunks = (rows + kColChunk - 1) / kColChunk;
  const int64_t col_blocks = (cols + kThreads - 1) / kThreads;
  if (chunks == 1) {
    sum_cols_chunk_kernel<In, Out, A><<<task_grid(col_blocks), kThreads, 0, stream>>>(x, rows, cols, 1, out);
    return;
  }
  const Tensor partial = workspace<A>(chunks * cols, device);
  A* pp = static_cast<A*>(partial.data_ptr());
  sum_cols_chunk_kernel<In, A, A><<<task_grid(chunks * col_blocks), kThreads, 0, stream>>>(x, rows, cols, chunks, pp);
  sum_cols_launch<A, Out, A>(pp, chunks, cols, out, device, stream);
}

std::string describe(const Tensor& t) {
  return detail::concat(dtype_name(t.dtype()), " ", shape_str(t.shape()));
}

void check_reduce_args(const char* op, const Tensor& x, int64_t numel, const Tensor& out, int64_t out_numel) {
  KCHECK(x.device().is_cuda() && out.device() == x.device(), DeviceError, op,
         ": expected CUDA tensors on one device, got ", x.device().str(), " and ", out.device().str());
  KCHECK(x.dtype() == out.dtype(), DTypeError, op, ": dtype mismatch ", describe(x), " -> ", describe(out));
  KCHECK(x.is_contiguous() && out.is_contiguous() && x.numel() == numel && out.numel() == out_numel, ShapeError,
         op, ": needs contiguous ", describe(x), " of ", numel, " elements -> ", out_numel, ", got ", describe(out));
}

// All-zero bits are 0.0 in every floating dtype.
void zero(const Tensor& out, cudaStream_t stream, const char* op) {
  KESTREL_CUDA_CHECK_CTX(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), stream), op, " of an empty dim into ",
                         describe(out));
}

}  // namespace

void sum_rows(const Tensor& x, int64_t outer, int64_t inner, const Tensor& out) {
  check_reduce_args("sum", x, outer * inner, out, outer);
  if (outer == 0) return;
  OnDevice on(x);
  if (inner == 0) return zero(out, on.stream, "sum");
  dispatch_float_dev(x.dtype(), "sum", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    sum_rows_launch<T, T, MathT<T>>(static_cast<const T*>(x.data_ptr()), outer, inner, static_cast<T*>(out.data_ptr()),
                                    x.device(), on.stream);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "sum over rows of ", describe(x), " viewed as [", outer, ",", inner, "]");
}

void sum_cols(const Tensor& x, int64_t rows, int64_t cols, const Tensor& out) {
  check_reduce_args("sum", x, rows * cols, out, cols);
  if (cols == 0) return;
  OnDevice on(x);
  if (rows == 0) return zero(out, on.stream, "sum");
  dispatch_float_dev(x.dtype(), "sum", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    sum_cols_launch<T, T, MathT<T>>(static_cast<const T*>(x.data_ptr()), rows, cols, static_cast<T*>(out.data_ptr()),
                                    x.device(), on.stream);
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "sum over columns of ", describe(x), " viewed as [", rows, ",", cols,
                         "]");
}

void max_mid(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& values, const Tensor& indices) {
  check_reduce_args("max", x, outer * n * inner, values, outer * inner);
  KCHECK(n > 0, ShapeError, "max: reducing an empty dim of ", describe(x));
  KCHECK(indices.device() == x.device() && indices.dtype() == DType::I64 && indices.is_contiguous() &&
             indices.numel() == outer * inner,
         ShapeError, "max: indices must be contiguous i64 of ", outer * inner, " elements, got ", describe(indices));
  if (outer * inner == 0) return;
  OnDevice on(x);
  dispatch_float_dev(x.dtype(), "max", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    max_mid_kernel<T><<<grid_for(outer * inner), kThreads, 0, on.stream>>>(
        static_cast<const T*>(x.data_ptr()), outer, n, inner, static_cast<T*>(values.data_ptr()),
        static_cast<int64_t*>(indices.data_ptr()));
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "max over dim of ", describe(x), " viewed as [", outer, ",", n, ",",
                         inner, "]");
}

void max_backward_scatter(const Tensor& grad, const Tensor& indices, int64_t outer, int64_t n, int64_t inner,
                          const Tensor& grad_in) {
  check_reduce_args("max backward", grad_in, outer * n * inner, grad, outer * inner);
  KCHECK(indices.device() == grad.device() && indices.dtype() == DType::I64 && indices.is_contiguous() &&
             indices.numel() == outer * inner,
         ShapeError, "max backward: indices must be contiguous i64 of ", outer * inner, " elements, got ",
         describe(indices));
  if (outer * inner == 0) return;
  OnDevice on(grad);
  dispatch_float_dev(grad.dtype(), "max backward", [&](auto tag) {
    using T = KESTREL_SCALAR(tag);
    max_scatter_kernel<T><<<grid_for(outer * inner), kThreads, 0, on.stream>>>(
        static_cast<const T*>(grad.data_ptr()), static_cast<const int64_t*>(indices.data_ptr()), outer, n, inner,
        static_cast<T*>(grad_in.data_ptr()));
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "max backward into ", describe(grad_in));
}

}  // namespace kestrel::gpu
