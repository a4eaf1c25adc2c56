// Iteration over strided operands. Dims that are contiguous for every operand
// are merged first so the inner loop is long.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "engine/cpu/parallel.h"
#include "engine/tensor.h"

namespace kestrel::cpu {

template <int N>
struct StridedLayout {
  Shape shape;                          // coalesced
  std::array<Shape, N> strides;         // per operand, coalesced
};

template <int N>
StridedLayout<N> coalesce(const Shape& shape, const std::array<Shape, N>& strides) {
  StridedLayout<N> out;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!out.shape.empty()) {
      bool mergeable = true;
      for (int k = 0; k < N; ++k)
        if (out.strides[k].back() != strides[k][d] * shape[d]) mergeable = false;
      if (mergeable) {
        out.shape.back() *= shape[d];
        for (int k = 0; k < N; ++k) out.strides[k].back() = strides[k][d];
        continue;
      }
    }
    out.shape.push_back(shape[d]);
    for (int k = 0; k < N; ++k) out.strides[k].push_back(strides[k][d]);
  }
  if (out.shape.empty()) {
    out.shape.push_back(1);
    for (int k = 0; k < N; ++k) out.strides[k].push_back(0);
  }
  return out;
}

// Calls f(offsets, inner_len, inner_strides) for each row of the innermost dim.
// Each thread takes a contiguous range of rows and steps an odometer through
// the outer dims, so short rows (a channel slice of an NHWC tensor) cost no
// division per row.
template <int N, typename F>
void for_each_row(const StridedLayout<N>& layout, F&& f) {
  const int64_t outer_dims = static_cast<int64_t>(layout.shape.size()) - 1;
  const int64_t inner = layout.shape.back();
  int64_t rows = 1;
  for (int64_t d = 0; d < outer_dims; ++d) rows *= layout.shape[d];
  std::array<int64_t, N> inner_strides;
  for (int k = 0; k < N; ++k) inner_strides[k] = layout.strides[k].back();
  const bool parallel = rows > 1 && rows * inner > 32768;
  parallel_range(rows, parallel, [&](int64_t r0, int64_t r1) {
    if (r0 >= r1) return;
    std::vector<int64_t> index(static_cast<size_t>(outer_dims));
    std::array<int64_t, N> off{};
    int64_t rem = r0;
    for (int64_t d = outer_dims - 1; d >= 0; --d) {
      index[d] = rem % layout.shape[d];
      rem /= layout.shape[d];
      for (int k = 0; k < N; ++k) off[k] += index[d] * layout.strides[k][d];
    }
    for (int64_t r = r0; r < r1; ++r) {
      f(off, inner, inner_strides);
      for (int64_t d = outer_dims - 1; d >= 0; --d) {  // next row: carry through the outer dims
        for (int k = 0; k < N; ++k) off[k] += layout.strides[k][d];
        if (++index[d] < layout.shape[d]) break;
        for (int k = 0; k < N; ++k) off[k] -= layout.shape[d] * layout.strides[k][d];
        index[d] = 0;
      }
    }
  });
}

// Strides of `t` viewed at `shape` under broadcasting (0 where t has size 1 or lacks the dim).
Shape broadcast_strides(const Tensor& t, const Shape& shape);

// Copies src into dst (same shape; any dtypes; CPU).
void copy_strided(const Tensor& dst, const Tensor& src);

}  // namespace kestrel::cpu
