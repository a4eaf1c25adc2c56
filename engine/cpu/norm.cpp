#include "engine/cpu/norm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "engine/cpu/activation_math.h"
#include "engine/cpu/isa.h"
#include "engine/cpu/parallel.h"
#include "engine/cpu/vector_lanes.h"
#include "engine/error.h"

namespace kestrel::cpu {

namespace {

// Row blocks for reductions: about 16K elements each, at most 128 blocks. A
// function of the shape only, so sums do not depend on the thread count.
int64_t num_row_blocks(int64_t rows, int64_t channels) {
  const int64_t rows_per_block = std::max<int64_t>(1, 16384 / std::max<int64_t>(channels, 1));
  const int64_t nb = (rows + rows_per_block - 1) / rows_per_block;
  return std::clamp<int64_t>(nb, 1, std::min<int64_t>(128, std::max<int64_t>(rows, 1)));
}

inline int64_t block_begin(int64_t b, int64_t nb, int64_t rows) { return b * rows / nb; }

// even_row_stride, or an error naming the tensor.
int64_t row_stride(const Tensor& t, const char* what) {
  const int64_t stride = even_row_stride(t);
  KCHECK(stride > 0, ShapeError, "batch_norm_act: ", what, " ", shape_str(t.shape()),
         " must be contiguous or a channel slice with evenly spaced rows");
  return stride;
}

// Per-channel constants in the compute type, built once per call so the forward
// and the backward recompute the pre-activation bit for bit the same way.
template <typename T>
struct ChannelConsts {
  std::vector<T> mean, scale, bias;
  ChannelConsts(int64_t c, const double* m, const double* s, const double* b) : mean(c), scale(c), bias(c) {
    for (int64_t i = 0; i < c; ++i) {
      mean[i] = static_cast<T>(m[i]);
      scale[i] = static_cast<T>(s[i]);
      bias[i] = b ? static_cast<T>(b[i]) : T(0);
    }
  }
};

constexpr int64_t kParallelMin = 32768;

// Rows summed in the compute type before they are added to the double totals:
// short enough to keep f32 sums accurate, long enough that the row loop is a
// plain vectorisable channel loop.
constexpr int64_t kSubRows = 16;

// Batch-norm backward pass 1 over rows [r0, r1): per channel, sg += sum(gz) and
// sgx += sum(gz * (x - mean)), where gz = gy * act'(z), z = (x - mean) * s + b
// (+ residual); stores gz when kStore. gy's rows are GS apart. tmp: 2*C
// scratch values.
template <Activation A, typename T, bool kResidual, bool kStore>
KESTREL_INLINE void bn_backward_sums(const T* __restrict px, const T* __restrict pr, const T* __restrict pg, int64_t GS,
                                     T* __restrict gz_store, const T* __restrict m, const T* __restrict s,
                                     const T* __restrict b, int64_t C, int64_t r0, int64_t r1,
                                     double* __restrict sg, double* __restrict sgx, T* __restrict tmp) {
  T* __restrict tg = tmp;
  T* __restrict tgx = tmp + C;
  for (int64_t r = r0; r < r1; r += kSubRows) {
    const int64_t re = std::min(r1, r + kSubRows);
    for (int64_t c = 0; c < C; ++c) tg[c] = tgx[c] = T(0);
    for (int64_t q = r; q < re; ++q) {
      const T* __restrict xr = px + q * C;
      const T* __restrict gr = pg + q * GS;
      for (int64_t c = 0; c < C; ++c) {
        const T xc = xr[c] - m[c];
        T gz;
        if constexpr (A == Activation::None) {
          gz = gr[c];
        } else {
          T z = xc * s[c] + b[c];
          if constexpr (kResidual) z += pr[q * C + c];
          const T g = gr[c];
          if constexpr (A == Activation::ReLU) {
            gz = z > T(0) ? g : T(0);  // a select the vectoriser takes (act_derivative's 1/0 stays a branch)
          } else {
            gz = g * act_derivative<A, T>(z);
          }
        }
        if constexpr (kStore) gz_store[q * C + c] = gz;
        tg[c] += gz;
        tgx[c] += gz * xc;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sg[c] += static_cast<double>(tg[c]);
      sgx[c] += static_cast<double>(tgx[c]);
    }
  }
}

// The f32 pass 1 for each ISA, for activations whose derivative is
// arithmetic (SiLU, hard-swish, ...): built for the SSE baseline they were
// most of EfficientNet's batch-norm backward. With no activation, ReLU or
// ReLU6 the pass is bound by memory and the baseline build measured as fast
// or faster (the CIFAR net's step 3% slower as a clone), so they keep it.
constexpr bool arithmetic_derivative(Activation a) {
  return a != Activation::None && a != Activation::ReLU && a != Activation::ReLU6;
}

KESTREL_CLONES_AVX512 void bn_backward_sums_f32(Activation act, bool residual, bool store, const float* px,
                                                const float* pr, const float* pg, int64_t GS, float* gz_store,
                                                const float* m, const float* s, const float* b, int64_t C, int64_t r0,
                                                int64_t r1, double* sg, double* sgx, float* tmp) {
  act_dispatch(act, [&](auto a) KESTREL_LAMBDA_INLINE {
    constexpr Activation A = decltype(a)::value;
    if (residual && store)
      bn_backward_sums<A, float, true, true>(px, pr, pg, GS, gz_store, m, s, b, C, r0, r1, sg, sgx, tmp);
    else if (residual)
      bn_backward_sums<A, float, true, false>(px, pr, pg, GS, gz_store, m, s, b, C, r0, r1, sg, sgx, tmp);
    else if (store)
      bn_backward_sums<A, float, false, true>(px, pr, pg, GS, gz_store, m, s, b, C, r0, r1, sg, sgx, tmp);
    else
      bn_backward_sums<A, float, false, false>(px, pr, pg, GS, gz_store, m, s, b, C, r0, r1, sg, sgx, tmp);
  });
}

// ------------------------------------------------------------------ f32 statistics, sums in registers
//
// A channel block's sums stay in registers down kSubRows rows (C apart, in
// L1), in f32, then go into the double totals. The f64 loop below converted
// every element to double and kept its sums in memory: 6% of a cifar10_200k
// training step, now 2.4%. (The backward's pass 1 done the same way measured
// slower than its row loop, 10.4% against 6.4%: it stays a row loop.)

// Statistics: s1 += sum of d, s2 += sum of d * d, d = x - shift, over rows
// [r, re) (at most kSubRows) and channels [c, c + N).
template <int64_t N>
KESTREL_INLINE void stats_lanes(const float* px, const float* shift, int64_t C, int64_t c, int64_t r, int64_t re,
                                double* s1, double* s2) {
  using V = typename Lanes<float, N>::type;
  V sh, t1{}, t2{};
  load_lanes(sh, shift + c);
  for (int64_t q = r; q < re; ++q) {
    V x;
    load_lanes(x, px + q * C + c);
    const V d = x - sh;
    t1 += d;
    t2 += d * d;
  }
  for (int64_t j = 0; j < N; ++j) {
    s1[c + j] += static_cast<double>(t1[j]);
    s2[c + j] += static_cast<double>(t2[j]);
  }
}

// kSubRows rows at a time (in L1), each channel block's sums in registers down them.
KESTREL_CLONES_AVX512 void stats_rows_f32(const float* px, const float* shift, int64_t C, int64_t r0, int64_t r1,
                                          double* s1, double* s2) {
  for (int64_t r = r0; r < r1; r += kSubRows) {
    const int64_t re = std::min(r1, r + kSubRows);
    for_disjoint_channel_blocks<float, 64>(C, [&](auto lanes, int64_t c) KESTREL_LAMBDA_INLINE {
      stats_lanes<decltype(lanes)::value>(px, shift, C, c, r, re, s1, s2);
    });
  }
}

}  // namespace

void batch_norm_stats(const Tensor& x, int64_t rows, int64_t channels, double* mean, double* var) {
  dispatch_float(x.dtype(), "batch_norm", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(x.data_ptr());
    const int64_t C = channels;
    // Shifting by the first row keeps sum((x-k)^2) - sum(x-k)^2/M well conditioned.
    std::vector<double> shift(C);
    for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<double>(px[c]);
    const int64_t nb = num_row_blocks(rows, C);
    std::vector<double> part(static_cast<size_t>(2 * nb * C), 0.0);
    std::vector<float> shift_f32;
    if constexpr (std::is_same_v<T, float>) shift_f32.assign(px, px + (rows > 0 ? C : 0));
    parallel_for(nb, rows * C > kParallelMin, [&](int64_t b) {
      double* s1 = part.data() + 2 * b * C;
      double* s2 = s1 + C;
      const int64_t r0 = block_begin(b, nb, rows), r1 = block_begin(b + 1, nb, rows);
      if constexpr (std::is_same_v<T, float>) {
        // f32: d in f32 (x and the shift are both f32), summed in registers.
        if (r1 > r0) stats_rows_f32(px, shift_f32.data(), C, r0, r1, s1, s2);
        return;
      }
      for (int64_t r = r0; r < r1; ++r) {
        const T* row = px + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const double d = static_cast<double>(row[c]) - shift[c];
          s1[c] += d;
          s2[c] += d * d;
        }
      }
    });
    const double inv_m = 1.0 / static_cast<double>(rows);
    for (int64_t c = 0; c < C; ++c) {
      double a = 0.0, q = 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        a += part[2 * b * C + c];
        q += part[(2 * b + 1) * C + c];
      }
      const double m = a * inv_m;
      mean[c] = shift[c] + m;
      var[c] = std::max(0.0, q * inv_m - m * m);
    }
  });
}

namespace {

// One row: y = act((x - m) * s + b [+ residual]).
template <typename T, Activation A>
KESTREL_INLINE void norm_act_row(const T* xr, const T* rr, const T* m, const T* s, const T* b, int64_t C, T* yr) {
  if (rr != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = act_value<A, T>((xr[c] - m[c]) * s[c] + b[c] + rr[c]);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = act_value<A, T>((xr[c] - m[c]) * s[c] + b[c]);
  }
}

// f32 rows for each ISA (the baseline build is 4-wide SSE): SiLU's exp made
// this loop most of an unfolded EfficientNet's inference.
KESTREL_CLONES_AVX512 void norm_act_row_f32(const float* xr, const float* rr, const float* m, const float* s,
                                            const float* b, int64_t C, Activation act, float* yr) {
  act_dispatch(act, [&](auto a) KESTREL_LAMBDA_INLINE {
    norm_act_row<float, decltype(a)::value>(xr, rr, m, s, b, C, yr);
  });
}

}  // namespace

void batch_norm_act_forward(const Tensor& x, const double* mean, const double* scale, const double* bias,
                            const Tensor& residual, Activation act, const Tensor& y) {
  const int64_t C = x.size(x.dim() - 1);
  const int64_t rows = C > 0 ? x.numel() / C : 0;
  dispatch_float(x.dtype(), "batch_norm_act", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const ChannelConsts<T> k(C, mean, scale, bias);
    const T* m = k.mean.data();
    const T* s = k.scale.data();
    const T* b = k.bias.data();
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pr = residual.defined() ? static_cast<const T*>(residual.data_ptr()) : nullptr;
    T* py = static_cast<T*>(y.data_ptr());
    const int64_t YS = row_stride(y, "output");
    auto residual_row = [&](int64_t r) { return pr != nullptr ? pr + r * C : nullptr; };
    if constexpr (std::is_same_v<T, float>) {
      parallel_for(rows, rows * C > kParallelMin, [&](int64_t r) {
        norm_act_row_f32(px + r * C, residual_row(r), m, s, b, C, act, py + r * YS);
      });
    } else {
      act_dispatch(act, [&](auto a) {
        parallel_for(rows, rows * C > kParallelMin, [&](int64_t r) {
          norm_act_row<T, decltype(a)::value>(px + r * C, residual_row(r), m, s, b, C, py + r * YS);
        });
      });
    }
  });
}

void batch_norm_act_backward(const Tensor& x, const Tensor& residual, const Tensor& grad_y, const BatchNormBackward& a,
                             const Tensor& grad_x, const Tensor& grad_residual, double* grad_weight,
                             double* grad_bias) {
  const int64_t C = x.size(x.dim() - 1);
  const int64_t rows = C > 0 ? x.numel() / C : 0;
  std::vector<double> scale(C);
  for (int64_t c = 0; c < C; ++c) scale[c] = (a.weight ? a.weight[c] : 1.0) * a.invstd[c];

  act_dispatch(a.act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    dispatch_float(x.dtype(), "batch_norm_act backward", [&](auto tag_) {
      using T = KESTREL_SCALAR(tag_);
      const ChannelConsts<T> k(C, a.mean, scale.data(), a.bias);
      const T* m = k.mean.data();
      const T* s = k.scale.data();
      const T* b = k.bias.data();
      const T* px = static_cast<const T*>(x.data_ptr());
      const T* pr = residual.defined() ? static_cast<const T*>(residual.data_ptr()) : nullptr;
      const T* pg = static_cast<const T*>(grad_y.data_ptr());
      const int64_t GS = row_stride(grad_y, "grad_y");
      T* pgr = grad_residual.defined() ? static_cast<T*>(grad_residual.data_ptr()) : nullptr;
      T* pdx = grad_x.defined() ? static_cast<T*>(grad_x.data_ptr()) : nullptr;
      // Pass 1 stores gz where pass 2 reads it: in grad_residual (which is gz), else in
      // grad_x (updated in place), so the activation derivative is evaluated once.
      T* gz_store = pgr != nullptr ? pgr : (A == Activation::None ? nullptr : pdx);

      // Pass 1: sum(gz) and sum(gz * (x - mean)) per channel; grad_residual = gz.
      const int64_t nb = num_row_blocks(rows, C);
      std::vector<double> part(static_cast<size_t>(2 * nb * C), 0.0);
      std::vector<T> scratch(static_cast<size_t>(2 * nb * C));
      auto pass1 = [&](auto has_residual, auto store) {
        parallel_for(nb, rows * C > kParallelMin, [&](int64_t bl) {
          double* sg = part.data() + 2 * bl * C;
          const int64_t r0 = block_begin(bl, nb, rows), r1 = block_begin(bl + 1, nb, rows);
          T* tmp = scratch.data() + 2 * bl * C;
          if constexpr (std::is_same_v<T, float> && arithmetic_derivative(A))
            bn_backward_sums_f32(A, decltype(has_residual)::value, decltype(store)::value, px, pr, pg, GS, gz_store,
                                 m, s, b, C, r0, r1, sg, sg + C, tmp);
          else
            bn_backward_sums<A, T, decltype(has_residual)::value, decltype(store)::value>(
                px, pr, pg, GS, gz_store, m, s, b, C, r0, r1, sg, sg + C, tmp);
        });
      };
      using Yes = std::true_type;
      using No = std::false_type;
      const bool res = pr != nullptr && A != Activation::None;  // without an activation z is not needed
      if (gz_store != nullptr) {
        if (res) pass1(Yes{}, Yes{}); else pass1(No{}, Yes{});
      } else {
        if (res) pass1(Yes{}, No{}); else pass1(No{}, No{});
      }
      std::vector<double> sum_g(C, 0.0), sum_gx(C, 0.0);
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t bl = 0; bl < nb; ++bl) {
          sum_g[c] += part[2 * bl * C + c];
          sum_gx[c] += part[(2 * bl + 1) * C + c];
        }
        if (grad_weight) grad_weight[c] = sum_gx[c] * a.invstd[c];
        if (grad_bias) grad_bias[c] = sum_g[c];
      }
      if (pdx == nullptr) return;

      // Pass 2: dx = scale * (gz - mean(gz) - xhat * mean(gz * xhat)) in training,
      // written as k1 * gz + k2 * (x - mean) + k3; in eval dx = scale * gz.
      std::vector<T> k1(C), k2(C), k3(C);
      const double inv_m = 1.0 / static_cast<double>(rows);
      for (int64_t c = 0; c < C; ++c) {
        k1[c] = static_cast<T>(scale[c]);
        if (a.training) {
          k2[c] = static_cast<T>(-scale[c] * a.invstd[c] * a.invstd[c] * sum_gx[c] * inv_m);
          k3[c] = static_cast<T>(-scale[c] * sum_g[c] * inv_m);
        } else {
          k2[c] = T(0);
          k3[c] = T(0);
        }
      }
      const T* gz_saved = gz_store;
      const T* q1 = k1.data();
      const T* q2 = k2.data();
      const T* q3 = k3.data();
      parallel_for(rows, rows * C > kParallelMin, [&](int64_t r) {
        T* dr = pdx + r * C;
        const T* xr = px + r * C;
        if (gz_saved != nullptr) {
          const T* gr = gz_saved + r * C;
          for (int64_t c = 0; c < C; ++c) dr[c] = q1[c] * gr[c] + q2[c] * (xr[c] - m[c]) + q3[c];
        } else {
          const T* gr = pg + r * GS;  // no store only without an activation: gz = gy
          for (int64_t c = 0; c < C; ++c) dr[c] = q1[c] * gr[c] + q2[c] * (xr[c] - m[c]) + q3[c];
        }
      });
    });
  });
}

}  // namespace kestrel::cpu
