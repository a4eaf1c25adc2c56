#include "engine/cpu/norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/cpu/activation_math.h"

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
#pragma omp parallel for schedule(static) if (rows * C > kParallelMin)
    for (int64_t b = 0; b < nb; ++b) {
      double* s1 = part.data() + 2 * b * C;
      double* s2 = s1 + C;
      for (int64_t r = block_begin(b, nb, rows); r < block_begin(b + 1, nb, rows); ++r) {
        const T* row = px + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const double d = static_cast<double>(row[c]) - shift[c];
          s1[c] += d;
          s2[c] += d * d;
        }
      }
    }
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

void batch_norm_act_forward(const Tensor& x, const double* mean, const double* scale, const double* bias,
                            const Tensor& residual, Activation act, const Tensor& y) {
  const int64_t C = x.size(x.dim() - 1);
  const int64_t rows = C > 0 ? x.numel() / C : 0;
  act_dispatch(act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    dispatch_float(x.dtype(), "batch_norm_act", [&](auto tag_) {
      using T = KESTREL_SCALAR(tag_);
      const ChannelConsts<T> k(C, mean, scale, bias);
      const T* m = k.mean.data();
      const T* s = k.scale.data();
      const T* b = k.bias.data();
      const T* px = static_cast<const T*>(x.data_ptr());
      const T* pr = residual.defined() ? static_cast<const T*>(residual.data_ptr()) : nullptr;
      T* py = static_cast<T*>(y.data_ptr());
#pragma omp parallel for schedule(static) if (rows * C > kParallelMin)
      for (int64_t r = 0; r < rows; ++r) {
        const T* xr = px + r * C;
        T* yr = py + r * C;
        if (pr != nullptr) {
          const T* rr = pr + r * C;
          for (int64_t c = 0; c < C; ++c) yr[c] = act_value<A, T>((xr[c] - m[c]) * s[c] + b[c] + rr[c]);
        } else {
          for (int64_t c = 0; c < C; ++c) yr[c] = act_value<A, T>((xr[c] - m[c]) * s[c] + b[c]);
        }
      }
    });
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
      T* pgr = grad_residual.defined() ? static_cast<T*>(grad_residual.data_ptr()) : nullptr;
      T* pdx = grad_x.defined() ? static_cast<T*>(grad_x.data_ptr()) : nullptr;
      // Pass 1 stores gz where pass 2 reads it: in grad_residual (which is gz), else in
      // grad_x (updated in place), so the activation derivative is evaluated once.
      T* gz_store = pgr != nullptr ? pgr : (A == Activation::None ? nullptr : pdx);

      // Gradient of the pre-activation z at element (r, c); gy itself without an activation.
      auto grad_z = [&](int64_t r, int64_t c) -> T {
        const int64_t i = r * C + c;
        if constexpr (A == Activation::None) {
          return pg[i];
        } else {
          T z = (px[i] - m[c]) * s[c] + b[c];
          if (pr != nullptr) z += pr[i];
          return pg[i] * act_derivative<A, T>(z);
        }
      };

      // Pass 1: sum(gz) and sum(gz * (x - mean)) per channel; grad_residual = gz.
      const int64_t nb = num_row_blocks(rows, C);
      std::vector<double> part(static_cast<size_t>(2 * nb * C), 0.0);
#pragma omp parallel for schedule(static) if (rows * C > kParallelMin)
      for (int64_t bl = 0; bl < nb; ++bl) {
        double* sg = part.data() + 2 * bl * C;
        double* sgx = sg + C;
        for (int64_t r = block_begin(bl, nb, rows); r < block_begin(bl + 1, nb, rows); ++r) {
          for (int64_t c = 0; c < C; ++c) {
            const T gz = grad_z(r, c);
            if (gz_store != nullptr) gz_store[r * C + c] = gz;
            sg[c] += static_cast<double>(gz);
            sgx[c] += static_cast<double>(gz) * (static_cast<double>(px[r * C + c]) - a.mean[c]);
          }
        }
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
#pragma omp parallel for schedule(static) if (rows * C > kParallelMin)
      for (int64_t r = 0; r < rows; ++r) {
        T* dr = pdx + r * C;
        const T* xr = px + r * C;
        if (gz_saved != nullptr) {
          const T* gr = gz_saved + r * C;
          for (int64_t c = 0; c < C; ++c) dr[c] = q1[c] * gr[c] + q2[c] * (xr[c] - m[c]) + q3[c];
        } else {
          for (int64_t c = 0; c < C; ++c) dr[c] = q1[c] * grad_z(r, c) + q2[c] * (xr[c] - m[c]) + q3[c];
        }
      }
    });
  });
}

}  // namespace kestrel::cpu
