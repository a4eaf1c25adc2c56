#include "engine/cpu/reduce.h"

#include <vector>

#include "engine/cpu/parallel.h"

namespace kestrel::cpu {

void sum_rows(const Tensor& x, int64_t outer, int64_t inner, const Tensor& out) {
  dispatch_float(x.dtype(), "sum", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    const scalar_t* px = static_cast<const scalar_t*>(x.data_ptr());
    scalar_t* po = static_cast<scalar_t*>(out.data_ptr());
    parallel_for(outer, outer * inner > 65536 && outer > 1, [&](int64_t o) {
      const scalar_t* row = px + o * inner;
      double acc = 0.0;
      for (int64_t i = 0; i < inner; ++i) acc += static_cast<double>(row[i]);
      po[o] = static_cast<scalar_t>(acc);
    });
  });
}

void sum_mid(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out) {
  dispatch_float(x.dtype(), "sum", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    const scalar_t* px = static_cast<const scalar_t*>(x.data_ptr());
    scalar_t* po = static_cast<scalar_t*>(out.data_ptr());
    // Columns in blocks, per outer index: tasks write disjoint outputs and read rows sequentially.
    const int64_t block = 256;
    const int64_t nblocks = (inner + block - 1) / block;
    parallel_for(outer * nblocks, outer * n * inner > 65536, [&](int64_t t) {
      const int64_t o = t / nblocks, c0 = t % nblocks * block, c1 = std::min(inner, c0 + block);
      double acc[256] = {0.0};
      for (int64_t k = 0; k < n; ++k) {
        const scalar_t* row = px + (o * n + k) * inner;
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(row[c]);
      }
      for (int64_t c = c0; c < c1; ++c) po[o * inner + c] = static_cast<scalar_t>(acc[c - c0]);
    });
  });
}

void sum_cols(const Tensor& x, int64_t rows, int64_t cols, const Tensor& out) { sum_mid(x, 1, rows, cols, out); }

void max_mid(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& values, const Tensor& indices) {
  dispatch_float(x.dtype(), "max", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    const scalar_t* px = static_cast<const scalar_t*>(x.data_ptr());
    scalar_t* pv = static_cast<scalar_t*>(values.data_ptr());
    int64_t* pi = indices.data<int64_t>();
    parallel_for(outer, outer * n * inner > 65536, [&](int64_t o) {
      for (int64_t i = 0; i < inner; ++i) {
        const scalar_t* p = px + o * n * inner + i;
        scalar_t best = p[0];
        int64_t arg = 0;
        for (int64_t k = 1; k < n; ++k) {
          if (p[k * inner] > best) {
            best = p[k * inner];
            arg = k;
          }
        }
        pv[o * inner + i] = best;
        pi[o * inner + i] = arg;
      }
    });
  });
}

}  // namespace kestrel::cpu
