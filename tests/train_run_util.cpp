#include "train_run_util.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "engine/io/safetensors.h"
#include "test_util.h"
#include "tools/lib/trainer.h"

namespace kestrel::testing {

const char* const kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

std::string fashion_mnist_skip_reason() {
  if (std::filesystem::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz")) return "";
  return std::string("Fashion-MNIST not found at ") + kFashionMnistDir + " (tools/setup.sh installs dataset-fashion-mnist)";
}

tools::TrainConfig fashion_mnist_config(const std::string& name) {
  tools::TrainConfig c;
  c.model = "cifar10_200k";
  c.dataset = "fashion-mnist";
  c.limit_train = 1024;
  c.limit_test = 500;
  c.epochs = 2;
  c.batch_size = 64;
  c.lr = 0.05;
  c.warmup_epochs = 0.5;
  c.workers = 1;
  c.progress = false;
  c.out = temp_path(name);
  c.overwrite = true;
  c.device = "cpu";
  return c;
}

tools::ModelInfo fashion_mnist_model_info(const std::string& model) {
  tools::ModelInfo info;
  info.model = model;
  info.num_classes = 10;
  info.in_channels = 1;
  info.height = info.width = 28;
  info.cifar_stem = true;
  info.dataset = "fashion-mnist";
  info.mean = {0.286f};
  info.std = {0.353f};
  return info;
}

tools::TrainConfig pattern_folder_config(const std::string& data, const std::string& out, const std::string& device) {
  tools::TrainConfig c;
  c.model = "cifar10_200k";
  c.dataset = "folder";
  c.data_dir = data;
  c.epochs = 2;
  c.batch_size = 6;
  c.lr = 0.05;
  c.dropout = 0.0;
  c.drop_path = 0.0;
  c.clip_grad = 2.0;
  c.workers = 1;
  c.progress = false;
  c.device = device;
  c.out = temp_path(out);
  c.overwrite = true;
  return c;
}

std::string kill_then_resume(const tools::TrainConfig& full, const std::string& killed_out, int64_t stop_after_steps,
                             const std::string& resume_device) {
  tools::TrainConfig killed = full;
  killed.out = temp_path(killed_out);
  killed.stop_after_steps = stop_after_steps;
  EXPECT_FALSE(tools::train(killed).completed) << killed.out << ": the run was to stop after " << stop_after_steps
                                               << " steps";
  tools::TrainConfig resumed = killed;
  resumed.stop_after_steps = 0;
  resumed.overwrite = false;
  resumed.resume = true;
  if (!resume_device.empty()) resumed.device = resume_device;
  EXPECT_TRUE(tools::train(resumed).completed) << resumed.out << ": the resumed run did not complete";
  return killed.out;
}

void expect_run_diverges(tools::TrainConfig c) {
  c.lr = 1e12;
  c.clip_grad = 0;
  c.warmup_epochs = 0;
  try {
    tools::train(c);
    ADD_FAILURE() << c.out << ": expected the run to stop";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("training diverged: loss is "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(" at epoch 1 batch "), std::string::npos) << e.what();
  }
}

void expect_checkpoints_match(const std::string& a_path, const std::string& b_path, double atol, double rtol,
                              const std::string& what) {
  const io::SafetensorsContents a = io::load_safetensors(a_path);
  const io::SafetensorsContents b = io::load_safetensors(b_path);
  ASSERT_EQ(a.tensors.size(), b.tensors.size()) << what;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    ASSERT_EQ(a.tensors[i].first, b.tensors[i].first) << what;
    const Tensor& ta = a.tensors[i].second;
    const Tensor& tb = b.tensors[i].second;
    if (is_floating(ta.dtype()))
      expect_close(tb.to(DType::F64), ta.to(DType::F64), atol, rtol, what + ": " + a.tensors[i].first);
    else
      EXPECT_EQ(ta.to_vector_f64(), tb.to_vector_f64()) << what << ": " << a.tensors[i].first;
  }
}

}  // namespace kestrel::testing
