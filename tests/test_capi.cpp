// The C interface (tools/capi/kestrel.h) as another program sees it: the
// shared library is opened with dlopen and its symbols looked up by name, so
// the export list is tested too. Its answers must be tools::Predictor's.
// Then the Python wrapper (tools/python/kestrel.py) over the same library.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <stb_image_write.h>

#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "models/registry.h"
#include "tests/test_util.h"
#include "tools/capi/kestrel.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/predictor.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;

// The library's entry points, looked up by name.
struct CApi {
  void* handle = nullptr;
  decltype(&kestrel_last_error) last_error = nullptr;
  decltype(&kestrel_predictor_open) open = nullptr;
  decltype(&kestrel_predictor_close) close = nullptr;
  decltype(&kestrel_predictor_model) model = nullptr;
  decltype(&kestrel_predictor_num_classes) num_classes = nullptr;
  decltype(&kestrel_predictor_class_name) class_name = nullptr;
  decltype(&kestrel_predictor_input_shape) input_shape = nullptr;
  decltype(&kestrel_predictor_probabilities_u8) probabilities_u8 = nullptr;
  decltype(&kestrel_predictor_probabilities_file) probabilities_file = nullptr;
  decltype(&kestrel_predictor_top_k_file) top_k_file = nullptr;
};

template <typename F>
void resolve(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  ASSERT_NE(fn, nullptr) << name << " is not exported";
}

class CInterface : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::temp_path("capi"));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
    // A small model with calibrated batch norms, as a training run would leave it.
    tools::ModelInfo info;
    info.model = "cifar10_200k";
    info.num_classes = 3;
    info.classes = {"circle", "square", "stripes"};
    info.dataset = "folder";
    info.mean = {0.5f, 0.4f, 0.3f};
    info.std = {0.25f, 0.2f, 0.3f};
    nn::ModulePtr model = tools::build_from_info(info);
    testing::calibrate_batch_norms(*model, testing::random_tensor({8, 32, 32, 3}, 5, DType::F32), 6);
    model->eval();
    tools::save_checkpoint(*dir_ + "/model.safetensors", *model, info);
    // A 20x24 RGB image: resized to 32x32 by the predictor.
    std::vector<uint8_t> pixels(20 * 24 * 3);
    for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 37 + i / 7) % 256);
    ASSERT_NE(stbi_write_png((*dir_ + "/image.png").c_str(), 24, 20, 3, pixels.data(), 24 * 3), 0);
  }
  static void TearDownTestSuite() { delete dir_; }

  void SetUp() override {
    api_.handle = dlopen(KESTREL_C_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(api_.handle, nullptr) << dlerror();
    resolve(api_.handle, "kestrel_last_error", api_.last_error);
    resolve(api_.handle, "kestrel_predictor_open", api_.open);
    resolve(api_.handle, "kestrel_predictor_close", api_.close);
    resolve(api_.handle, "kestrel_predictor_model", api_.model);
    resolve(api_.handle, "kestrel_predictor_num_classes", api_.num_classes);
    resolve(api_.handle, "kestrel_predictor_class_name", api_.class_name);
    resolve(api_.handle, "kestrel_predictor_input_shape", api_.input_shape);
    resolve(api_.handle, "kestrel_predictor_probabilities_u8", api_.probabilities_u8);
    resolve(api_.handle, "kestrel_predictor_probabilities_file", api_.probabilities_file);
    resolve(api_.handle, "kestrel_predictor_top_k_file", api_.top_k_file);
  }

  static std::string checkpoint() { return *dir_ + "/model.safetensors"; }
  static std::string image() { return *dir_ + "/image.png"; }

  CApi api_;
  static std::string* dir_;
};
std::string* CInterface::dir_ = nullptr;

TEST_F(CInterface, ExportsTheCFunctionsAlone) {
  // Every symbol the library defines for others (nm -D): kestrel_* alone,
  // the engine's hidden by tools/capi/exports.map, and each of them found.
  FILE* pipe = popen("nm -D --defined-only " KESTREL_C_LIBRARY " 2>/dev/null", "r");
  ASSERT_NE(pipe, nullptr);
  std::vector<std::string> names;
  char line[4096];
  while (std::fgets(line, sizeof(line), pipe)) {
    std::istringstream fields(line);
    std::string address, type, name;
    if (fields >> address >> type >> name) names.push_back(name);
  }
  if (pclose(pipe) != 0 && names.empty()) GTEST_SKIP() << "nm (binutils) is not installed";
  EXPECT_GE(names.size(), 10u) << "the C functions of tools/capi/kestrel.h";
  for (const std::string& name : names) {
    EXPECT_EQ(name.rfind("kestrel_", 0), 0u) << name << " is exported beside the C interface";
    EXPECT_NE(dlsym(api_.handle, name.c_str()), nullptr) << name;
  }
}

TEST_F(CInterface, AnswersAsThePredictorDoes) {
  kestrel_predictor* p = api_.open(checkpoint().c_str(), "cpu");
  ASSERT_NE(p, nullptr) << api_.last_error();
  EXPECT_STREQ(api_.model(p), "cifar10_200k");
  ASSERT_EQ(api_.num_classes(p), 3);
  EXPECT_STREQ(api_.class_name(p, 2), "stripes");
  EXPECT_EQ(api_.class_name(p, 3), nullptr);
  EXPECT_EQ(api_.class_name(p, -1), nullptr);
  int h = 0, w = 0, c = 0;
  api_.input_shape(p, &h, &w, &c);
  EXPECT_EQ(h, 32);
  EXPECT_EQ(w, 32);
  EXPECT_EQ(c, 3);

  tools::Predictor reference(checkpoint());
  const data::Image decoded = reference.load_image(image());
  const std::vector<float> want = reference.probabilities({decoded})[0];
  float from_file[3], from_pixels[6];
  ASSERT_EQ(api_.probabilities_file(p, image().c_str(), from_file), 0) << api_.last_error();
  EXPECT_STREQ(api_.last_error(), "");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(from_file[i], want[static_cast<size_t>(i)]) << i;
  // The same pixels twice, as one batch.
  std::vector<uint8_t> two(decoded.pixels);
  two.insert(two.end(), decoded.pixels.begin(), decoded.pixels.end());
  ASSERT_EQ(api_.probabilities_u8(p, two.data(), 2, decoded.h, decoded.w, decoded.c, from_pixels), 0)
      << api_.last_error();
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(from_pixels[i], want[static_cast<size_t>(i % 3)], 1e-6) << i;

  int index[5];
  float prob[5];
  ASSERT_EQ(api_.top_k_file(p, image().c_str(), 5, index, prob), 3) << "k is capped at the class count";
  const tools::TopK top = reference.predict(image(), 3);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(index[i], top[i].class_index) << i;
    EXPECT_FLOAT_EQ(prob[i], static_cast<float>(top[i].probability)) << i;
  }
  api_.close(p);
}

TEST_F(CInterface, FailuresReturnAndSayWhy) {
  EXPECT_EQ(api_.open((*dir_ + "/none.safetensors").c_str(), "cpu"), nullptr);
  EXPECT_NE(std::string(api_.last_error()).find("none.safetensors"), std::string::npos) << api_.last_error();
  EXPECT_EQ(api_.open(nullptr, "cpu"), nullptr);
  EXPECT_NE(std::string(api_.last_error()).find("NULL"), std::string::npos) << api_.last_error();
  EXPECT_EQ(api_.open(checkpoint().c_str(), "tpu"), nullptr);
  EXPECT_NE(std::string(api_.last_error()).find("tpu"), std::string::npos) << api_.last_error();

  kestrel_predictor* p = api_.open(checkpoint().c_str(), nullptr);  // NULL: the CPU
  ASSERT_NE(p, nullptr) << api_.last_error();
  float probs[3];
  EXPECT_EQ(api_.probabilities_file(p, (*dir_ + "/absent.png").c_str(), probs), -1);
  EXPECT_NE(std::string(api_.last_error()).find("absent.png"), std::string::npos) << api_.last_error();
  const uint8_t pixels[8] = {};
  EXPECT_EQ(api_.probabilities_u8(p, pixels, 1, 2, 2, 2, probs), -1);
  EXPECT_NE(std::string(api_.last_error()).find("channels must be 1, 3 or 4"), std::string::npos)
      << api_.last_error();
  int index[1];
  EXPECT_EQ(api_.top_k_file(p, image().c_str(), 0, index, probs), -1);
  EXPECT_EQ(api_.probabilities_file(p, nullptr, probs), -1);
  api_.close(p);
  api_.close(nullptr);
}

TEST_F(CInterface, PythonWrapperGivesTheSameProbabilities) {
  const std::string python = testing::python_with("ctypes");
  if (python.empty()) GTEST_SKIP() << "no python3";
  kestrel_predictor* p = api_.open(checkpoint().c_str(), "cpu");
  ASSERT_NE(p, nullptr) << api_.last_error();
  float probs[3];
  ASSERT_EQ(api_.probabilities_file(p, image().c_str(), probs), 0) << api_.last_error();
  api_.close(p);
  std::string expected;
  for (float v : probs) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s%.9g", expected.empty() ? "" : ",", static_cast<double>(v));
    expected += buf;
  }
  EXPECT_EQ(testing::run_python(python, "tests/interop/check_python_predictor.py",
                                std::string(KESTREL_C_LIBRARY) + " " + checkpoint() + " " + image() +
                                    " circle,square,stripes " + expected),
            0);
}

}  // namespace
}  // namespace kestrel
