// Class activation maps: Grad-CAM equals the classic CAM on a pooling + linear
// head, errors are named, and kestrel cam draws one tile per image and model.
#include <gtest/gtest.h>
#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <filesystem>

#include "engine/ops/conv.h"
#include "engine/trace.h"
#include "models/registry.h"
#include "test_util.h"
#include "tools/lib/cam.h"
#include "tools/lib/checkpoint.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;

// Zhou et al.'s CAM of a global-average-pool + linear head, from the feature
// map and the classifier's weights: relu(sum_k w[c,k] A[p,k]); Grad-CAM's
// channel weights are w[c,k] / (h w) there, so its map is this over h w.
TEST(Cam, GradCamOfAPoolThenLinearHeadIsTheClassicCam) {
  models::ModelOptions o;
  o.num_classes = 10;
  o.cifar_stem = true;
  auto m = models::build_model("cifar10_200k", o);
  const Tensor x = testing::random_tensor({1, 32, 32, 3}, 3, DType::F32);
  m->eval();
  Tensor a;
  {
    NoGradGuard g;
    TraceRecorder trace(true);
    (*m)(x);
    for (const TraceEvent& e : trace.events())
      if (e.op == "global_avg_pool") a = e.inputs[0];
  }
  ASSERT_TRUE(a.defined());
  const int64_t hw = a.size(1) * a.size(2), c = a.size(3);
  Tensor fc;
  for (const auto& [name, t] : m->named_parameters())
    if (name == "fc.weight") fc = t;
  ASSERT_TRUE(fc.defined());
  const tools::ClassActivationMap cam = tools::grad_cam(*m, x, 7);
  EXPECT_EQ(cam.class_index, 7);
  EXPECT_EQ(cam.height * cam.width, hw);
  const std::vector<float> av = a.contiguous().to_vector(), wv = fc.to_vector();
  double top = 0;
  for (int64_t p = 0; p < hw; ++p) {
    double s = 0;
    for (int64_t k = 0; k < c; ++k) s += static_cast<double>(wv[7 * c + k]) * av[p * c + k];
    const double expected = std::max(0.0, s) / static_cast<double>(hw);
    top = std::max(top, expected);
    EXPECT_NEAR(cam.raw[p], expected, 1e-6 + 1e-4 * std::fabs(expected)) << "position " << p;
  }
  ASSERT_GT(top, 0.0);
  EXPECT_FLOAT_EQ(*std::max_element(cam.heat.begin(), cam.heat.end()), 1.0f);
  for (const Tensor& p : m->parameters()) EXPECT_FALSE(p.grad().defined()) << "cam leaves no gradients behind";
  EXPECT_FALSE(m->is_training());
}

class NoPooling : public nn::Module {
 public:
  Tensor forward(const Tensor& x) override { return x.reshape({x.size(0), x.numel() / x.size(0)}); }
};

TEST(Cam, ModelsWithNothingToLocalizeAndBadClassesAreNamed) {
  NoPooling flat;
  const Tensor x = testing::random_tensor({1, 2, 2, 1}, 4, DType::F32);
  EXPECT_THROW(tools::grad_cam(flat, x), ValueError);
  models::ModelOptions o;
  o.num_classes = 10;
  o.cifar_stem = true;
  auto m = models::build_model("cifar10_200k", o);
  const Tensor img = testing::random_tensor({1, 32, 32, 3}, 5, DType::F32);
  EXPECT_THROW(tools::grad_cam(*m, img, 10), ValueError);
  EXPECT_THROW(tools::grad_cam(*m, testing::random_tensor({2, 32, 32, 3}, 6, DType::F32)), ShapeError);
  const tools::ClassActivationMap top = tools::grad_cam(*m, img);  // the predicted class
  EXPECT_GE(top.class_index, 0);
  EXPECT_GT(top.probability, 0.0);
}

// Two checkpoints on a folder of two images: a 2 x 3 grid of tiles.
TEST(Cam, CliDrawsEachImageBesideEachCheckpointsMap) {
  const std::string dir = testing::temp_path("cam_cli");
  fs::remove_all(dir);
  fs::create_directories(dir + "/images");
  std::vector<uint8_t> px(20 * 20 * 3);
  for (int i = 0; i < 2; ++i) {
    for (size_t p = 0; p < px.size(); ++p) px[p] = static_cast<uint8_t>((p * (i + 3)) % 251);
    ASSERT_TRUE(stbi_write_png((dir + "/images/" + std::to_string(i) + ".png").c_str(), 20, 20, 3, px.data(), 60));
  }
  tools::ModelInfo info;
  info.model = "cifar10_200k";
  info.num_classes = 3;
  info.cifar_stem = true;
  info.classes = {"a", "b", "c"};
  info.mean = {0.5f, 0.5f, 0.5f};
  info.std = {0.25f, 0.25f, 0.25f};
  std::string ckpts;
  for (int i = 0; i < 2; ++i) {
    manual_seed(static_cast<uint64_t>(i));
    const std::string path = dir + "/m" + std::to_string(i) + ".safetensors";
    tools::save_checkpoint(path, *tools::build_from_info(info), info);
    ckpts += (i ? "," : "") + path;
  }
  const testing::CliResult r =
      testing::kestrel_cli("cam -c " + ckpts + " " + dir + "/images --size 32 -o " + dir + "/cam.png");
  ASSERT_EQ(r.rc, 0) << r.err;
  int w = 0, h = 0, n = 0;
  ASSERT_TRUE(stbi_info((dir + "/cam.png").c_str(), &w, &h, &n));
  EXPECT_EQ(w, 3 * (32 + 4) + 4);
  EXPECT_EQ(h, 2 * (32 + 4) + 4);
  EXPECT_NE(r.out.find("m1.safetensors"), std::string::npos) << r.out;
  // --max-images 1: one row, and a note of the images left out.
  const testing::CliResult one = testing::kestrel_cli("cam -c " + ckpts + " " + dir +
                                                      "/images --size 32 --max-images 1 -o " + dir + "/cam1.png");
  ASSERT_EQ(one.rc, 0) << one.err;
  ASSERT_TRUE(stbi_info((dir + "/cam1.png").c_str(), &w, &h, &n));
  EXPECT_EQ(h, 1 * (32 + 4) + 4);
  EXPECT_NE(one.err.find("cam: 2 images; mapping the first 1 (--max-images to change)"), std::string::npos)
      << one.err;
  testing::expect_one_line_error(testing::kestrel_cli("cam -c " + ckpts + " " + dir + "/images -o " + dir + "/cam.jpg"),
                                 "must end in .png", "a JPEG name for PNG bytes");
  testing::expect_one_line_error(testing::kestrel_cli("cam -c " + ckpts + " " + dir + "/missing.png"),
                                 "missing.png", "a missing image");
  const testing::CliResult no_class = testing::kestrel_cli("cam -c " + ckpts + " --class 3 " + dir + "/images");
  testing::expect_one_line_error(no_class, "cam: --class 3 is out of range: ", "a class the models do not have");
  EXPECT_EQ(no_class.out, "") << "refused before any image is mapped";
}

// A checkpoint whose metadata crops the centre (torchvision's weights) gets
// its map drawn over that centre, not over the whole image squashed: on a
// wide image of red | green | blue bands, the tile shows the green band only.
TEST(Cam, CliDrawsTheCropTheModelSees) {
  const std::string dir = testing::temp_path("cam_crop");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int w = 40, h = 20;
  std::vector<uint8_t> px(w * h * 3, 0);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) px[(y * w + x) * 3 + (x < 10 ? 0 : x < 30 ? 1 : 2)] = 255;
  ASSERT_TRUE(stbi_write_png((dir + "/bands.png").c_str(), w, h, 3, px.data(), w * 3));
  tools::ModelInfo info;
  info.model = "cifar10_200k";
  info.num_classes = 2;
  info.cifar_stem = true;
  info.mean = {0.5f, 0.5f, 0.5f};
  info.std = {0.25f, 0.25f, 0.25f};
  info.crop_fraction = 0.5;
  manual_seed(0);
  tools::save_checkpoint(dir + "/m.safetensors", *tools::build_from_info(info), info);
  const testing::CliResult r = testing::kestrel_cli("cam -c " + dir + "/m.safetensors " + dir +
                                                    "/bands.png --size 32 -o " + dir + "/cam.png");
  ASSERT_EQ(r.rc, 0) << r.err;
  int gw = 0, gh = 0, n = 0;
  unsigned char* grid = stbi_load((dir + "/cam.png").c_str(), &gw, &gh, &n, 3);
  ASSERT_NE(grid, nullptr);
  for (int x : {4, 4 + 31}) {  // the first tile's left and right edges, mid-height
    const unsigned char* p = grid + ((4 + 16) * gw + x) * 3;
    EXPECT_GT(p[1], 200) << "x " << x;
    EXPECT_LT(p[0], 60) << "x " << x;
    EXPECT_LT(p[2], 60) << "x " << x;
  }
  stbi_image_free(grid);
  testing::expect_one_line_error(testing::kestrel_cli("cam -c " + dir + "/m.safetensors --class -2 " + dir +
                                                      "/bands.png"),
                                 "--class must be a class index", "a negative class");
  testing::expect_one_line_error(testing::kestrel_cli("cam -c " + dir + "/m.safetensors " + dir + "/bands.png -o " +
                                                      dir + "/nowhere/cam.png"),
                                 "does not exist", "an output folder that does not exist");
}

}  // namespace
}  // namespace kestrel
