// The resident loader and assemble_batch on the CPU: batches equal the
// threaded loader's bit for bit (every augmentation it supports, every mixer,
// shards, short last batches, resume), the op's geometry on hand-made cases,
// and its one-line errors.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "data/resident_loader.h"
#include "engine/ops/assemble_batch.h"

using namespace kestrel;
using namespace kestrel::data;

namespace {

// n random h x w x c images with labels i % classes.
std::shared_ptr<ArrayDataset> random_dataset(int n, int h, int w, int c, int classes, uint64_t seed) {
  std::vector<std::string> names;
  for (int k = 0; k < classes; ++k) names.push_back("class" + std::to_string(k));
  auto ds = std::make_shared<ArrayDataset>(h, w, c, names);
  Generator gen(seed);
  std::vector<uint8_t> px(static_cast<size_t>(h * w * c));
  for (int i = 0; i < n; ++i) {
    for (auto& p : px) p = static_cast<uint8_t>(gen.randint(0, 256));
    ds->append(px.data(), i % classes);
  }
  return ds;
}

std::vector<Batch> epoch_of(BatchLoader& loader, int64_t epoch, int64_t start = 0) {
  loader.start_epoch(epoch, start);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

// Same rows, labels, and images and targets equal bit for bit.
void expect_identical(const std::vector<Batch>& a, const std::vector<Batch>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string at = what + ", batch " + std::to_string(i);
    EXPECT_EQ(a[i].indices, b[i].indices) << at;
    EXPECT_EQ(a[i].labels.to_vector_i64(), b[i].labels.to_vector_i64()) << at;
    ASSERT_EQ(a[i].images.shape(), b[i].images.shape()) << at;
    const std::vector<float> xa = a[i].images.to_vector(), xb = b[i].images.to_vector();
    ASSERT_EQ(std::memcmp(xa.data(), xb.data(), xa.size() * sizeof(float)), 0) << at << ": images differ";
    ASSERT_EQ(a[i].targets.defined(), b[i].targets.defined()) << at;
    if (a[i].targets.defined()) {
      EXPECT_EQ(a[i].targets.to_vector(), b[i].targets.to_vector()) << at;
    }
  }
}

struct Case {
  std::string name;
  ResidentAugment aug;
  std::function<BatchMixer()> mixer;
};

std::vector<Case> cases() {
  ResidentAugment plain;
  plain.mean = {0.5f};
  plain.std = {0.25f};
  ResidentAugment crop_flip = plain;
  crop_flip.crop_padding = 3;
  crop_flip.hflip = 0.5;
  crop_flip.mean = {0.49f, 0.48f, 0.45f};
  crop_flip.std = {0.247f, 0.243f, 0.261f};
  ResidentAugment full = crop_flip;
  full.cutout_size = 6;  // larger than half the image: clipped at the borders often
  full.cutout_p = 0.7;
  ResidentAugment flip_only = plain;
  flip_only.hflip = 1.0;  // every image, without a draw
  return {
      {"plain", plain, [] { return BatchMixer(); }},
      {"crop_flip", crop_flip, [] { return BatchMixer(); }},
      {"crop_flip_cutout", full, [] { return BatchMixer(); }},
      {"flip_only", flip_only, [] { return BatchMixer(); }},
      {"mixup", crop_flip, [] { return mixup_mixer(0.4, 0.8); }},
      {"cutmix", full, [] { return cutmix_mixer(1.0, 0.8); }},
      {"ricap", crop_flip, [] { return ricap_mixer(0.3, 0.9); }},
      {"choose", full,
       [] { return choose_mixer({{0.3, mixup_mixer(0.2)}, {0.3, cutmix_mixer(1.0)}, {0.3, ricap_mixer(0.3)}}); }},
  };
}

}  // namespace

TEST(ResidentLoader, BatchesEqualTheThreadedLoadersBitForBit) {
  const int h = 9, w = 11, classes = 5;
  auto ds = random_dataset(37, h, w, 3, classes, 1);
  for (const Case& c : cases()) {
    LoaderOptions lo;
    lo.batch_size = 8;  // 37 images: a short last batch of 5
    lo.seed = 42;
    lo.num_workers = 2;
    const BatchMixer mixer = c.mixer();
    const BatchTransform mixing = mixer ? mixing_transform(mixer, classes) : BatchTransform();
    DataLoader threaded(ds, lo, resident_host_transform(c.aug, h, w), mixing);
    ResidentLoader resident(*ds, lo, c.aug, mixer, classes, Device::cpu());
    EXPECT_EQ(resident.num_batches(), threaded.num_batches());
    for (int64_t epoch : {0, 3}) expect_identical(epoch_of(resident, epoch), epoch_of(threaded, epoch), c.name);
  }
}

TEST(ResidentLoader, ShardsAndResumeMatchTheThreadedLoader) {
  auto ds = random_dataset(21, 8, 8, 1, 4, 2);
  ResidentAugment aug;
  aug.crop_padding = 2;
  aug.hflip = 0.5;
  aug.cutout_size = 3;
  for (int rank = 0; rank < 2; ++rank) {
    LoaderOptions lo;
    lo.batch_size = 6;
    lo.seed = 7;
    lo.shard_rank = rank;
    lo.shard_count = 2;
    lo.num_workers = 0;
    DataLoader threaded(ds, lo, resident_host_transform(aug, 8, 8), mixing_transform(cutmix_mixer(1.0), 4));
    ResidentLoader resident(*ds, lo, aug, cutmix_mixer(1.0), 4, Device::cpu());
    const std::string what = "rank " + std::to_string(rank);
    expect_identical(epoch_of(resident, 1), epoch_of(threaded, 1), what);
    // Resuming at batch 2 gives the rest of the uninterrupted epoch.
    const std::vector<Batch> whole = epoch_of(resident, 1), rest = epoch_of(resident, 1, 2);
    expect_identical(rest, std::vector<Batch>(whole.begin() + 2, whole.end()), what + " resumed");
  }
}

// --mixup-off-epoch: both loaders mix the first epochs only, then give the
// batches a loader without a mixer gives.
TEST(ResidentLoader, MixingEndsAtItsEpochInBothLoaders) {
  auto ds = random_dataset(16, 8, 8, 3, 4, 4);
  ResidentAugment aug;
  aug.crop_padding = 2;
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.seed = 9;
  lo.num_workers = 0;
  ResidentLoader unmixed(*ds, lo, aug, {}, 4, Device::cpu());
  const std::vector<Batch> plain = epoch_of(unmixed, 2);
  lo.mix_until_epoch = 2;
  DataLoader threaded(ds, lo, resident_host_transform(aug, 8, 8), mixing_transform(cutmix_mixer(1.0), 4));
  ResidentLoader resident(*ds, lo, aug, cutmix_mixer(1.0), 4, Device::cpu());
  for (int64_t epoch : {0, 1, 2, 3}) {
    const std::vector<Batch> r = epoch_of(resident, epoch), t = epoch_of(threaded, epoch);
    expect_identical(r, t, "epoch " + std::to_string(epoch));
    for (const Batch& b : r) EXPECT_EQ(b.targets.defined(), epoch < 2) << "epoch " << epoch;
  }
  expect_identical(epoch_of(resident, 2), plain, "after the mixing epochs");
}

TEST(ResidentLoader, EpochsShuffleDifferentlyAndGenericDataSetsLoadToo) {
  auto array = random_dataset(16, 6, 6, 3, 4, 3);
  std::vector<int64_t> every_other;
  for (int64_t i = 0; i < 16; i += 2) every_other.push_back(i);
  auto subset = std::make_shared<SubsetDataset>(array, every_other);  // goes through Dataset::get
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.num_workers = 0;
  ResidentAugment aug;
  aug.hflip = 0.5;
  DataLoader threaded(subset, lo, resident_host_transform(aug, 6, 6));
  ResidentLoader resident(*subset, lo, aug, {}, 4, Device::cpu());
  EXPECT_EQ(resident.resident_bytes(), 8 * 6 * 6 * 3);
  EXPECT_EQ(resident_size_bytes(*subset), 8 * 6 * 6 * 3);
  expect_identical(epoch_of(resident, 0), epoch_of(threaded, 0), "subset");
  const std::vector<Batch> e0 = epoch_of(resident, 0), e1 = epoch_of(resident, 1);
  EXPECT_NE(e0[0].indices, e1[0].indices);
}

TEST(AssembleBatch, CropsMirrorsCutsOutAndNormalizesAsDescribed) {
  // One 3x4 single-channel image whose pixel (y, x) is 10 * y + x.
  std::vector<uint8_t> px;
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x) px.push_back(static_cast<uint8_t>(10 * y + x));
  Tensor images = Tensor::empty({1, 3, 4, 1}, DType::U8);
  std::memcpy(images.data<uint8_t>(), px.data(), px.size());
  AssembleOptions o;
  o.pad = 1;
  o.scale = 1.0f;
  o.mean = {1.0f};
  o.std = {2.0f};
  ImageView v;
  v.top = 0;  // one row and one column of padding come in at the top and left
  v.left = 0;
  auto value = [&](float raw) { return (raw - 1.0f) / 2.0f; };
  std::vector<float> got = assemble_batch(images, {v}, {}, o).to_vector();
  EXPECT_EQ(got[0], value(0));               // padding
  EXPECT_EQ(got[1 * 4 + 1], value(0));       // image (0, 0)
  EXPECT_EQ(got[2 * 4 + 3], value(12));      // image (1, 2)
  v.flip = true;                             // then mirrored: out (y, x) = crop (y, 3 - x)
  got = assemble_batch(images, {v}, {}, o).to_vector();
  EXPECT_EQ(got[2 * 4 + 0], value(12));
  EXPECT_EQ(got[0 * 4 + 3], value(0));
  v.hole_top = 2;  // a hole over the mirrored crop's bottom-left corner
  v.hole_left = 0;
  v.hole_h = 1;
  v.hole_w = 2;
  got = assemble_batch(images, {v}, {}, o).to_vector();
  EXPECT_EQ(got[2 * 4 + 0], value(0));
  EXPECT_EQ(got[2 * 4 + 1], value(0));
  EXPECT_EQ(got[2 * 4 + 2], value(10));  // crop (2, 1) = image (1, 0)
}

TEST(AssembleBatch, TilesAndBlendsComposeViews) {
  Tensor images = Tensor::empty({2, 2, 2, 1}, DType::U8);
  uint8_t* p = images.data<uint8_t>();
  for (int k = 0; k < 4; ++k) p[k] = 10, p[4 + k] = 20;
  AssembleOptions o;
  o.scale = 1.0f;
  ImageView a, b;
  b.image = 1;
  RowPlan pasted;  // row 0: view 0 with view 1's top-right pixel pasted at bottom-left
  pasted.base = 0;
  pasted.tiles = {AssembleTile{1, 1, 0, 1, 1, 0, 1}};
  RowPlan blended;  // row 1: 0.25 * view 1 + 0.75 * view 0
  blended.base = 1;
  blended.blend = 0;
  blended.weight = 0.25f;
  const std::vector<float> got = assemble_batch(images, {a, b}, {pasted, blended}, o).to_vector();
  EXPECT_EQ(got, (std::vector<float>{10, 10, 20, 10, 12.5f, 12.5f, 12.5f, 12.5f}));
}

TEST(AssembleBatch, BadPlansGiveOneLineErrors) {
  const Tensor images = Tensor::zeros({2, 4, 4, 3}, DType::U8);
  auto message = [&](const std::vector<ImageView>& views, const std::vector<RowPlan>& rows, AssembleOptions o,
                     const Tensor& x) {
    try {
      assemble_batch(x, views, rows, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "no error";
    return std::string();
  };
  const AssembleOptions o;
  ImageView far;
  far.image = 2;
  EXPECT_NE(message({far}, {}, o, images).find("view of image 2 but there are 2"), std::string::npos);
  ImageView corner;
  corner.top = 1;  // no padding: the only crop is (0, 0)
  EXPECT_NE(message({corner}, {}, o, images).find("crop corner (1, 0) is outside [0, 0]"), std::string::npos);
  ImageView hole;
  hole.hole_top = 3;
  hole.hole_h = 2;
  hole.hole_w = 1;
  EXPECT_NE(message({hole}, {}, o, images).find("cutout hole"), std::string::npos);
  RowPlan tile;
  tile.tiles = {AssembleTile{0, 2, 2, 3, 1, 0, 0}};
  EXPECT_NE(message({ImageView{}}, {tile}, o, images).find("a tile falls outside"), std::string::npos);
  RowPlan many;
  many.tiles.assign(5, AssembleTile{});
  EXPECT_NE(message({ImageView{}}, {many}, o, images).find("at most 4"), std::string::npos);
  AssembleOptions two;
  two.mean = {0.f, 0.f};
  two.std = {1.f, 1.f};
  EXPECT_NE(message({ImageView{}}, {}, two, images).find("need 1 or 3 values"), std::string::npos);
  EXPECT_NE(message({ImageView{}}, {}, o, Tensor::zeros({2, 4, 4, 3})).find("must be contiguous u8"),
            std::string::npos);
}

TEST(ResidentLoader, ImagesOfDifferentSizesAreRefusedByName) {
  class TwoSizes : public Dataset {
   public:
    int64_t size() const override { return 2; }
    Example get(int64_t i) const override {
      Example e;
      e.image.h = e.image.w = i == 0 ? 4 : 5;
      e.image.c = 1;
      e.image.pixels.assign(static_cast<size_t>(e.image.h * e.image.w), 0);
      return e;
    }
  };
  try {
    ResidentLoader loader(TwoSizes(), LoaderOptions{}, ResidentAugment{}, {}, 2, Device::cpu());
    ADD_FAILURE() << "no error";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("example 1 is 5x5x1 but example 0 is 4x4x1"), std::string::npos) << e.what();
  }
}
