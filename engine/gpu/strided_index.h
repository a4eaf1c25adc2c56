// Indexing of N strided operands that share one iteration shape, for CUDA
// kernels. The host coalesces dims first (cpu::coalesce: dims where every
// operand is contiguous merge), packs at most kMaxDims of them into a
// StridedIndex that a kernel takes by value, and splits layouts with more
// dims into slices over the leading dims (for_each_slice). Header-only and
// free of CUDA headers, so the host side is tested in CPU-only builds.
#pragma once
#include <array>
#include <cstdint>

#include "engine/cpu/strided.h"

#ifdef __CUDACC__
#define KESTREL_GPU_HD __host__ __device__ __forceinline__
#else
#define KESTREL_GPU_HD inline
#endif

namespace kestrel::gpu {

// Dims a kernel handles after coalescing; more are split into slices on the host.
constexpr int kMaxDims = 6;

template <int N>
struct StridedIndex {
  int ndim = 1;
  int64_t sizes[kMaxDims] = {1};
  int64_t strides[N][kMaxDims] = {};

  // Element offset of every operand for the row-major linear index `linear`.
  // I (uint32_t or uint64_t) is the division type: 32-bit when it fits.
  template <typename I>
  KESTREL_GPU_HD void offsets(int64_t linear, int64_t (&off)[N]) const {
    for (int k = 0; k < N; ++k) off[k] = 0;
    I rem = static_cast<I>(linear);
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
    for (int d = kMaxDims - 1; d > 0; --d) {
      if (d >= ndim) continue;
      const I size = static_cast<I>(sizes[d]);
      const I q = rem / size;
      const int64_t i = static_cast<int64_t>(rem - q * size);
      rem = q;
      for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
    }
    // The outermost index needs no division: what remains is below sizes[0].
    for (int k = 0; k < N; ++k) off[k] += static_cast<int64_t>(rem) * strides[k][0];
  }
};

// True when the whole iteration space is one dense run for every operand.
template <int N>
inline bool is_flat(const cpu::StridedLayout<N>& layout) {
  if (layout.shape.size() != 1) return false;
  for (int k = 0; k < N; ++k)
    if (layout.strides[k][0] != 1 && layout.shape[0] != 1) return false;
  return true;
}

// Calls f(index, base_offsets, numel) once per slice of the coalesced layout:
// the trailing kMaxDims dims form the slice, the leading ones are looped over
// here (base_offsets are each operand's element offset of the slice).
template <int N, typename F>
void for_each_slice(const cpu::StridedLayout<N>& layout, F&& f) {
  const int nd = static_cast<int>(layout.shape.size());
  const int lead = nd > kMaxDims ? nd - kMaxDims : 0;
  StridedIndex<N> index;
  index.ndim = nd - lead;
  int64_t numel = 1;
  for (int d = 0; d < index.ndim; ++d) {
    index.sizes[d] = layout.shape[lead + d];
    numel *= index.sizes[d];
    for (int k = 0; k < N; ++k) index.strides[k][d] = layout.strides[k][lead + d];
  }
  int64_t slices = 1;
  for (int d = 0; d < lead; ++d) slices *= layout.shape[d];
  for (int64_t s = 0; s < slices; ++s) {
    std::array<int64_t, N> base{};
    int64_t rem = s;
    for (int d = lead - 1; d >= 0; --d) {
      const int64_t i = rem % layout.shape[d];
      rem /= layout.shape[d];
      for (int k = 0; k < N; ++k) base[k] += i * layout.strides[k][d];
    }
    f(index, base, numel);
  }
}

// Whether 32-bit division covers every linear index below numel.
inline bool fits_u32(int64_t numel) { return numel <= static_cast<int64_t>(UINT32_MAX); }

}  // namespace kestrel::gpu
