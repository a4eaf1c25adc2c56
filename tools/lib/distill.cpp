#include "tools/lib/distill.h"

#include <sstream>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/loss.h"

namespace kestrel::tools {

std::vector<std::string> split_paths(const std::string& comma_separated) {
  std::vector<std::string> out;
  std::stringstream in(comma_separated);
  std::string part;
  while (std::getline(in, part, ','))
    if (!part.empty()) out.push_back(part);
  return out;
}

TeacherEnsemble::TeacherEnsemble(const std::vector<std::string>& checkpoints, const ModelInfo& student,
                                 Device device) {
  KCHECK(!checkpoints.empty(), ValueError, "distillation needs at least one --teacher checkpoint");
  for (const std::string& path : checkpoints) {
    LoadedModel t = load_checkpoint(path);
    const ModelInfo& i = t.info;
    // Its fake-quantized forward is a float one made slow (15x at the CIFAR net): the float checkpoint teaches.
    KCHECK(!i.quantized, ValueError, "--teacher ", path, " is quantized (int8); teach with its float checkpoint");
    check_fits_run(i, student, "--teacher " + path, "the student");
    names_.push_back(i.model + " (" + path + ")");
    fold_for_inference_on(t, device);
    teachers_.push_back(register_module("teacher" + std::to_string(teachers_.size()), t.model));
  }
  train(false);
  if (!device.is_cpu()) to(device);
}

Tensor TeacherEnsemble::forward(const Tensor& x) {
  NoGradGuard no_grad;  // teachers only give targets
  Tensor sum;
  for (const nn::ModulePtr& t : teachers_) {
    Tensor logits = (*t)(x);
    if (logits.dtype() != DType::F32) logits = logits.to(DType::F32);
    sum = sum.defined() ? add(sum, logits) : logits;
  }
  return teachers_.size() == 1 ? sum : mul_scalar(sum, 1.0 / static_cast<double>(teachers_.size()));
}

Tensor distillation_loss(const Tensor& student_logits, const Tensor& teacher_logits, const Tensor& hard_loss,
                         double alpha, double temperature) {
  const Tensor soft = kl_div_distill(student_logits, teacher_logits, temperature);
  if (alpha >= 1.0) return soft;
  return add(mul_scalar(hard_loss, 1.0 - alpha), mul_scalar(soft, alpha));
}

}  // namespace kestrel::tools
