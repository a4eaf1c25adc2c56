// --precise-bn (tools/lib/precise_bn.h): batch-norm statistics recomputed as
// the plain average over batches, everything else left as it was.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "data/dataset.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/nn/layers.h"
#include "engine/ops/reduce.h"
#include "test_util.h"
#include "tools/lib/precise_bn.h"

using namespace kestrel;

namespace {

constexpr int64_t kImages = 40, kBatch = 8, kChannels = 2;

std::shared_ptr<data::ArrayDataset> random_images() {
  auto ds = std::make_shared<data::ArrayDataset>(4, 4, kChannels, std::vector<std::string>{"a", "b"});
  std::vector<uint8_t> px(4 * 4 * kChannels);
  uint32_t state = 12345;
  for (int64_t i = 0; i < kImages; ++i) {
    for (uint8_t& p : px) p = static_cast<uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
    ds->append(px.data(), i % 2);
  }
  return ds;
}

data::LoaderOptions options() {
  data::LoaderOptions o;
  o.batch_size = kBatch;
  o.seed = 3;
  o.num_workers = 1;
  o.drop_last = true;
  return o;
}

// input -> bn -> conv -> bn -> dropout: the second norm sees the conv's output,
// and the dropout after it draws from the init generator without changing them.
struct Net {
  std::shared_ptr<nn::BatchNorm2d> bn_in = std::make_shared<nn::BatchNorm2d>(kChannels);
  std::shared_ptr<nn::Conv2d> conv = std::make_shared<nn::Conv2d>(kChannels, 3, 3);
  std::shared_ptr<nn::BatchNorm2d> bn_out = std::make_shared<nn::BatchNorm2d>(3);
  nn::Sequential seq{{bn_in, conv, bn_out, std::make_shared<nn::Dropout>(0.5)}};
};

// The per-channel mean and unbiased variance of each of the first `batches`
// batches of `epoch`, averaged over the batches.
std::pair<Tensor, Tensor> averaged_statistics(data::BatchLoader& loader, int64_t epoch, int64_t batches,
                                              const std::function<Tensor(const Tensor&)>& f) {
  loader.start_epoch(epoch);
  data::Batch b;
  Tensor mean_sum, var_sum;
  int64_t n = 0;
  NoGradGuard g;
  while (n < batches && loader.next(b)) {
    const Tensor h = f(b.images);
    const Tensor m = mean(h, {0, 1, 2}), v = var(h, {0, 1, 2}, true);
    mean_sum = n == 0 ? m : add(mean_sum, m);
    var_sum = n == 0 ? v : add(var_sum, v);
    ++n;
  }
  return {mul_scalar(mean_sum, 1.0 / n), mul_scalar(var_sum, 1.0 / n)};
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector_f64(), y = b.to_vector_f64();
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

}  // namespace

TEST(PreciseBatchNorm, RunningStatisticsBecomeTheAverageOverTheBatches) {
  auto ds = random_images();
  Net net;
  net.seq.eval();
  data::DataLoader loader(ds, options()), reference(ds, options());
  Generator& gen = nn::init_generator();
  const uint64_t seed = gen.seed(), offset = gen.offset();
  const Tensor tracked = net.bn_out->num_batches_tracked.clone();

  EXPECT_EQ(tools::recompute_batch_norm_statistics(net.seq, loader, /*epoch=*/2, /*batches=*/3), 3);

  const auto [in_mean, in_var] = averaged_statistics(reference, 2, 3, [](const Tensor& x) { return x; });
  kestrel::testing::expect_close(net.bn_in->running_mean, in_mean, 1e-6, 1e-5, "input norm's mean");
  kestrel::testing::expect_close(net.bn_in->running_var, in_var, 1e-6, 1e-5, "input norm's variance");
  // The second norm's input: the first norm on its batch statistics, then the conv.
  auto bn_in_train = std::make_shared<nn::BatchNorm2d>(kChannels);
  const auto [out_mean, out_var] = averaged_statistics(reference, 2, 3, [&](const Tensor& x) {
    return (*net.conv)((*bn_in_train)(x));  // weight 1, bias 0: the same as net's untouched affine
  });
  kestrel::testing::expect_close(net.bn_out->running_mean, out_mean, 1e-5, 1e-4, "conv norm's mean");
  kestrel::testing::expect_close(net.bn_out->running_var, out_var, 1e-5, 1e-4, "conv norm's variance");

  EXPECT_FALSE(net.seq.is_training()) << "the model's mode is restored";
  EXPECT_EQ(net.bn_out->momentum, 0.1);
  kestrel::testing::expect_close(net.bn_out->num_batches_tracked, tracked, 0, 0, "num_batches_tracked");
  EXPECT_EQ(gen.seed(), seed);
  EXPECT_EQ(gen.offset(), offset) << "dropout's draws are given back";
}

TEST(PreciseBatchNorm, AnEpochShorterThanAskedUsesAllItsBatchesAndAnotherEpochOthers) {
  auto ds = random_images();
  Net net;
  data::DataLoader loader(ds, options());
  EXPECT_EQ(tools::recompute_batch_norm_statistics(net.seq, loader, 0, 100), kImages / kBatch);
  EXPECT_TRUE(net.seq.is_training());
  const Tensor epoch0 = net.bn_in->running_mean.clone();
  tools::recompute_batch_norm_statistics(net.seq, loader, 0, 2);
  const Tensor epoch0_two = net.bn_in->running_mean.clone();
  tools::recompute_batch_norm_statistics(net.seq, loader, 1, 2);
  const double d_epoch = max_abs_diff(net.bn_in->running_mean, epoch0_two);
  EXPECT_GT(d_epoch, 0.0) << "epoch 1's first two batches are not epoch 0's";
  EXPECT_GT(max_abs_diff(epoch0, epoch0_two), 0.0) << "two batches average fewer images than five";
}

TEST(PreciseBatchNorm, AModelWithoutBatchNormsIsAClearError) {
  auto ds = random_images();
  nn::Sequential no_norms{{std::make_shared<nn::Conv2d>(kChannels, 3, 3)}};
  data::DataLoader loader(ds, options());
  try {
    tools::recompute_batch_norm_statistics(no_norms, loader, 0, 2);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("no batch norms"), std::string::npos) << e.what();
  }
}
