#include <cstring>
#include <type_traits>

#include "engine/cpu/scalar_cast.h"
#include "engine/cpu/strided.h"

namespace kestrel::cpu {

Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape out(shape.size(), 0);
  const int64_t shift = static_cast<int64_t>(shape.size()) - t.dim();
  for (int64_t d = 0; d < t.dim(); ++d)
    out[d + shift] = t.size(d) == 1 ? 0 : t.strides()[d];
  return out;
}

void copy_strided(const Tensor& dst, const Tensor& src) {
  if (dst.numel() == 0) return;
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous() && dst.shape() == src.shape()) {
    std::memcpy(dst.data_ptr(), src.data_ptr(), dst.nbytes());
    return;
  }
  auto layout = coalesce<2>(dst.shape(), {dst.strides(), broadcast_strides(src, dst.shape())});
  dispatch_all(dst.dtype(), "copy", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    using D = scalar_t;
    D* d = static_cast<D*>(dst.data_ptr());
    dispatch_all(src.dtype(), "copy", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
      using S = scalar_t;
      const S* s = static_cast<const S*>(src.data_ptr());
      for_each_row<2>(layout, [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
        D* dp = d + off[0];
        const S* sp = s + off[1];
        // Rows of one dtype, both contiguous (a concat's or a split's channel
        // runs): a plain copy; the strided loop below does not vectorize.
        if constexpr (std::is_same_v<D, S>)
          if (st[0] == 1 && st[1] == 1) return static_cast<void>(std::memcpy(dp, sp, sizeof(D) * n));
        for (int64_t i = 0; i < n; ++i) dp[i * st[0]] = cast_value<D>(sp[i * st[1]]);
      });
    });
  });
}

}  // namespace kestrel::cpu
