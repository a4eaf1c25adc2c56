#include "engine/cpu/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/cpu/parallel.h"

namespace kestrel::cpu {

namespace {

constexpr int64_t kParallelMin = 32768;

// Serial sum of per-row values: the same answer for any thread count.
double mean_of(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

}  // namespace

void softmax_forward(const Tensor& x, int64_t outer, int64_t n, int64_t inner, bool log, const Tensor& y) {
  dispatch_float(x.dtype(), log ? "log_softmax" : "softmax", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    if (inner == 1) {
      parallel_for(outer, outer * n > kParallelMin, [&](int64_t o) {
        const T* xr = px + o * n;
        T* yr = py + o * n;
        T mx = xr[0];
        for (int64_t k = 1; k < n; ++k) mx = std::max(mx, xr[k]);
        double sum = 0.0;
        for (int64_t k = 0; k < n; ++k) sum += std::exp(static_cast<double>(xr[k] - mx));
        if (log) {
          const T log_sum = static_cast<T>(std::log(sum));
          for (int64_t k = 0; k < n; ++k) yr[k] = (xr[k] - mx) - log_sum;
        } else {
          const double inv = 1.0 / sum;
          for (int64_t k = 0; k < n; ++k) yr[k] = static_cast<T>(std::exp(static_cast<double>(xr[k] - mx)) * inv);
        }
      });
      return;
    }
    // Softmax over a strided dim: walk n rows of `inner` contiguous values, keeping
    // per-column running max and sum, so memory is read in order.
    parallel_for(outer, outer * n * inner > kParallelMin, [&](int64_t o) {
      const T* xb = px + o * n * inner;
      T* yb = py + o * n * inner;
      std::vector<T> mx(xb, xb + inner);
      std::vector<double> sum(inner, 0.0);
      for (int64_t k = 1; k < n; ++k)
        for (int64_t i = 0; i < inner; ++i) mx[i] = std::max(mx[i], xb[k * inner + i]);
      for (int64_t k = 0; k < n; ++k)
        for (int64_t i = 0; i < inner; ++i) sum[i] += std::exp(static_cast<double>(xb[k * inner + i] - mx[i]));
      if (log) {
        std::vector<T> log_sum(inner);
        for (int64_t i = 0; i < inner; ++i) log_sum[i] = static_cast<T>(std::log(sum[i]));
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i) yb[k * inner + i] = (xb[k * inner + i] - mx[i]) - log_sum[i];
      } else {
        for (int64_t i = 0; i < inner; ++i) sum[i] = 1.0 / sum[i];
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i)
            yb[k * inner + i] = static_cast<T>(std::exp(static_cast<double>(xb[k * inner + i] - mx[i])) * sum[i]);
      }
    });
  });
}

void softmax_backward(const Tensor& y, const Tensor& gy, int64_t outer, int64_t n, int64_t inner, bool log,
                      const Tensor& gx) {
  dispatch_float(y.dtype(), log ? "log_softmax backward" : "softmax backward", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* py = static_cast<const T*>(y.data_ptr());
    const T* pg = static_cast<const T*>(gy.data_ptr());
    T* pd = static_cast<T*>(gx.data_ptr());
    parallel_for(outer, outer * n * inner > kParallelMin, [&](int64_t o) {
      const int64_t base = o * n * inner;
      std::vector<double> dot(inner, 0.0);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t r = base + k * inner;
        for (int64_t i = 0; i < inner; ++i)
          dot[i] += log ? static_cast<double>(pg[r + i]) : static_cast<double>(pg[r + i]) * py[r + i];
      }
      for (int64_t k = 0; k < n; ++k) {
        const int64_t r = base + k * inner;
        for (int64_t i = 0; i < inner; ++i) {
          if (log)
            pd[r + i] = static_cast<T>(pg[r + i] - std::exp(static_cast<double>(py[r + i])) * dot[i]);
          else
            pd[r + i] = static_cast<T>(py[r + i] * (pg[r + i] - dot[i]));
        }
      }
    });
  });
}

void row_logsumexp(const Tensor& logits, int64_t rows, int64_t classes, double* lse, double inv_temperature) {
  dispatch_float(logits.dtype(), "logsumexp", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(logits.data_ptr());
    parallel_for(rows, rows * classes > kParallelMin, [&](int64_t r) {
      const T* xr = px + r * classes;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < classes; ++k) mx = std::max(mx, static_cast<double>(xr[k]) * inv_temperature);
      double sum = 0.0;
      for (int64_t k = 0; k < classes; ++k) sum += std::exp(static_cast<double>(xr[k]) * inv_temperature - mx);
      lse[r] = mx + std::log(sum);
    });
  });
}

double cross_entropy_forward(const Tensor& logits, const int64_t* target, double smoothing, const double* lse) {
  const int64_t N = logits.size(0), C = logits.size(1);
  std::vector<double> loss(N);
  dispatch_float(logits.dtype(), "cross_entropy", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(logits.data_ptr());
    parallel_for(N, N * C > kParallelMin, [&](int64_t r) {
      const T* xr = px + r * C;
      const double nll = lse[r] - static_cast<double>(xr[target[r]]);
      double smooth = 0.0;
      if (smoothing != 0.0) {
        double sx = 0.0;
        for (int64_t k = 0; k < C; ++k) sx += static_cast<double>(xr[k]);
        smooth = lse[r] - sx / static_cast<double>(C);  // mean over classes of -log p
      }
      loss[r] = (1.0 - smoothing) * nll + smoothing * smooth;
    });
  });
  return mean_of(loss);
}

void cross_entropy_backward(const Tensor& logits, const int64_t* target, double smoothing, const double* lse,
                            double scale, const Tensor& grad_logits) {
  const int64_t N = logits.size(0), C = logits.size(1);
  dispatch_float(logits.dtype(), "cross_entropy backward", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(logits.data_ptr());
    T* pg = static_cast<T*>(grad_logits.data_ptr());
    const double uniform = smoothing / static_cast<double>(C);
    parallel_for(N, N * C > kParallelMin, [&](int64_t r) {
      const T* xr = px + r * C;
      T* gr = pg + r * C;
      for (int64_t k = 0; k < C; ++k)
        gr[k] = static_cast<T>(scale * (std::exp(static_cast<double>(xr[k]) - lse[r]) - uniform));
      gr[target[r]] -= static_cast<T>(scale * (1.0 - smoothing));
    });
  });
}

double soft_cross_entropy_forward(const Tensor& logits, const Tensor& q, const double* lse) {
  const int64_t N = logits.size(0), C = logits.size(1);
  std::vector<double> loss(N);
  dispatch_float(logits.dtype(), "cross_entropy_soft", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(logits.data_ptr());
    const T* pq = static_cast<const T*>(q.data_ptr());
    parallel_for(N, N * C > kParallelMin, [&](int64_t r) {
      double s = 0.0;
      for (int64_t k = 0; k < C; ++k)
        s -= static_cast<double>(pq[r * C + k]) * (static_cast<double>(px[r * C + k]) - lse[r]);
      loss[r] = s;
    });
  });
  return mean_of(loss);
}

void soft_cross_entropy_backward(const Tensor& logits, const Tensor& q, const double* lse, double scale,
                                 const Tensor& grad_logits, const Tensor& grad_q) {
  const int64_t N = logits.size(0), C = logits.size(1);
  dispatch_float(logits.dtype(), "cross_entropy_soft backward", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(logits.data_ptr());
    const T* pq = static_cast<const T*>(q.data_ptr());
    T* pgx = grad_logits.defined() ? static_cast<T*>(grad_logits.data_ptr()) : nullptr;
    T* pgq = grad_q.defined() ? static_cast<T*>(grad_q.data_ptr()) : nullptr;
    parallel_for(N, N * C > kParallelMin, [&](int64_t r) {
      const T* xr = px + r * C;
      const T* qr = pq + r * C;
      if (pgx != nullptr) {
        double qsum = 0.0;  // targets need not sum to one; the exact gradient keeps their mass
        for (int64_t k = 0; k < C; ++k) qsum += static_cast<double>(qr[k]);
        for (int64_t k = 0; k < C; ++k)
          pgx[r * C + k] =
              static_cast<T>(scale * (std::exp(static_cast<double>(xr[k]) - lse[r]) * qsum - static_cast<double>(qr[k])));
      }
      if (pgq != nullptr)
        for (int64_t k = 0; k < C; ++k) pgq[r * C + k] = static_cast<T>(-scale * (static_cast<double>(xr[k]) - lse[r]));
    });
  });
}

namespace {

// Focal loss pieces for one row: log p_t and d loss / d log p_t.
struct FocalTerms {
  double value, dvalue_dlogpt;
};

FocalTerms focal_terms(double logpt, double gamma, double alpha) {
  const double pt = std::exp(logpt);
  const double one_minus = -std::expm1(logpt);  // 1 - p_t without cancellation
  const double w = std::pow(one_minus, gamma);
  // d/dl [(1 - e^l)^gamma * l] = (1 - p)^gamma - gamma (1 - p)^(gamma - 1) p l; the
  // second term tends to 0 as p -> 1 for gamma > 0, and is 0 for gamma = 0.
  const double second = (gamma == 0.0 || one_minus <= 0.0) ? 0.0 : gamma * std::pow(one_minus, gamma - 1.0) * pt * logpt;
  return {-alpha * w * logpt, -alpha * (w - second)};
}

}  // namespace

double focal_forward(const Tensor& logits, const int64_t* target, double gamma, double alpha, const double* lse) {
  const int64_t N = logits.size(0), C = logits.size(1);
  std::vector<double> loss(N);
  dispatch_float(logits.dtype(), "focal_loss", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(logits.data_ptr());
    for (int64_t r = 0; r < N; ++r)
      loss[r] = focal_terms(static_cast<double>(px[r * C + target[r]]) - lse[r], gamma, alpha).value;
  });
  return mean_of(loss);
}

void focal_backward(const Tensor& logits, const int64_t* target, double gamma, double alpha, const double* lse,
                    double scale, const Tensor& grad_logits) {
  const int64_t N = logits.size(0), C = logits.size(1);
  dispatch_float(logits.dtype(), "focal_loss backward", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* px = static_cast<const T*>(logits.data_ptr());
    T* pg = static_cast<T*>(grad_logits.data_ptr());
    parallel_for(N, N * C > kParallelMin, [&](int64_t r) {
      const T* xr = px + r * C;
      T* gr = pg + r * C;
      const double d = scale * focal_terms(static_cast<double>(xr[target[r]]) - lse[r], gamma, alpha).dvalue_dlogpt;
      // d log p_t / d x_k = [k == t] - p_k
      for (int64_t k = 0; k < C; ++k) gr[k] = static_cast<T>(-d * std::exp(static_cast<double>(xr[k]) - lse[r]));
      gr[target[r]] += static_cast<T>(d);
    });
  });
}

double kl_distill_forward(const Tensor& student, const Tensor& teacher, double temperature, const double* lse_s,
                          const double* lse_t) {
  const int64_t N = student.size(0), C = student.size(1);
  const double inv_t = 1.0 / temperature;
  std::vector<double> loss(N);
  dispatch_float(student.dtype(), "kl_div_distill", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* ps = static_cast<const T*>(student.data_ptr());
    const T* pt = static_cast<const T*>(teacher.data_ptr());
    parallel_for(N, N * C > kParallelMin, [&](int64_t r) {
      double s = 0.0;
      for (int64_t k = 0; k < C; ++k) {
        const double log_t = static_cast<double>(pt[r * C + k]) * inv_t - lse_t[r];
        const double log_s = static_cast<double>(ps[r * C + k]) * inv_t - lse_s[r];
        s += std::exp(log_t) * (log_t - log_s);  // 0 when p_t underflows, as torch's xlogy
      }
      loss[r] = s;
    });
  });
  return mean_of(loss);
}

void kl_distill_backward(const Tensor& student, const Tensor& teacher, double temperature, const double* lse_s,
                         const double* lse_t, double scale, const Tensor& grad_student) {
  const int64_t N = student.size(0), C = student.size(1);
  const double inv_t = 1.0 / temperature;
  dispatch_float(student.dtype(), "kl_div_distill backward", [&](auto tag_) {
    using T = KESTREL_SCALAR(tag_);
    const T* ps = static_cast<const T*>(student.data_ptr());
    const T* pt = static_cast<const T*>(teacher.data_ptr());
    T* pg = static_cast<T*>(grad_student.data_ptr());
    parallel_for(N, N * C > kParallelMin, [&](int64_t r) {
      for (int64_t k = 0; k < C; ++k) {
        const double p_s = std::exp(static_cast<double>(ps[r * C + k]) * inv_t - lse_s[r]);
        const double p_t = std::exp(static_cast<double>(pt[r * C + k]) * inv_t - lse_t[r]);
        pg[r * C + k] = static_cast<T>(scale * (p_s - p_t));
      }
    });
  });
}

}  // namespace kestrel::cpu
