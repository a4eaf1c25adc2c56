// CUDA pooling and resize; see pool.h. One thread per output element in the
// forward passes and per input element in the backward passes, channel
// fastest, so a warp reads and writes 32 consecutive channels.
#include "engine/gpu/pool.h"

#include "engine/gpu/device_scalar.cuh"

namespace kestrel::gpu {

namespace {

using cpu::PoolGeom;

// Position of element i of an [n, rows, cols, c] tensor.
struct Pixel {
  int64_t n, row, col, c;
};

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ Pixel unflatten(int64_t i, int64_t rows, int64_t cols, int64_t channels) {
  Pixel p;
  p.c = i % channels;
  int64_t t = i / channels;
  p.col = t % cols;
  t /= cols;
  p.row = t % rows;
  p.n = t / rows;
  return p;
}

// Outputs [lo, hi] of a strided, padded kernel window whose window covers input i.
struct Range {
  int64_t lo, hi;
};

__device__ __forceinline__ Range covering_windows(int64_t i, int64_t out, int64_t kernel, int64_t stride,
                                                  int64_t pad) {
  const int64_t first = i + pad - kernel + 1;
  const int64_t lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  const int64_t hi = imin((i + pad) / stride, out - 1);
  return {lo, hi};
}

// ---------------------------------------------------------------- max pool

template <typename T>
__global__ void max_pool_forward_kernel(PoolGeom g, const T* __restrict__ x, T* __restrict__ y,
                                        int32_t* __restrict__ argmax) {
  using A = MathT<T>;
  const int64_t total = g.n * g.oh * g.ow * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const Pixel p = unflatten(i, g.oh, g.ow, g.c);
    const int64_t h0 = imax(p.row * g.stride - g.pad, 0), h1 = imin(p.row * g.stride - g.pad + g.kernel, g.h);
    const int64_t w0 = imax(p.col * g.stride - g.pad, 0), w1 = imin(p.col * g.stride - g.pad + g.kernel, g.w);
    A best = -INFINITY;
    int32_t idx = -1;
    for (int64_t ih = h0; ih < h1; ++ih) {
      for (int64_t iw = w0; iw < w1; ++iw) {
        const A v = to_math(x[((p.n * g.h + ih) * g.w + iw) * g.c + p.c]);
        // NaN wins, as in PyTorch; the first maximum is kept on ties.
        if (v > best || (v != v && best == best) || idx < 0) {
          best = v;
          idx = static_cast<int32_t>(ih * g.w + iw);
        }
      }
    }
    y[i] = from_math<T>(best);
    argmax[i] = idx;
  }
}

template <typename T>
__global__ void max_pool_backward_kernel(PoolGeom g, const T* __restrict__ gy, const int32_t* __restrict__ argmax,
                                         T* __restrict__ gx) {
  using A = MathT<T>;
  const int64_t total = g.n * g.h * g.w * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const Pixel p = unflatten(i, g.h, g.w, g.c);
    const int32_t flat = static_cast<int32_t>(p.row * g.w + p.col);
    const Range rh = covering_windows(p.row, g.oh, g.kernel, g.stride, g.pad);
    const Range rw = covering_windows(p.col, g.ow, g.kernel, g.stride, g.pad);
    A sum = 0;
    for (int64_t oh = rh.lo; oh <= rh.hi; ++oh) {
      for (int64_t ow = rw.lo; ow <= rw.hi; ++ow) {
        const int64_t off = ((p.n * g.oh + oh) * g.ow + ow) * g.c + p.c;
        if (argmax[off] == flat) sum += to_math(gy[off]);
      }
    }
    gx[i] = from_math<T>(sum);
  }
}

// ---------------------------------------------------------------- average pools

// Input rows [start, end) read by one output, and its divisor along this dim.
struct Window {
  int64_t start, end, count;
};

__device__ __forceinline__ Window pool_window(int64_t o, int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                              bool include_pad) {
  int64_t a = o * stride - pad;
  int64_t b = imin(a + kernel, in + pad);
  const int64_t padded = b - a;
  a = imax(a, 0);
  b = imin(b, in);
  return {a, b, include_pad ? padded : b - a};
}

// PyTorch's adaptive bins: [floor(o * in / out), ceil((o + 1) * in / out)).
__device__ __forceinline__ Window adaptive_window(int64_t o, int64_t in, int64_t out) {
  const int64_t a = (o * in) / out;
  const int64_t b = ((o + 1) * in + out - 1) / out;
  return {a, b, b - a};
}

template <typename A>
__device__ __forceinline__ A inverse_count(int64_t count) {
  return count > 0 ? A(1) / static_cast<A>(count) : A(0);
}

struct PoolWindows {
  bool adaptive;
  bool include_pad;
  __device__ __forceinline__ Window rows(const PoolGeom& g, int64_t o) const {
    return adaptive ? adaptive_window(o, g.h, g.oh) : pool_window(o, g.h, g.kernel, g.stride, g.pad, include_pad);
  }
  __device__ __forceinline__ Window cols(const PoolGeom& g, int64_t o) const {
    return adaptive ? adaptive_window(o, g.w, g.ow) : pool_window(o, g.w, g.kernel, g.stride, g.pad, include_pad);
  }
  // Outputs along one dim whose window may contain input i (callers re-check).
  __device__ __forceinline__ Range candidates(int64_t i, int64_t in, int64_t out, const PoolGeom& g) const {
    if (!adaptive) return covering_windows(i, out, g.kernel, g.stride, g.pad);
    const int64_t lo = (i * out) / in;
    const int64_t hi = imin(((i + 1) * out + in - 1) / in - 1, out - 1);
    return {lo, hi};
  }
};

template <typename T>
__global__ void avg_pool_forward_kernel(PoolGeom g, PoolWindows win, const T* __restrict__ x, T* __restrict__ y) {
  using A = MathT<T>;
  const int64_t total = g.n * g.oh * g.ow * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const Pixel p = unflatten(i, g.oh, g.ow, g.c);
    const Window wh = win.rows(g, p.row), ww = win.cols(g, p.col);
    A sum = 0;
    for (int64_t ih = wh.start; ih < wh.end; ++ih)
      for (int64_t iw = ww.start; iw < ww.end; ++iw) sum += to_math(x[((p.n * g.h + ih) * g.w + iw) * g.c + p.c]);
    y[i] = from_math<T>(sum * inverse_count<A>(wh.count * ww.count));
  }
}

template <typename T>
__global__ void avg_pool_backward_kernel(PoolGeom g, PoolWindows win, const T* __restrict__ gy, T* __restrict__ gx) {
  using A = MathT<T>;
  const int64_t total = g.n * g.h * g.w * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const Pixel p = unflatten(i, g.h, g.w, g.c);
    const Range rh = win.candidates(p.row, g.h, g.oh, g);
    const Range rw = win.candidates(p.col, g.w, g.ow, g);
    A sum = 0;
    for (int64_t oh = rh.lo; oh <= rh.hi; ++oh) {
      const Window wh = win.rows(g, oh);
      if (p.row < wh.start || p.row >= wh.end) continue;
      const A inv_h = inverse_count<A>(wh.count);
      for (int64_t ow = rw.lo; ow <= rw.hi; ++ow) {
        const Window ww = win.cols(g, ow);
        if (p.col < ww.start || p.col >= ww.end) continue;
        sum += to_math(gy[((p.n * g.oh + oh) * g.ow + ow) * g.c + p.c]) * (inv_h * inverse_count<A>(ww.count));
      }
    }
    gx[i] = from_math<T>(sum);
  }
}

// Coordinate pooling: one thread per output (n, position, c), channel
// fastest; positions [0, h) average a row over w, [h, h + w) a column over h
// (the adaptive kernel's sums and scales for those two shapes).
template <typename T>
__global__ void coord_pool_forward_kernel(PoolGeom g, const T* __restrict__ x, T* __restrict__ y) {
  using A = MathT<T>;
  const int64_t positions = g.h + g.w, total = g.n * positions * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const int64_t c = i % g.c, t = i / g.c, pos = t % positions, n = t / positions;
    A sum = 0;
    if (pos < g.h) {
      const T* row = x + (n * g.h + pos) * g.w * g.c + c;
      for (int64_t iw = 0; iw < g.w; ++iw) sum += to_math(row[iw * g.c]);
      y[i] = from_math<T>(sum * inverse_count<A>(g.w));
    } else {
      const T* col = x + (n * g.h * g.w + (pos - g.h)) * g.c + c;
      for (int64_t ih = 0; ih < g.h; ++ih) sum += to_math(col[ih * g.w * g.c]);
      y[i] = from_math<T>(sum * inverse_count<A>(g.h));
    }
  }
}

// gx[n, h, w, c] = gy[n, h, c] / w + gy[n, H + w, c] / h: one read of each.
template <typename T>
__global__ void coord_pool_backward_kernel(PoolGeom g, const T* __restrict__ gy, T* __restrict__ gx) {
  using A = MathT<T>;
  const int64_t total = g.n * g.h * g.w * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const Pixel p = unflatten(i, g.h, g.w, g.c);
    const T* image = gy + p.n * (g.h + g.w) * g.c + p.c;
    const A from_row = to_math(image[p.row * g.c]) * inverse_count<A>(g.w);
    const A from_col = to_math(image[(g.h + p.col) * g.c]) * inverse_count<A>(g.h);
    gx[i] = from_math<T>(from_row + from_col);
  }
}

// Global average: block (32 channels, kRowsY pixel lanes) per (channel tile,
// image), images strided over gridDim.y (at most 65535); the pixel lanes are
// summed in a fixed order, so the result is deterministic.
constexpr int kChannelsX = 32;
constexpr int kRowsY = 8;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__global__ void global_avg_pool_kernel(int64_t batch, int64_t pixels, int64_t channels, const T* __restrict__ x,
                                       T* __restrict__ y) {
  using A = MathT<T>;
  __shared__ A partial[kRowsY][kChannelsX];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelsX + threadIdx.x;
  for (int64_t n = blockIdx.y; n < batch; n += gridDim.y) {
    A sum = 0;
    if (c < channels) {
      const T* base = x + n * pixels * channels + c;
      for (int64_t q = threadIdx.y; q < pixels; q += kRowsY) sum += to_math(base[q * channels]);
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels) {
      A total = 0;
      for (int r = 0; r < kRowsY; ++r) total += partial[r][threadIdx.x];
      y[n * channels + c] = from_math<T>(total * (A(1) / static_cast<A>(pixels)));
    }
    __syncthreads();  // partial is reused by the next image
  }
}

// ---------------------------------------------------------------- bilinear

struct Interp {
  int64_t i0, i1;
  double l0, l1;
};

// PyTorch's source index rule, in double without contraction so that it
// agrees with the CPU path (engine/cpu/pool.cpp) bit for bit.
__device__ __forceinline__ Interp bilinear_interp(int64_t o, int64_t in, int64_t out, bool align_corners) {
  double scale;
  if (align_corners)
    scale = out > 1 ? __ddiv_rn(static_cast<double>(in - 1), static_cast<double>(out - 1)) : 0.0;
  else
    scale = __ddiv_rn(static_cast<double>(in), static_cast<double>(out));
  double src = align_corners ? __dmul_rn(scale, static_cast<double>(o))
                             : __dsub_rn(__dmul_rn(scale, __dadd_rn(static_cast<double>(o), 0.5)), 0.5);
  if (!align_corners && src < 0) src = 0;
  const int64_t i0 = imin(static_cast<int64_t>(floor(src)), in - 1);
  const double l1 = fmin(fmax(__dsub_rn(src, static_cast<double>(i0)), 0.0), 1.0);
  const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
  return {i0, i1, __dsub_rn(1.0, l1), l1};
}

// First output o in [0, out) with i0(o) >= target (out when none); i0 is non-decreasing in o.
__device__ __forceinline__ int64_t first_output_reading(int64_t target, int64_t in, int64_t out, bool align_corners) {
  int64_t lo = 0, hi = out;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (bilinear_interp(mid, in, out, align_corners).i0 >= target)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Weight with which output o reads input i along one dim (0 when it does not).
__device__ __forceinline__ double interp_weight(const Interp& t, int64_t i) {
  return (t.i0 == i ? t.l0 : 0.0) + (t.i1 == i ? t.l1 : 0.0);
}

template <typename T>
__global__ void resize_forward_kernel(PoolGeom g, bool align_corners, const T* __restrict__ x, T* __restrict__ y) {
  using A = MathT<T>;
  const int64_t total = g.n * g.oh * g.ow * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const Pixel p = unflatten(i, g.oh, g.ow, g.c);
    const Interp a = bilinear_interp(p.row, g.h, g.oh, align_corners);
    const Interp b = bilinear_interp(p.col, g.w, g.ow, align_corners);
    const T* r0 = x + (p.n * g.h + a.i0) * g.w * g.c + p.c;
    const T* r1 = x + (p.n * g.h + a.i1) * g.w * g.c + p.c;
    const A h0 = static_cast<A>(a.l0), h1 = static_cast<A>(a.l1);
    const A w0 = static_cast<A>(b.l0), w1 = static_cast<A>(b.l1);
    const A top = w0 * to_math(r0[b.i0 * g.c]) + w1 * to_math(r0[b.i1 * g.c]);
    const A bottom = w0 * to_math(r1[b.i0 * g.c]) + w1 * to_math(r1[b.i1 * g.c]);
    y[i] = from_math<T>(h0 * top + h1 * bottom);
  }
}

// Outputs reading input i are those with i0 in {i - 1, i}: a contiguous range
// found by binary search, so the gather needs no precomputed tables.
template <typename T>
__global__ void resize_backward_kernel(PoolGeom g, bool align_corners, const T* __restrict__ gy, T* __restrict__ gx) {
  using A = MathT<T>;
  const int64_t total = g.n * g.h * g.w * g.c;
  KESTREL_GRID_LOOP(i, total) {
    const Pixel p = unflatten(i, g.h, g.w, g.c);
    const int64_t oh0 = first_output_reading(p.row - 1, g.h, g.oh, align_corners);
    const int64_t oh1 = first_output_reading(p.row + 1, g.h, g.oh, align_corners);
    const int64_t ow0 = first_output_reading(p.col - 1, g.w, g.ow, align_corners);
    const int64_t ow1 = first_output_reading(p.col + 1, g.w, g.ow, align_corners);
    A sum = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const double wh = interp_weight(bilinear_interp(oh, g.h, g.oh, align_corners), p.row);
      if (wh == 0.0) continue;
      const T* row = gy + (p.n * g.oh + oh) * g.ow * g.c + p.c;
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const double ww = interp_weight(bilinear_interp(ow, g.w, g.ow, align_corners), p.col);
        if (ww != 0.0) sum += to_math(row[ow * g.c]) * static_cast<A>(wh * ww);
      }
    }
    gx[i] = from_math<T>(sum);
  }
}

int64_t output_numel(const PoolGeom& g) { return g.n * g.oh * g.ow * g.c; }
int64_t input_numel(const PoolGeom& g) { return g.n * g.h * g.w * g.c; }

// One thread per element of `total`, on t's device, stream and dtype:
// kernel(tag, grid, stream) launches the instance for the device type.
template <typename Launch>
void launch_elementwise(const char* op, const Tensor& t, int64_t total, Launch&& launch) {
  if (total == 0) return;
  launch_float_dev(t, op, [&](auto tag, cudaStream_t stream) { launch(tag, grid_for(total), stream); });
}

void window_avg_forward(const PoolGeom& g, PoolWindows win, const Tensor& x, const Tensor& y, const char* op) {
  launch_elementwise(op, x, output_numel(g), [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    avg_pool_forward_kernel<T><<<grid, kThreads, 0, stream>>>(g, win, device_ptr<const T>(x), device_ptr<T>(y));
  });
}

void window_avg_backward(const PoolGeom& g, PoolWindows win, const Tensor& gy, const Tensor& gx, const char* op) {
  launch_elementwise(op, gy, input_numel(g), [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    avg_pool_backward_kernel<T><<<grid, kThreads, 0, stream>>>(g, win, device_ptr<const T>(gy), device_ptr<T>(gx));
  });
}

}  // namespace

void max_pool2d_forward(const PoolGeom& g, const Tensor& x, const Tensor& y, const Tensor& argmax) {
  launch_elementwise("max_pool2d", x, output_numel(g), [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    max_pool_forward_kernel<T><<<grid, kThreads, 0, stream>>>(g, device_ptr<const T>(x), device_ptr<T>(y),
                                                              device_ptr<int32_t>(argmax));
  });
}

void max_pool2d_backward(const PoolGeom& g, const Tensor& gy, const Tensor& argmax, const Tensor& gx) {
  launch_elementwise("max_pool2d backward", gy, input_numel(g), [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    max_pool_backward_kernel<T><<<grid, kThreads, 0, stream>>>(g, device_ptr<const T>(gy),
                                                               device_ptr<const int32_t>(argmax), device_ptr<T>(gx));
  });
}

void avg_pool2d_forward(const PoolGeom& g, bool count_include_pad, const Tensor& x, const Tensor& y) {
  window_avg_forward(g, PoolWindows{false, count_include_pad}, x, y, "avg_pool2d");
}

void avg_pool2d_backward(const PoolGeom& g, bool count_include_pad, const Tensor& gy, const Tensor& gx) {
  window_avg_backward(g, PoolWindows{false, count_include_pad}, gy, gx, "avg_pool2d backward");
}

void adaptive_avg_pool2d_forward(const PoolGeom& g, const Tensor& x, const Tensor& y) {
  if (g.oh != 1 || g.ow != 1) return window_avg_forward(g, PoolWindows{true, true}, x, y, "adaptive_avg_pool2d");
  if (output_numel(g) == 0) return;
  launch_float_dev(x, "global_avg_pool", [&](auto tag, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    const dim3 grid(static_cast<unsigned>((g.c + kChannelsX - 1) / kChannelsX),
                    static_cast<unsigned>(std::min(g.n, kMaxGridY)));
    global_avg_pool_kernel<T><<<grid, dim3(kChannelsX, kRowsY), 0, stream>>>(g.n, g.h * g.w, g.c,
                                                                             device_ptr<const T>(x), device_ptr<T>(y));
  });
}

void adaptive_avg_pool2d_backward(const PoolGeom& g, const Tensor& gy, const Tensor& gx) {
  window_avg_backward(g, PoolWindows{true, true}, gy, gx, "adaptive_avg_pool2d backward");
}

void coord_pool_forward(const PoolGeom& g, const Tensor& x, const Tensor& y) {
  launch_elementwise("coord_pool", x, g.n * (g.h + g.w) * g.c, [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    coord_pool_forward_kernel<T><<<grid, kThreads, 0, stream>>>(g, device_ptr<const T>(x), device_ptr<T>(y));
  });
}

void coord_pool_backward(const PoolGeom& g, const Tensor& gy, const Tensor& gx) {
  launch_elementwise("coord_pool backward", gy, input_numel(g), [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    coord_pool_backward_kernel<T><<<grid, kThreads, 0, stream>>>(g, device_ptr<const T>(gy), device_ptr<T>(gx));
  });
}

void resize_bilinear_forward(const PoolGeom& g, bool align_corners, const Tensor& x, const Tensor& y) {
  launch_elementwise("resize_bilinear", x, output_numel(g), [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    resize_forward_kernel<T><<<grid, kThreads, 0, stream>>>(g, align_corners, device_ptr<const T>(x),
                                                            device_ptr<T>(y));
  });
}

void resize_bilinear_backward(const PoolGeom& g, bool align_corners, const Tensor& gy, const Tensor& gx) {
  launch_elementwise("resize_bilinear backward", gy, input_numel(g), [&](auto tag, unsigned grid, cudaStream_t stream) {
    using T = KESTREL_SCALAR(tag);
    resize_backward_kernel<T><<<grid, kThreads, 0, stream>>>(g, align_corners, device_ptr<const T>(gy),
                                                             device_ptr<T>(gx));
  });
}

}  // namespace kestrel::gpu
