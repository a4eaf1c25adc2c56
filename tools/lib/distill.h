// Knowledge distillation (Hinton et al., 2015) from an ensemble of trained
// checkpoints: the teachers' logits are averaged, and the student learns from
// them at temperature T beside the data set's own labels.
#pragma once
#include <string>
#include <vector>

#include "engine/nn/module.h"
#include "tools/lib/checkpoint.h"

namespace kestrel::tools {

// The teachers as one module: forward gives the mean of their f32 logits.
// Each must classify the student's classes from the same inputs (channels,
// size, normalization); a mismatch is a ValueError naming the checkpoint.
class TeacherEnsemble : public nn::Module {
 public:
  // The teachers run on `device`; on the CPU their batch norms are folded
  // into their convolutions (models/fuse.h), since they only ever infer.
  TeacherEnsemble(const std::vector<std::string>& checkpoints, const ModelInfo& student,
                  Device device = Device::cpu());
  Tensor forward(const Tensor& x) override;
  void train(bool) override { nn::Module::train(false); }  // teachers stay in eval mode
  std::string type_name() const override { return "TeacherEnsemble"; }
  const std::vector<std::string>& names() const { return names_; }  // "resnet18 (runs/t/best.safetensors)"

 private:
  std::vector<nn::ModulePtr> teachers_;
  std::vector<std::string> names_;
};

// "a,b,c" -> {"a", "b", "c"}; empty parts are dropped.
std::vector<std::string> split_paths(const std::string& comma_separated);

// (1 - alpha) * hard_loss + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)).
Tensor distillation_loss(const Tensor& student_logits, const Tensor& teacher_logits, const Tensor& hard_loss,
                         double alpha, double temperature);

}  // namespace kestrel::tools
