// Strided copy with cast and broadcast, and strided fill. Dims are coalesced
// on the host; a dense same-dtype copy is a cudaMemcpyAsync, a dense zero or
// byte-pattern fill a cudaMemsetAsync. Same-dtype copies and all fills move
// raw bits (one kernel per element width); converting copies instantiate
// every (destination, source) dtype pair.
#include "engine/gpu/copy.h"

#include <cstring>

#include "engine/cpu/scalar_cast.h"
#include "engine/gpu/device_scalar.cuh"
#include "engine/gpu/strided_index.h"

namespace kestrel::gpu {
namespace {

template <typename D, typename S>
__global__ void __launch_bounds__(kThreads) copy_flat_kernel(D* __restrict__ dst, const S* __restrict__ src,
                                                             int64_t n) {
  KESTREL_GRID_LOOP(i, n) dst[i] = cast_value<D>(src[i]);
}

template <typename D, typename S, typename I>
__global__ void __launch_bounds__(kThreads) copy_strided_kernel(D* __restrict__ dst, const S* __restrict__ src,
                                                                StridedIndex<2> index, int64_t n) {
  KESTREL_GRID_LOOP(i, n) {
    int64_t off[2];
    index.offsets<I>(i, off);
    dst[off[0]] = cast_value<D>(src[off[1]]);
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads) fill_kernel(T* __restrict__ dst, StridedIndex<1> index, int64_t n,
                                                        T value) {
  KESTREL_GRID_LOOP(i, n) {
    int64_t off[1];
    index.offsets<I>(i, off);
    dst[off[0]] = value;
  }
}

std::string describe(const Tensor& t) {
  return detail::concat(dtype_name(t.dtype()), " ", shape_str(t.shape()), " strides ", shape_str(t.strides()));
}

template <typename D, typename S>
void launch_copy(D* dst, const S* src, const cpu::StridedLayout<2>& layout, cudaStream_t stream) {
  if (is_flat(layout)) {
    const int64_t n = layout.shape[0];
    copy_flat_kernel<D, S><<<grid_for(n), kThreads, 0, stream>>>(dst, src, n);
    return;
  }
  for_each_slice<2>(layout, [&](const StridedIndex<2>& index, const std::array<int64_t, 2>& base, int64_t n) {
    if (fits_u32(n))
      copy_strided_kernel<D, S, uint32_t><<<grid_for(n), kThreads, 0, stream>>>(dst + base[0], src + base[1], index, n);
    else
      copy_strided_kernel<D, S, uint64_t><<<grid_for(n), kThreads, 0, stream>>>(dst + base[0], src + base[1], index, n);
  });
}

}  // namespace

void copy_strided(const Tensor& dst, const Tensor& src) {
  KCHECK(dst.device() == src.device() && dst.device().is_cuda(), DeviceError, "copy_: CUDA copy between ",
         src.device().str(), " and ", dst.device().str());
  if (dst.numel() == 0) return;
  OnDevice on(dst);
  const auto layout = cpu::coalesce<2>(dst.shape(), {dst.strides(), cpu::broadcast_strides(src, dst.shape())});
  if (dst.dtype() == src.dtype() && is_flat(layout)) {
    KESTREL_CUDA_CHECK_CTX(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(), cudaMemcpyDeviceToDevice,
                                           on.stream),
                           "copy_ ", describe(src), " -> ", describe(dst));
    return;
  }
  if (dst.dtype() == src.dtype()) {
    dispatch_bits(dtype_size(dst.dtype()), [&](auto tag) {
      using B = KESTREL_SCALAR(tag);
      launch_copy<B, B>(static_cast<B*>(dst.data_ptr()), static_cast<const B*>(src.data_ptr()), layout, on.stream);
    });
  } else {
    dispatch_all_dev(dst.dtype(), [&](auto dtag) {
      using D = KESTREL_SCALAR(dtag);
      dispatch_all_dev(src.dtype(), [&](auto stag) {
        using S = KESTREL_SCALAR(stag);
        launch_copy<D, S>(static_cast<D*>(dst.data_ptr()), static_cast<const S*>(src.data_ptr()), layout, on.stream);
      });
    });
  }
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "copy_ ", describe(src), " -> ", describe(dst));
}

void fill(const Tensor& dst, double value) {
  KCHECK(dst.device().is_cuda(), DeviceError, "fill_: CUDA fill of a ", dst.device().str(), " tensor");
  if (dst.numel() == 0) return;
  OnDevice on(dst);
  // The element's bits, converted exactly as the CPU's fill_ does.
  uint64_t bits = 0;
  dispatch_all(dst.dtype(), "fill_", [&](auto tag) {
    using scalar_t = KESTREL_SCALAR(tag);
    const scalar_t v = cpu::from_double<scalar_t>(value);
    std::memcpy(&bits, &v, sizeof(v));
  });
  const size_t width = dtype_size(dst.dtype());
  const auto layout = cpu::coalesce<1>(dst.shape(), {dst.strides()});
  const bool uniform_bytes = [&] {
    const uint8_t first = static_cast<uint8_t>(bits & 0xFFu);
    for (size_t b = 1; b < width; ++b)
      if (static_cast<uint8_t>((bits >> (8 * b)) & 0xFFu) != first) return false;
    return true;
  }();
  if (is_flat(layout) && uniform_bytes) {
    KESTREL_CUDA_CHECK_CTX(cudaMemsetAsync(dst.data_ptr(), static_cast<int>(bits & 0xFFu), dst.nbytes(), on.stream),
                           "fill_ ", describe(dst), " with ", value);
    return;
  }
  dispatch_bits(width, [&](auto tag) {
    using B = KESTREL_SCALAR(tag);
    const B v = static_cast<B>(bits);
    for_each_slice<1>(layout, [&](const StridedIndex<1>& index, const std::array<int64_t, 1>& base, int64_t n) {
      B* p = static_cast<B*>(dst.data_ptr()) + base[0];
      if (fits_u32(n))
        fill_kernel<B, uint32_t><<<grid_for(n), kThreads, 0, on.stream>>>(p, index, n, v);
      else
        fill_kernel<B, uint64_t><<<grid_for(n), kThreads, 0, on.stream>>>(p, index, n, v);
    });
  });
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "fill_ ", describe(dst), " with ", value);
}

}  // namespace kestrel::gpu
