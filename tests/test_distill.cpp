// Knowledge distillation: the teacher ensemble, the loss, and `kestrel
// distill` end to end on Fashion-MNIST (learns, resumes exactly).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "engine/ops/loss.h"
#include "models/fuse.h"
#include "test_util.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/distill.h"
#include "tools/lib/trainer.h"
#include "train_run_util.h"

namespace kestrel {
namespace {

using testing::eval_logits;
using testing::temp_path;

tools::ModelInfo small_info() { return testing::fashion_mnist_model_info("cifar10_200k"); }

// A freshly initialised model for `info`, saved under `name`; returns the path.
std::string save_random_checkpoint(const tools::ModelInfo& info, const std::string& name, uint64_t seed) {
  manual_seed(seed);
  auto m = tools::build_from_info(info);
  const std::string path = temp_path(name + ".safetensors");
  tools::save_checkpoint(path, *m, info);
  return path;
}

TEST(Distill, EnsembleGivesTheMeanOfItsTeachersLogitsInEvalMode) {
  const tools::ModelInfo info = small_info();
  const std::string a = save_random_checkpoint(info, "teacher_a", 1), b = save_random_checkpoint(info, "teacher_b", 2);
  const Tensor x = testing::random_tensor({3, 28, 28, 1}, 5, DType::F32);
  tools::TeacherEnsemble ensemble({a, b}, info);
  ensemble.train(true);  // a trainer's train() must not switch the teachers' batch norms to batch statistics
  EXPECT_FALSE(ensemble.is_training());
  const Tensor la = eval_logits(*tools::load_checkpoint(a).model, x);
  const Tensor lb = eval_logits(*tools::load_checkpoint(b).model, x);
  const Tensor mean = mul_scalar(add(la, lb), 0.5);
  testing::expect_close(ensemble(x), mean, 1e-6, 1e-6, "ensemble of two");
  const std::vector<float> va = la.to_vector(), vb = lb.to_vector();
  double apart = 0.0;
  for (size_t i = 0; i < va.size(); ++i) apart = std::max(apart, static_cast<double>(std::fabs(va[i] - vb[i])));
  EXPECT_GT(apart, 1e-3) << "the two teachers should differ";
  EXPECT_EQ(ensemble.names()[1], "cifar10_200k (" + b + ")");
  EXPECT_FALSE(ensemble(x).requires_grad());
  EXPECT_TRUE(models::is_fused_for_inference(ensemble)) << "CPU teachers only infer: their norms fold";
}

TEST(Distill, TeachersThatDoNotFitTheStudentAreNamed) {
  const tools::ModelInfo info = small_info();
  const std::string ok = save_random_checkpoint(info, "fits", 3);
  tools::ModelInfo other = info;
  other.num_classes = 5;
  auto expect_error = [&](const tools::ModelInfo& teacher_info, const std::string& name, const std::string& text) {
    const std::string path = save_random_checkpoint(teacher_info, name, 4);
    try {
      tools::TeacherEnsemble({ok, path}, info);
      ADD_FAILURE() << name << ": no error";
    } catch (const ValueError& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  };
  expect_error(other, "five_classes", "has 5 classes but the student has 10");
  other = info;
  other.height = other.width = 32;
  expect_error(other, "bigger_images", "reads 1x32x32 images but the student's data gives 1x28x28");
  other = info;
  other.mean = {0.5f};
  expect_error(other, "other_normalization", "another input normalization");
  EXPECT_THROW(tools::TeacherEnsemble({}, info), ValueError);
  EXPECT_THROW(tools::TeacherEnsemble({temp_path("missing.safetensors")}, info), IOError);
}

TEST(Distill, LossWeighsTheLabelsAndTheTeachersByAlpha) {
  const Tensor student = testing::random_tensor({4, 6}, 11, DType::F64).set_requires_grad();
  const Tensor teacher = testing::random_tensor({4, 6}, 12, DType::F64);
  const Tensor labels = Tensor::from_vector_i64({0, 3, 5, 1}, {4});
  const Tensor hard = cross_entropy(student, labels);
  const Tensor soft = kl_div_distill(student, teacher, 4.0);
  EXPECT_NEAR(tools::distillation_loss(student, teacher, hard, 0.0, 4.0).item(), hard.item(), 1e-12);
  EXPECT_NEAR(tools::distillation_loss(student, teacher, hard, 1.0, 4.0).item(), soft.item(), 1e-12);
  const Tensor mixed = tools::distillation_loss(student, teacher, hard, 0.3, 4.0);
  EXPECT_NEAR(mixed.item(), 0.7 * hard.item() + 0.3 * soft.item(), 1e-12);
  testing::expect_gradcheck(
      [&](const std::vector<Tensor>& in) {
        return tools::distillation_loss(in[0], teacher, cross_entropy(in[0], labels), 0.3, 4.0);
      },
      {student});
}

#define REQUIRE_FASHION_MNIST()                                                           \
  if (const std::string why = kestrel::testing::fashion_mnist_skip_reason(); !why.empty()) \
  GTEST_SKIP() << why


// A trained teacher; a student distilled from it alone (listed twice: the
// ensemble averages) learns, reports the teachers' accuracy, and a killed run
// resumes exactly.
TEST(Distill, StudentLearnsFromTrainedTeachersAndResumesExactly) {
  REQUIRE_FASHION_MNIST();
  tools::TrainConfig teacher = testing::fashion_mnist_config("distill_teacher");
  teacher.limit_train = 2048;
  teacher.epochs = 3;
  const tools::TrainSummary t = tools::train(teacher);
  ASSERT_TRUE(t.completed);
  ASSERT_GT(t.best_top1, 0.5);

  tools::TrainConfig student = teacher;
  student.out = temp_path("distill_student");
  student.width_mult = 0.5;
  const std::string ckpt = teacher.out + "/best.safetensors";
  student.teacher = ckpt + "," + ckpt;
  student.distill_alpha = 1.0;  // the labels are not used: whatever it learns comes from the teachers
  const tools::TrainSummary s = tools::train(student);
  ASSERT_TRUE(s.completed);
  EXPECT_NEAR(s.teacher_top1, t.best_top1, 1e-12) << "the ensemble of one checkpoint twice is that checkpoint";
  EXPECT_GT(s.best_top1, 0.5) << "10 classes: chance is 0.1";

  // 512 images in batches of 64: 8 steps an epoch; killed in epoch 2.
  tools::TrainConfig short_run = testing::fashion_mnist_config("distill_short");
  short_run.limit_train = 512;
  short_run.teacher = ckpt;
  short_run.mixup = 0.5;  // the teacher sees the same mixed images
  ASSERT_TRUE(tools::train(short_run).completed);
  const std::string resumed = testing::kill_then_resume(short_run, "distill_killed", 11);
  testing::expect_checkpoints_match(short_run.out + "/last.safetensors", resumed + "/last.safetensors", 0.0, 0.0,
                                    "distillation resumed");

  testing::expect_one_line_error(testing::kestrel_cli("distill --dataset fashion-mnist --out " + temp_path("no_t")),
                                 "kestrel distill needs --teacher", "distill without teachers");
  testing::expect_one_line_error(
      testing::kestrel_cli("train --teacher " + ckpt + " --distill-alpha 1.5 --out " + temp_path("bad_alpha")),
      "--distill-alpha must be in [0, 1]", "alpha out of range");
}

}  // namespace
}  // namespace kestrel
