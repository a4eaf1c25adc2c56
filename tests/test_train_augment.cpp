// The augmentation flags of kestrel train become the transforms they name, in
// the documented order, with the documented limits; host-only ones keep the
// threaded loader.
#include <gtest/gtest.h>

#include <array>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "data/dataset.h"
#include "test_util.h"
#include "tools/lib/datasets.h"

using namespace kestrel;
using namespace kestrel::data;
using kestrel::tools::Normalization;
using kestrel::tools::TrainConfig;

namespace {

const Normalization kNorm{{0.5f, 0.4f, 0.3f}, {0.2f, 0.25f, 0.3f}};

FImage random_image(uint64_t seed) {
  Generator gen(seed);
  FImage img(12, 12, 3);
  for (float& v : img.data) v = static_cast<float>(gen.uniform());
  return img;
}

// What train_transform(c) makes of an image, and what `expected` makes of it
// from the same generator state: equal element for element when the flags
// build exactly `expected`.
void expect_builds(const TrainConfig& c, const std::vector<Transform>& middle, const std::string& what) {
  std::vector<Transform> steps = {resize(12, 12)};
  steps.insert(steps.end(), middle.begin(), middle.end());
  steps.push_back(normalize(kNorm.mean, kNorm.std));
  const Transform expected = compose(steps), built = tools::train_transform(c, 12, 12, kNorm);
  const Transform untouched = compose({normalize(kNorm.mean, kNorm.std)});
  int changed = 0;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    FImage a = random_image(seed), b = a, plain = a;
    Generator ga(100 + seed), gb(100 + seed), gp(100 + seed);
    built(a, ga);
    expected(b, gb);
    untouched(plain, gp);
    ASSERT_EQ(a.data, b.data) << what << ", image " << seed;
    changed += a.data != plain.data;
  }
  EXPECT_GE(changed, 6) << what << ": the transform should change most images";
}

TrainConfig no_default_augmentation() {
  TrainConfig c;
  c.random_crop = false;
  c.hflip = 0.0;
  return c;
}

}  // namespace

TEST(TrainAugment, EachFlagBuildsTheTransformItNames) {
  {
    TrainConfig c = no_default_augmentation();
    c.shift_scale_rotate = 0.75;
    c.ssr_limits = "0.1,0.2,15";
    expect_builds(c, {random_shift_scale_rotate(0.1, 0.2, 15, 0.75)},
                  "--shift-scale-rotate 0.75 --ssr-limits 0.1,0.2,15");
  }
  {
    TrainConfig c = no_default_augmentation();
    c.vflip = 0.9;
    expect_builds(c, {random_vflip(0.9)}, "--vflip 0.9");
  }
  {
    TrainConfig c = no_default_augmentation();
    c.hflip = 0.8;
    expect_builds(c, {random_hflip(0.8)}, "--hflip 0.8");
  }
  {
    TrainConfig c = no_default_augmentation();
    c.rotation = 30;
    expect_builds(c, {random_rotation(30)}, "--rotation 30");
  }
  {
    TrainConfig c = no_default_augmentation();
    c.color_jitter = "0.4,0.3,0.2";
    expect_builds(c, {color_jitter(0.4f, 0.3f, 0.2f, 0.0f)}, "--color-jitter 0.4,0.3,0.2");
    c.color_jitter = "0.1,0.2,0.3,0.05";
    expect_builds(c, {color_jitter(0.1f, 0.2f, 0.3f, 0.05f)}, "--color-jitter with hue");
  }
  {
    TrainConfig c = no_default_augmentation();
    c.brightness_contrast = 1.0;
    expect_builds(c, {random_brightness_contrast(0.2, 0.2, 1.0)}, "--brightness-contrast 1");
  }
  {
    TrainConfig c = no_default_augmentation();
    c.hsv_shift = 1.0;
    expect_builds(c, {random_hsv_shift(20.0, 0.12, 0.08, 1.0)}, "--hsv-shift 1");
  }
  {
    TrainConfig c = no_default_augmentation();
    c.randaugment = "2,9";
    expect_builds(c, {rand_augment(2, 9)}, "--randaugment 2,9");
  }
}

TEST(TrainAugment, TheSeedPipelineRunsGeometryThenColourThenPoliciesThenCutout) {
  TrainConfig c;  // random crop and mirror on, as by default
  c.shift_scale_rotate = 0.5;
  c.rotation = 10;
  c.color_jitter = "0.2,0.2,0.2";
  c.brightness_contrast = 0.5;
  c.hsv_shift = 0.5;
  c.auto_augment = true;
  c.cutout = 0.5;
  const ResidentAugment a = tools::resident_train_augment(c, 12, kNorm);
  expect_builds(c,
                {random_crop(12, 12, a.crop_padding), random_hflip(0.5),
                 random_shift_scale_rotate(0.0625, 0.1, 45, 0.5), random_rotation(10), color_jitter(0.2f, 0.2f, 0.2f),
                 random_brightness_contrast(0.2, 0.2, 0.5), random_hsv_shift(20.0, 0.12, 0.08, 0.5),
                 auto_augment_cifar10(), cutout(a.cutout_size, 0.5)},
                "all of them");
}

TEST(TrainAugment, HostOnlyTransformsNameThemselvesAsWhyTheResidentLoaderCannotRun) {
  ArrayDataset ds(12, 12, 3, {"a"});
  const std::vector<uint8_t> pixels(12 * 12 * 3, 128);
  ds.append(pixels.data(), 0);
  EXPECT_EQ(tools::resident_unsupported(TrainConfig(), true, ds, 12, 12), "") << "crop, mirror and cutout run resident";
  const std::vector<std::pair<std::string, std::function<void(TrainConfig&)>>> host_only = {
      {"--shift-scale-rotate", [](TrainConfig& c) { c.shift_scale_rotate = 0.5; }},
      {"--rotation", [](TrainConfig& c) { c.rotation = 5; }},
      {"--color-jitter", [](TrainConfig& c) { c.color_jitter = "0.1,0.1,0.1"; }},
      {"--brightness-contrast", [](TrainConfig& c) { c.brightness_contrast = 0.5; }},
      {"--hsv-shift", [](TrainConfig& c) { c.hsv_shift = 0.5; }},
      {"--randaugment", [](TrainConfig& c) { c.randaugment = "2,9"; }},
      {"--auto-augment", [](TrainConfig& c) { c.auto_augment = true; }},
      {"--random-erase", [](TrainConfig& c) { c.random_erase = 0.25; }},
      {"--vflip", [](TrainConfig& c) { c.vflip = 0.5; }},
  };
  for (const auto& [flag, set] : host_only) {
    TrainConfig c;
    set(c);
    EXPECT_EQ(tools::resident_unsupported(c, true, ds, 12, 12), flag + " runs on the host");
    EXPECT_EQ(tools::resident_unsupported(c, false, ds, 12, 12), "") << flag << " does not touch evaluation";
  }
}

// --random-resized-crop takes the resize's place (the image reaches it at its
// own size); --crop-pct is evaluation's, so neither runs resident.
TEST(TrainAugment, RandomResizedCropReplacesTheResizeAndCropPctTheEvaluationResize) {
  TrainConfig c = no_default_augmentation();
  c.random_resized_crop = "0.3,0.9";
  c.hflip = 0.5;
  const Transform expected = compose({random_resized_crop(8, 8, 0.3, 0.9), random_hflip(0.5),
                                      normalize(kNorm.mean, kNorm.std)});
  const Transform built = tools::train_transform(c, 8, 8, kNorm);
  for (uint64_t seed = 0; seed < 8; ++seed) {
    FImage a = random_image(seed), b = a;
    Generator ga(seed), gb(seed);
    built(a, ga);
    expected(b, gb);
    ASSERT_EQ(a.h, 8);
    ASSERT_EQ(a.data, b.data) << "image " << seed;
  }
  EXPECT_EQ(tools::augmentation_summary(c, 8, 8), "random resized crop (area 0.3 to 0.9), flip");
  ArrayDataset ds(12, 12, 3, {"a"});
  const std::vector<uint8_t> pixels(12 * 12 * 3, 128);
  ds.append(pixels.data(), 0);
  EXPECT_EQ(tools::resident_unsupported(c, true, ds, 12, 12), "--random-resized-crop crops each image on the host");
  EXPECT_EQ(tools::resident_unsupported(c, false, ds, 12, 12), "");
  TrainConfig e;
  e.crop_pct = 0.875;
  EXPECT_EQ(tools::resident_unsupported(e, false, ds, 12, 12),
            "--crop-pct resizes and centre-crops each image on the host");

  FImage a = random_image(1), b = a;
  Generator g(0);
  tools::eval_transform(8, 8, kNorm, 0.875)(a, g);
  compose({resize(8, 8, 0.875), normalize(kNorm.mean, kNorm.std)})(b, g);
  EXPECT_EQ(a.data, b.data);

  c.random_resized_crop = "0.08,1";
  EXPECT_EQ(c.random_resized_crop_area(), (std::array<double, 2>{0.08, 1.0}));
  for (const char* bad : {"0.5", "0,1", "0.5,0.4", "0.5,1.1", "0.1,1,2", "a,1"}) {
    c.random_resized_crop = bad;
    try {
      c.validate();
      ADD_FAILURE() << "--random-resized-crop '" << bad << "' was accepted";
    } catch (const ValueError& err) {
      EXPECT_NE(std::string(err.what()).find("--random-resized-crop expects"), std::string::npos) << err.what();
    }
  }
  c.random_resized_crop.clear();
  for (double bad : {0.0, -0.5, 1.01}) {
    c.crop_pct = bad;
    EXPECT_THROW(c.validate(), ValueError) << bad;
  }
}

// Random erasing comes after the normalization: its noise is in the data's units.
TEST(TrainAugment, RandomErasingFollowsTheNormalization) {
  TrainConfig c = no_default_augmentation();
  c.random_erase = 0.5;
  const Transform expected = compose({resize(12, 12), normalize(kNorm.mean, kNorm.std), random_erasing(0.5)});
  const Transform built = tools::train_transform(c, 12, 12, kNorm);
  int changed = 0;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    FImage a = random_image(seed), b = a, plain = a;
    Generator ga(seed), gb(seed), gp(seed);
    built(a, ga);
    expected(b, gb);
    normalize(kNorm.mean, kNorm.std)(plain, gp);
    ASSERT_EQ(a.data, b.data) << "image " << seed;
    changed += a.data != plain.data;
  }
  EXPECT_GE(changed, 3);
  EXPECT_LE(changed, 13);
  c.cutout = 0.5;
  EXPECT_EQ(tools::augmentation_summary(c, 32, 32), "cutout 16 px p 0.5, random erasing p 0.5");
  c.random_erase = 1.5;
  EXPECT_THROW(c.validate(), ValueError);
}

TEST(TrainAugment, TheBannerNamesEveryStepInOrder) {
  TrainConfig c = no_default_augmentation();
  EXPECT_EQ(tools::augmentation_summary(c, 32, 32), "none");
  c.random_crop = true;
  c.hflip = 0.5;
  c.vflip = 0.25;
  c.shift_scale_rotate = 0.5;
  c.rotation = 15;
  c.color_jitter = "0.4,0.4,0.4";
  c.brightness_contrast = 0.25;
  c.hsv_shift = 0.5;
  c.auto_augment = true;
  c.randaugment = "2,9";
  c.cutout = 0.5;
  c.mixup = 0.2;
  c.ricap = 0.1;
  EXPECT_EQ(tools::augmentation_summary(c, 32, 32),
            "crop (pad 4), flip, vertical flip p 0.25, shift-scale-rotate p 0.5 (0.0625, 0.1, 45 deg), rotation 15 deg, color jitter "
            "0.4,0.4,0.4, brightness/contrast p 0.25, HSV shift p 0.5, AutoAugment (CIFAR-10), RandAugment 2,9, "
            "cutout 16 px p 0.5; mixup 0.2, ricap 0.1");
  TrainConfig mixing_only = no_default_augmentation();
  mixing_only.cutmix = 1;
  EXPECT_EQ(tools::augmentation_summary(mixing_only, 28, 28), "cutmix 1");
}

TEST(TrainAugment, ListFlagsParseOrNameTheFlag) {
  TrainConfig c;
  c.color_jitter = "0.4,0.4,0.4";
  EXPECT_EQ(c.color_jitter_amounts(), (std::array<float, 4>{0.4f, 0.4f, 0.4f, 0.0f}));
  c.ssr_limits = "0.1,0.2,15";
  EXPECT_EQ(c.shift_scale_rotate_limits(), (std::array<double, 3>{0.1, 0.2, 15}));
  c.randaugment = "3,12";
  EXPECT_EQ(c.randaugment_n_m(), (std::array<int, 2>{3, 12}));
  for (const char* bad : {"", "0.4", "0.4,0.4", "0.4,,0.4", "0.4,0.4,0.4,", "0.4,0.4,0.4,0.6", "0.4,0.4,0.4,0.1,0",
                          "-0.1,0.4,0.4", "0.4,0.4,x", "nan,0,0", "0.4 ,0.4,0.4"}) {
    c.color_jitter = bad;
    try {
      c.color_jitter_amounts();
      ADD_FAILURE() << "--color-jitter '" << bad << "' was accepted";
    } catch (const ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("--color-jitter expects"), std::string::npos) << e.what();
    }
  }
  for (const char* bad : {"0.1,0.1", "1.5,0.1,10", "0.1,1,10", "0.1,0.1,200", "0.1,0.1,10,1"}) {
    c.ssr_limits = bad;
    EXPECT_THROW(c.shift_scale_rotate_limits(), ValueError) << bad;
  }
  for (const char* bad : {"2", "0,9", "2,31", "2.5,9", "2,9x", "101,9"}) {
    c.randaugment = bad;
    EXPECT_THROW(c.randaugment_n_m(), ValueError) << bad;
  }
}

// Runs saved before --hflip was a probability hold true or false: true was a
// coin toss per image, and resumes as one.
TEST(TrainAugment, AFlipSavedAsOnOrOffReadsAsAProbability) {
  EXPECT_EQ(TrainConfig::from_json({{"hflip", true}}).hflip, 0.5);
  EXPECT_EQ(TrainConfig::from_json({{"hflip", false}}).hflip, 0.0);
  EXPECT_EQ(TrainConfig::from_json({{"hflip", 0.25}}).hflip, 0.25);
  TrainConfig c;
  c.hflip = 1.5;
  EXPECT_EQ(kestrel::testing::expect_message_of([&] { c.validate(); }),
            "--hflip is a probability: it must be in [0, 1], got 1.5");
}
