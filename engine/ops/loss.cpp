#include "engine/ops/loss.h"

#include <cmath>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu/loss.h"
#include "engine/gpu/loss.h"
#include "engine/ops/check.h"
#include "engine/trace.h"

namespace kestrel {

namespace {

using DoubleVec = std::shared_ptr<const std::vector<double>>;

// ---------------------------------------------------------------- softmax

void softmax_forward_on_device(const Tensor& x, int64_t outer, int64_t n, int64_t inner, bool log, const Tensor& y) {
  if constexpr (kHaveCuda) {
    if (x.device().is_cuda()) return gpu::softmax_forward(x, outer, n, inner, log, y);
  }
  cpu::softmax_forward(x, outer, n, inner, log, y);
}

void softmax_backward_on_device(const Tensor& y, const Tensor& gy, int64_t outer, int64_t n, int64_t inner, bool log,
                                const Tensor& gx) {
  if constexpr (kHaveCuda) {
    if (y.device().is_cuda()) return gpu::softmax_backward(y, gy, outer, n, inner, log, gx);
  }
  cpu::softmax_backward(y, gy, outer, n, inner, log, gx);
}

Tensor softmax_impl(const char* op, const Tensor& x, int64_t dim, bool log) {
  check_defined(x, op, "input");
  KCHECK(x.dim() >= 1, ShapeError, op, ": input must have at least 1 dim, got a scalar");
  const int64_t d = wrap_dim(dim, x.dim(), op);
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= x.size(i);
  for (int64_t i = d + 1; i < x.dim(); ++i) inner *= x.size(i);
  const int64_t n = x.size(d);
  const Tensor xc = x.detach().contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0) softmax_forward_on_device(xc, outer, n, inner, log, y);
  trace_op(op, {x}, y, 0, {{"dim", std::to_string(d)}});
  if (!needs_grad({x})) return y;
  const Tensor yd = y.detach();
  return record(y, op, {x}, [yd, outer, n, inner, log](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty(yd.shape(), yd.dtype(), yd.device());
    if (yd.numel() > 0) softmax_backward_on_device(yd, g.contiguous(), outer, n, inner, log, gx);
    return std::vector<Tensor>{gx};
  });
}

// ---------------------------------------------------------------- argument checks

// Returns (N, C) of logits [N, C].
std::pair<int64_t, int64_t> check_logits(const Tensor& logits, const char* op, const char* what = "logits") {
  check_defined(logits, op, what);
  KCHECK(logits.dim() == 2, ShapeError, op, ": ", what, " must be [N, C], got ", shape_str(logits.shape()));
  KCHECK(logits.size(0) > 0 && logits.size(1) > 0, ShapeError, op, ": ", what, " ", shape_str(logits.shape()),
         " is empty");
  // CUDA also runs f16 and bf16 logits (mixed precision); the CPU kernels are f32/f64.
  const DType dt = logits.dtype();
  if (logits.device().is_cuda()) {
    KCHECK(is_floating(dt), DTypeError, op, ": ", what, " must be floating, got ", dtype_name(dt));
  } else {
    KCHECK(dt == DType::F32 || dt == DType::F64, DTypeError, op, ": ", what, " must be f32 or f64, got ",
           dtype_name(dt));
  }
  return {logits.size(0), logits.size(1)};
}

// Class indices i64 [N] on the logits' device.
void check_label_tensor(const Tensor& target, const Tensor& logits, int64_t N, int64_t C, const char* op) {
  check_defined(target, op, "target");
  check_same_device(target, logits, op);
  KCHECK(target.dtype() == DType::I64, DTypeError, op, ": target must be i64 class indices, got ",
         dtype_name(target.dtype()), " ", shape_str(target.shape()));
  KCHECK(target.dim() == 1 && target.size(0) == N, ShapeError, op, ": target must be [", N,
         "] for logits [", N, ",", C, "], got ", shape_str(target.shape()));
}

// CPU: the labels as host values, each in [0, C).
std::shared_ptr<const std::vector<int64_t>> check_labels(const Tensor& target, int64_t C, const char* op) {
  const int64_t N = target.size(0);
  auto labels = std::make_shared<std::vector<int64_t>>(target.to_vector_i64());
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = (*labels)[i];
    KCHECK(t >= 0 && t < C, ValueError, op, ": target[", i, "] = ", t, " is out of range for ", C,
           " classes (labels must be in [0, ", C - 1, "])");
  }
  return labels;
}

DoubleVec logsumexp_rows(const Tensor& logits_c, double inv_temperature = 1.0) {
  auto lse = std::make_shared<std::vector<double>>(logits_c.size(0));
  cpu::row_logsumexp(logits_c, logits_c.size(0), logits_c.size(1), lse->data(), inv_temperature);
  return lse;
}

// Upstream gradient of a scalar loss as a double.
double upstream(const Tensor& g) { return g.item(); }

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl("softmax", x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl("log_softmax", x, dim, true); }

Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing) {
  const char* op = "cross_entropy";
  const auto [N, C] = check_logits(logits, op);
  KCHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, ValueError, op, ": label_smoothing must be in [0, 1], got ",
         label_smoothing);
  check_label_tensor(target, logits, N, C, op);
  const Tensor xc = logits.detach().contiguous();
  const std::map<std::string, std::string> attrs{{"label_smoothing", std::to_string(label_smoothing)}};
  if constexpr (kHaveCuda) {
    if (logits.device().is_cuda()) {
      // The fused kernel yields the row gradients in the forward pass; the backward only scales them.
      const Tensor labels = gpu::labels_to_i32(target, C, op);
      const bool grad = needs_grad({logits});
      Tensor grad_rows;
      Tensor out = gpu::cross_entropy_forward(xc, labels, label_smoothing, grad ? &grad_rows : nullptr);
      trace_op(op, {logits, target}, out, 0, attrs);
      if (!grad) return out;
      return record(out, op, {logits}, [grad_rows](const Tensor& g, const std::vector<bool>&) {
        return std::vector<Tensor>{gpu::scale_row_grads(grad_rows, g)};
      });
    }
  }
  const auto labels = check_labels(target, C, op);
  const DoubleVec lse = logsumexp_rows(xc);
  Tensor out = Tensor::scalar(cpu::cross_entropy_forward(xc, labels->data(), label_smoothing, lse->data()),
                              logits.dtype());
  trace_op(op, {logits, target}, out, 0, attrs);
  if (!needs_grad({logits})) return out;
  const int64_t n = N;
  return record(out, op, {logits}, [xc, labels, lse, label_smoothing, n](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    cpu::cross_entropy_backward(xc, labels->data(), label_smoothing, lse->data(),
                                upstream(g) / static_cast<double>(n), gx);
    return std::vector<Tensor>{gx};
  });
}

Tensor cross_entropy_soft(const Tensor& logits, const Tensor& target_probs) {
  const char* op = "cross_entropy_soft";
  check_logits(logits, op);
  check_defined(target_probs, op, "target_probs");
  KCHECK(target_probs.shape() == logits.shape(), ShapeError, op, ": target_probs ", shape_str(target_probs.shape()),
         " must have the logits' shape ", shape_str(logits.shape()));
  check_same_device_and_dtype(target_probs, logits, op);
  const int64_t N = logits.size(0);
  const Tensor xc = logits.detach().contiguous();
  const Tensor qc = target_probs.detach().contiguous();
  if constexpr (kHaveCuda) {
    if (logits.device().is_cuda()) {
      const bool grad_x = needs_grad({logits});
      Tensor grad_rows;
      Tensor out = gpu::cross_entropy_soft_forward(xc, qc, grad_x ? &grad_rows : nullptr);
      trace_op(op, {logits, target_probs}, out);
      return record(out, op, {logits, target_probs}, [xc, grad_rows](const Tensor& g, const std::vector<bool>& needs) {
        Tensor gx = needs[0] ? gpu::scale_row_grads(grad_rows, g) : Tensor();
        Tensor gq = needs[1] ? gpu::cross_entropy_soft_target_grad(xc, g) : Tensor();
        return std::vector<Tensor>{gx, gq};
      });
    }
  }
  const DoubleVec lse = logsumexp_rows(xc);
  Tensor out = Tensor::scalar(cpu::soft_cross_entropy_forward(xc, qc, lse->data()), logits.dtype());
  trace_op(op, {logits, target_probs}, out);
  return record(out, op, {logits, target_probs}, [xc, qc, lse, N](const Tensor& g, const std::vector<bool>& needs) {
    Tensor gx = needs[0] ? Tensor::empty(xc.shape(), xc.dtype(), xc.device()) : Tensor();
    Tensor gq = needs[1] ? Tensor::empty(qc.shape(), qc.dtype(), qc.device()) : Tensor();
    cpu::soft_cross_entropy_backward(xc, qc, lse->data(), upstream(g) / static_cast<double>(N), gx, gq);
    return std::vector<Tensor>{gx, gq};
  });
}

Tensor focal_loss(const Tensor& logits, const Tensor& target, double gamma, double alpha) {
  const char* op = "focal_loss";
  const auto [N, C] = check_logits(logits, op);
  KCHECK(gamma >= 0.0, ValueError, op, ": gamma must be non-negative, got ", gamma);
  check_label_tensor(target, logits, N, C, op);
  const Tensor xc = logits.detach().contiguous();
  const std::map<std::string, std::string> attrs{{"gamma", std::to_string(gamma)}, {"alpha", std::to_string(alpha)}};
  if constexpr (kHaveCuda) {
    if (logits.device().is_cuda()) {
      const Tensor labels = gpu::labels_to_i32(target, C, op);
      Tensor lse;
      Tensor out = gpu::focal_forward(xc, labels, gamma, alpha, &lse);
      trace_op(op, {logits, target}, out, 0, attrs);
      if (!needs_grad({logits})) return out;
      return record(out, op, {logits}, [xc, labels, lse, gamma, alpha](const Tensor& g, const std::vector<bool>&) {
        return std::vector<Tensor>{gpu::focal_backward(xc, labels, gamma, alpha, lse, g)};
      });
    }
  }
  const auto labels = check_labels(target, C, op);
  const DoubleVec lse = logsumexp_rows(xc);
  Tensor out = Tensor::scalar(cpu::focal_forward(xc, labels->data(), gamma, alpha, lse->data()), logits.dtype());
  trace_op(op, {logits, target}, out, 0, attrs);
  if (!needs_grad({logits})) return out;
  const int64_t n = N;
  return record(out, op, {logits}, [xc, labels, lse, gamma, alpha, n](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    cpu::focal_backward(xc, labels->data(), gamma, alpha, lse->data(), upstream(g) / static_cast<double>(n), gx);
    return std::vector<Tensor>{gx};
  });
}

Tensor kl_div_distill(const Tensor& student_logits, const Tensor& teacher_logits, double temperature) {
  const char* op = "kl_div_distill";
  const auto [N, C] = check_logits(student_logits, op, "student_logits");
  check_logits(teacher_logits, op, "teacher_logits");
  KCHECK(teacher_logits.shape() == student_logits.shape(), ShapeError, op, ": teacher_logits ",
         shape_str(teacher_logits.shape()), " must match student_logits ", shape_str(student_logits.shape()));
  check_same_device_and_dtype(teacher_logits, student_logits, op);
  KCHECK(temperature > 0.0 && std::isfinite(temperature), ValueError, op, ": temperature must be positive, got ",
         temperature);
  (void)C;
  const Tensor sc = student_logits.detach().contiguous();
  const Tensor tc = teacher_logits.detach().contiguous();
  const std::map<std::string, std::string> attrs{{"temperature", std::to_string(temperature)}};
  // The teacher is a fixed target: only the student is an input of the graph.
  if constexpr (kHaveCuda) {
    if (student_logits.device().is_cuda()) {
      Tensor lse_s, lse_t;
      Tensor out = gpu::kl_distill_forward(sc, tc, temperature, &lse_s, &lse_t);
      trace_op(op, {student_logits, teacher_logits}, out, 0, attrs);
      if (!needs_grad({student_logits})) return out;
      return record(out, op, {student_logits},
                    [sc, tc, lse_s, lse_t, temperature](const Tensor& g, const std::vector<bool>&) {
                      return std::vector<Tensor>{gpu::kl_distill_backward(sc, tc, temperature, lse_s, lse_t, g)};
                    });
    }
  }
  const double inv_t = 1.0 / temperature;
  const DoubleVec lse_s = logsumexp_rows(sc, inv_t);
  const DoubleVec lse_t = logsumexp_rows(tc, inv_t);
  const double t2 = temperature * temperature;
  Tensor out = Tensor::scalar(t2 * cpu::kl_distill_forward(sc, tc, temperature, lse_s->data(), lse_t->data()),
                              student_logits.dtype());
  trace_op(op, {student_logits, teacher_logits}, out, 0, attrs);
  if (!needs_grad({student_logits})) return out;
  const int64_t n = N;
  return record(out, op, {student_logits},
                [sc, tc, lse_s, lse_t, temperature, n](const Tensor& g, const std::vector<bool>&) {
                  Tensor gs = Tensor::empty(sc.shape(), sc.dtype(), sc.device());
                  // d/ds [T^2 KL / N] = T^2 / N * (1/T) * (p_s - p_t)
                  cpu::kl_distill_backward(sc, tc, temperature, lse_s->data(), lse_t->data(),
                                           upstream(g) * temperature / static_cast<double>(n), gs);
                  return std::vector<Tensor>{gs};
                });
}

}  // namespace kestrel
