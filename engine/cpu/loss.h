// CPU kernels for softmax and the classification losses. Inputs are contiguous.
// Softmax-family tensors are viewed as [outer, n, inner] with the softmax over n;
// losses take logits [N, C] and compute per-row log-sum-exp in double.
// Loss forwards return the batch mean; backwards take `scale` = upstream grad / N.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace kestrel::cpu {

void softmax_forward(const Tensor& x, int64_t outer, int64_t n, int64_t inner, bool log, const Tensor& y);
// softmax:     gx = y * (gy - sum(gy * y))
// log_softmax: gx = gy - exp(y) * sum(gy)
void softmax_backward(const Tensor& y, const Tensor& gy, int64_t outer, int64_t n, int64_t inner, bool log,
                      const Tensor& gx);

// lse[i] = log(sum_k exp(x[i, k] * inv_temperature)), numerically stable.
void row_logsumexp(const Tensor& logits, int64_t rows, int64_t classes, double* lse, double inv_temperature = 1.0);

// target: i64 [N], already range-checked.
double cross_entropy_forward(const Tensor& logits, const int64_t* target, double smoothing, const double* lse);
void cross_entropy_backward(const Tensor& logits, const int64_t* target, double smoothing, const double* lse,
                            double scale, const Tensor& grad_logits);

// q: [N, C] soft targets. grad_q may be undefined.
double soft_cross_entropy_forward(const Tensor& logits, const Tensor& q, const double* lse);
void soft_cross_entropy_backward(const Tensor& logits, const Tensor& q, const double* lse, double scale,
                                 const Tensor& grad_logits, const Tensor& grad_q);

double focal_forward(const Tensor& logits, const int64_t* target, double gamma, double alpha, const double* lse);
void focal_backward(const Tensor& logits, const int64_t* target, double gamma, double alpha, const double* lse,
                    double scale, const Tensor& grad_logits);

// sum over rows of KL(softmax(t/T) || softmax(s/T)) / N (without the T^2 factor).
double kl_distill_forward(const Tensor& student, const Tensor& teacher, double temperature, const double* lse_s,
                          const double* lse_t);
// grad_student = scale * (softmax(s/T) - softmax(t/T)).
void kl_distill_backward(const Tensor& student, const Tensor& teacher, double temperature, const double* lse_s,
                         const double* lse_t, double scale, const Tensor& grad_student);

}  // namespace kestrel::cpu
