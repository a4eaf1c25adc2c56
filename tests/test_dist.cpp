// Data-parallel collectives and gradient averaging (engine/dist). Every test
// holds in any world size: ctest runs this file as one process, and again
// under `mpirun -np 2` (the dist.mpi2 entries), where the ranks really talk.
// The CUDA cases skip without a device; on the CUDA emulator they go through
// the emulated NCCL.
#include <gtest/gtest.h>

#include "engine/dist/data_parallel.h"
#include "engine/dist/process_group.h"
#include "engine/nn/layers.h"
#include "engine/ops/loss.h"
#include "tests/cuda_parity.h"
#include "tools/lib/device_select.h"
#include "tests/test_util.h"

namespace kestrel {
namespace {

using testing::expect_close;

class Dist : public ::testing::TestWithParam<DeviceType> {
 protected:
  void SetUp() override {
    dist::init();
    if (GetParam() == DeviceType::CUDA) KESTREL_REQUIRE_CUDA();
    device_ = GetParam() == DeviceType::CUDA ? tools::resolve_device("cuda") : Device::cpu();  // this rank's GPU
    world_ = dist::world_size();
    rank_ = dist::rank();
  }
  Device device_;
  int world_ = 1, rank_ = 0;
};

// conv -> ReLU -> pool -> linear, and a head the forward never uses. No
// batch norm, so the mean gradients of equal shards average to the batch's.
class SmallNet : public nn::Module {
 public:
  SmallNet() {
    nn::Conv2dOptions o;
    o.padding = 1;
    conv = register_module("conv", std::make_shared<nn::Conv2d>(3, 8, 3, o));
    head = register_module("head", std::make_shared<nn::Linear>(8, 5));
    unused = register_module("unused", std::make_shared<nn::Linear>(8, 5));
  }
  Tensor forward(const Tensor& x) override {
    return (*head)(mean(activation((*conv)(x), Activation::ReLU), {1, 2}));
  }
  std::shared_ptr<nn::Conv2d> conv;
  std::shared_ptr<nn::Linear> head, unused;
};

std::shared_ptr<SmallNet> small_net(uint64_t seed, Device device) {
  manual_seed(seed);
  auto m = std::make_shared<SmallNet>();
  m->to(device);
  return m;
}

TEST_P(Dist, AllReduceSumsEveryRanksTensor) {
  for (DType dtype : {DType::F32, DType::F64, DType::I64, DType::F16}) {
    std::vector<double> mine(1000), want(1000);
    for (int64_t i = 0; i < 1000; ++i) {
      mine[i] = (rank_ + 1) * (i % 7);
      want[i] = world_ * (world_ + 1) / 2 * (i % 7);
    }
    Tensor t = Tensor::from_vector_f64(mine, {10, 100}).to(dtype).to(device_);
    dist::all_reduce_sum_(t);
    expect_close(t.cpu().to(DType::F64), Tensor::from_vector_f64(want, {10, 100}), 0.0, 0.0, dtype_name(dtype));
  }
}

TEST_P(Dist, BroadcastGivesEveryRankTheRootsTensor) {
  const int root = world_ - 1;
  Tensor t = Tensor::full({3, 17}, rank_ + 1.0, DType::F32, device_);
  dist::broadcast_(t, root);
  expect_close(t.cpu(), Tensor::full({3, 17}, root + 1.0), 0.0);
}

TEST_P(Dist, AveragedShardGradientsEqualTheWholeBatchGradient) {
  // The same global batch on every rank (same seeds); each rank takes its share.
  const int64_t batch = 8;
  ASSERT_EQ(batch % world_, 0) << "run with a world size dividing " << batch;
  const Tensor images = testing::random_tensor({batch, 6, 6, 3}, 11, DType::F32);
  const Tensor labels = Tensor::from_vector_i64({0, 1, 2, 3, 4, 0, 1, 2}, {batch});
  const int64_t share = batch / world_;

  auto replica = small_net(5, device_);
  dist::GradientAverager sync(replica->parameters(), /*bucket_bytes=*/512);  // several buckets
  cross_entropy((*replica)(images.narrow(0, rank_ * share, share).to(device_)),
                labels.narrow(0, rank_ * share, share).to(device_))
      .backward();
  sync.average();

  auto whole = small_net(5, device_);
  cross_entropy((*whole)(images.to(device_)), labels.to(device_)).backward();

  const auto got = replica->named_parameters(), want = whole->named_parameters();
  for (size_t i = 0; i < got.size(); ++i) {
    const std::string& name = got[i].first;
    if (name.rfind("unused.", 0) == 0) {
      // No rank reached it: averaged as zeros in a world of several, untouched in one.
      if (world_ > 1) {
        expect_close(got[i].second.grad().cpu(), Tensor::zeros(got[i].second.shape()), 0.0, 0.0, name);
      } else {
        EXPECT_FALSE(got[i].second.grad().defined()) << name;
      }
      continue;
    }
    expect_close(got[i].second.grad().cpu(), want[i].second.grad().cpu(), 1e-6, 1e-5, name);
  }
  if (world_ > 1) {
    EXPECT_GT(sync.buckets_last_average(), 1);
  }
}

TEST_P(Dist, BroadcastModuleGivesEveryRankRankZerosWeightsAndBuffers) {
  manual_seed(100 + rank_);  // a different model on each rank
  nn::BatchNorm2d bn(4);
  bn.running_mean.fill_(rank_ + 0.5);
  bn.weight.fill_(rank_ + 2.0);
  bn.to(device_);
  dist::broadcast_module(bn);
  expect_close(bn.running_mean.cpu(), Tensor::full({4}, 0.5), 0.0, 0.0, "running_mean");
  expect_close(bn.weight.cpu(), Tensor::full({4}, 2.0), 0.0, 0.0, "weight");
}

TEST_P(Dist, HostNumbersAreSummedOverRanks) {
  const std::vector<double> sums = dist::all_reduce_sum({static_cast<double>(rank_), 1.0});
  EXPECT_EQ(sums[0], world_ * (world_ - 1) / 2.0);
  EXPECT_EQ(sums[1], world_);
}

INSTANTIATE_TEST_SUITE_P(Devices, Dist, ::testing::Values(DeviceType::CPU, DeviceType::CUDA),
                         [](const ::testing::TestParamInfo<DeviceType>& p) {
                           return p.param == DeviceType::CPU ? "cpu" : "cuda";
                         });

}  // namespace
}  // namespace kestrel
