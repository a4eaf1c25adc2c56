// Host cost of a training batch: the threaded loader's per-image pipeline
// (decode-free here: u8 -> float, random crop, flip, cutout, normalize, then
// CutMix) against the resident loader building the same batch with
// assemble_batch, both on the CPU and on one thread (num_workers 0), so the
// figure is CPU time per batch. On a GPU the resident loader's host part is
// only the plan; its pixels move on the device.
//
// Counter: img_per_s. CIFAR-shaped data: 5,000 random 32x32x3 images, batch 256.
//
//   build/bench/bench_loader --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "data/resident_loader.h"

namespace {

using namespace kestrel;

constexpr int kImages = 5000, kSide = 32, kChannels = 3, kClasses = 10;
constexpr int64_t kBatch = 256;

std::shared_ptr<data::ArrayDataset> cifar_shaped() {
  std::vector<std::string> names(kClasses, "c");
  auto ds = std::make_shared<data::ArrayDataset>(kSide, kSide, kChannels, names);
  Generator gen(3);
  std::vector<uint8_t> px(kSide * kSide * kChannels);
  for (int i = 0; i < kImages; ++i) {
    for (auto& p : px) p = static_cast<uint8_t>(gen.randint(0, 256));
    ds->append(px.data(), i % kClasses);
  }
  return ds;
}

data::ResidentAugment cifar_augment() {
  data::ResidentAugment a;
  a.crop_padding = 4;
  a.hflip = 0.5;
  a.cutout_size = 16;
  a.cutout_p = 0.5;
  a.mean = {0.4914f, 0.4822f, 0.4465f};
  a.std = {0.2470f, 0.2435f, 0.2616f};
  return a;
}

void run_epochs(benchmark::State& state, data::BatchLoader& loader) {
  int64_t images = 0, epoch = 0;
  for (auto _ : state) {
    loader.start_epoch(epoch++);
    data::Batch b;
    while (loader.next(b)) images += b.size();
  }
  state.counters["img_per_s"] = benchmark::Counter(static_cast<double>(images), benchmark::Counter::kIsRate);
}

data::LoaderOptions one_thread() {
  data::LoaderOptions lo;
  lo.batch_size = kBatch;
  lo.num_workers = 0;
  return lo;
}

void BM_ThreadedLoaderHostPipeline(benchmark::State& state) {
  const auto ds = cifar_shaped();
  const data::ResidentAugment aug = cifar_augment();
  data::DataLoader loader(ds, one_thread(), data::resident_host_transform(aug, kSide, kSide),
                          data::mixing_transform(data::cutmix_mixer(1.0), kClasses));
  run_epochs(state, loader);
}

void BM_ResidentLoaderOnCpu(benchmark::State& state) {
  const auto ds = cifar_shaped();
  data::ResidentLoader loader(*ds, one_thread(), cifar_augment(), data::cutmix_mixer(1.0), kClasses, Device::cpu());
  run_epochs(state, loader);
}

}  // namespace

BENCHMARK(BM_ThreadedLoaderHostPipeline)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ResidentLoaderOnCpu)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
