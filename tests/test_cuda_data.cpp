// The resident loader's CUDA path against its CPU reference: assemble_batch
// on random views, holes, tiles and blends (new device memory poisoned, so an
// unwritten element fails), and whole ResidentLoader epochs on cuda:0 against
// the same loader on the CPU. Both must agree exactly: the kernel rounds each
// operation as the CPU does (no fused multiply-adds).
// Every test skips without a usable CUDA device.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "data/resident_loader.h"
#include "engine/ops/assemble_batch.h"
#include "tools/lib/datasets.h"

using namespace kestrel;
using kestrel::testing::expect_cuda_matches_cpu;

namespace {

Tensor random_images(int64_t n, int64_t h, int64_t w, int64_t c, Generator& gen) {
  Tensor t = Tensor::empty({n, h, w, c}, DType::U8);
  uint8_t* p = t.data<uint8_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<uint8_t>(gen.randint(0, 256));
  return t;
}

int draw(Generator& gen, int lo, int hi) { return static_cast<int>(gen.randint(lo, hi + 1)); }  // [lo, hi]

AssembleTile random_tile(int64_t views, int h, int w, Generator& gen) {
  AssembleTile t;
  t.src = gen.randint(0, views);
  t.h = draw(gen, 0, h);
  t.w = draw(gen, 0, w);
  t.top = draw(gen, 0, h - t.h);
  t.left = draw(gen, 0, w - t.w);
  t.src_top = draw(gen, 0, h - t.h);
  t.src_left = draw(gen, 0, w - t.w);
  return t;
}

}  // namespace

TEST(CudaAssembleBatch, MatchesTheCpuReferenceExactly) {
  KESTREL_REQUIRE_CUDA();
  struct Shape4 {
    int64_t n, h, w, c;
  };
  for (const Shape4 s : {Shape4{5, 7, 9, 3}, Shape4{1, 1, 1, 1}, Shape4{3, 33, 33, 1}, Shape4{4, 8, 6, 17}}) {
    Generator gen(static_cast<uint64_t>(s.n * 1000 + s.h * 10 + s.c));
    const Tensor images = random_images(s.n + 2, s.h, s.w, s.c, gen);
    const int h = static_cast<int>(s.h), w = static_cast<int>(s.w);
    AssembleOptions o;
    o.pad = 2;
    o.mean.clear();
    o.std.clear();
    for (int64_t c = 0; c < s.c; ++c) {
      o.mean.push_back(static_cast<float>(gen.uniform()));
      o.std.push_back(0.1f + static_cast<float>(gen.uniform()));
    }
    std::vector<ImageView> views;
    for (int64_t i = 0; i < s.n; ++i) {
      ImageView v;
      v.image = gen.randint(0, s.n + 2);
      v.top = draw(gen, 0, 2 * o.pad);
      v.left = draw(gen, 0, 2 * o.pad);
      v.flip = gen.uniform() < 0.5;
      if (gen.uniform() < 0.6) {
        v.hole_h = draw(gen, 1, h);
        v.hole_w = draw(gen, 1, w);
        v.hole_top = draw(gen, 0, h - v.hole_h);
        v.hole_left = draw(gen, 0, w - v.hole_w);
      }
      views.push_back(v);
    }
    std::vector<RowPlan> rows;
    for (int64_t i = 0; i < s.n; ++i) {
      RowPlan r;
      r.base = gen.randint(0, s.n);
      const int tiles = draw(gen, 0, 4);
      for (int k = 0; k < tiles; ++k) r.tiles.push_back(random_tile(s.n, h, w, gen));
      if (gen.uniform() < 0.5) {
        r.blend = gen.randint(0, s.n);
        r.weight = static_cast<float>(gen.uniform());
      }
      rows.push_back(r);
    }
    const std::string what = "[" + std::to_string(s.n) + "," + std::to_string(s.h) + "," + std::to_string(s.w) +
                             "," + std::to_string(s.c) + "]";
    for (const bool mixed : {false, true}) {
      const std::vector<RowPlan> plan = mixed ? rows : std::vector<RowPlan>{};
      expect_cuda_matches_cpu([&](const std::vector<Tensor>& in) { return assemble_batch(in[0], views, plan, o); },
                              {images}, kestrel::testing::Tolerance{0.0, 0.0}, what + (mixed ? " mixed" : " views"),
                              false);
    }
  }
}

TEST(CudaResidentLoader, EpochsOnTheDeviceEqualTheCpuLoadersExactly) {
  KESTREL_REQUIRE_CUDA();
  auto ds = std::make_shared<data::ArrayDataset>(10, 12, 3, std::vector<std::string>{"a", "b", "c", "d"});
  Generator gen(5);
  std::vector<uint8_t> px(10 * 12 * 3);
  for (int i = 0; i < 23; ++i) {
    for (auto& p : px) p = static_cast<uint8_t>(gen.randint(0, 256));
    ds->append(px.data(), i % 4);
  }
  data::ResidentAugment aug;
  aug.crop_padding = 2;
  aug.hflip = 0.5;
  aug.cutout_size = 5;
  aug.cutout_p = 0.5;
  aug.mean = {0.4f, 0.5f, 0.6f};
  aug.std = {0.2f, 0.25f, 0.3f};
  data::LoaderOptions lo;
  lo.batch_size = 8;
  lo.seed = 11;
  const data::BatchMixer mixer = data::choose_mixer(
      {{0.3, data::mixup_mixer(0.4)}, {0.3, data::cutmix_mixer(1.0)}, {0.3, data::ricap_mixer(0.3)}});
  data::ResidentLoader on_cpu(*ds, lo, aug, mixer, 4, Device::cpu());
  data::ResidentLoader on_gpu(*ds, lo, aug, mixer, 4, Device::cuda());
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    on_cpu.start_epoch(epoch);
    on_gpu.start_epoch(epoch);
    data::Batch a, b;
    while (on_cpu.next(a)) {
      ASSERT_TRUE(on_gpu.next(b));
      ASSERT_TRUE(b.images.device().is_cuda());
      ASSERT_TRUE(b.labels.device().is_cpu());  // the trainer counts accuracy on the host
      const std::vector<float> x = a.images.to_vector(), y = b.images.cpu().to_vector();
      ASSERT_EQ(x.size(), y.size());
      EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0)
          << "epoch " << epoch << " batch " << a.index;
      EXPECT_EQ(a.targets.to_vector(), b.targets.cpu().to_vector());
      EXPECT_EQ(a.labels.to_vector_i64(), b.labels.to_vector_i64());
    }
    EXPECT_FALSE(on_gpu.next(b));
  }
}

TEST(CudaResidentLoader, AutoChoosesItOnCudaWhenTheAugmentationsAllow) {
  KESTREL_REQUIRE_CUDA();
  auto ds = std::make_shared<data::ArrayDataset>(8, 8, 1, std::vector<std::string>{"a", "b"});
  std::vector<uint8_t> px(64, 7);
  for (int i = 0; i < 4; ++i) ds->append(px.data(), i % 2);
  tools::TrainConfig c;
  c.dataset = "mnist";
  c.cutmix = 0.5;
  const tools::Normalization norm{{0.5f}, {0.5f}};
  data::LoaderOptions lo;
  lo.batch_size = 2;
  auto resident = [&](const tools::TrainConfig& cfg, Device d, int size) {
    return tools::make_loader(cfg, ds, lo, true, size, size, norm, 2, d).resident;
  };
  EXPECT_TRUE(resident(c, Device::cuda(), 8));
  EXPECT_FALSE(resident(c, Device::cpu(), 8));   // on the CPU the threads are the default
  EXPECT_FALSE(resident(c, Device::cuda(), 16));  // resizing runs on the host
  tools::TrainConfig policy = c;
  policy.randaugment = "2,9";
  EXPECT_FALSE(resident(policy, Device::cuda(), 8));
  tools::TrainConfig threads = c;
  threads.loader = "threads";
  EXPECT_FALSE(resident(threads, Device::cuda(), 8));
  tools::TrainConfig folder = c;
  folder.dataset = "folder";  // images of any size: never chosen unasked
  EXPECT_FALSE(resident(folder, Device::cuda(), 8));
  // The run says why it took the threaded loader.
  EXPECT_EQ(tools::make_loader(policy, ds, lo, true, 8, 8, norm, 2, Device::cuda()).why_threads,
            "--randaugment runs on the host");
  EXPECT_EQ(tools::make_loader(c, ds, lo, true, 16, 16, norm, 2, Device::cuda()).why_threads,
            "the images are 8x8 and need resizing to 16x16");
  EXPECT_EQ(tools::make_loader(c, ds, lo, true, 8, 8, norm, 2, Device::cuda()).why_threads, "");
}
