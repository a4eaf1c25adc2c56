// Data-parallel collectives and gradient averaging (engine/dist). Every test
// holds in any world size: ctest runs this file as one process, and again
// under `mpirun -np 2` (the dist.mpi2 entries), where the ranks really talk.
// The CUDA cases skip without a device; on the CUDA emulator they go through
// the emulated NCCL.
#include <gtest/gtest.h>

#include <cstdlib>

#include "engine/dist/data_parallel.h"
#include "engine/dist/process_group.h"
#include "engine/nn/layers.h"
#include "engine/ops/loss.h"
#include "tests/cuda_parity.h"
#include "tools/lib/device_select.h"
#include "tests/test_util.h"
#if defined(KESTREL_CUDA_EMULATOR)
#include "engine/cuda/runtime.h"
#include "tests/emu/cuda_emu.h"
#endif

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
    // Under mpirun every expectation below must hold in the world it started,
    // not in singletons of one, where each collective is the identity.
    for (const char* launcher_size : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
      if (const char* n = std::getenv(launcher_size)) {
        ASSERT_EQ(world_, std::atoi(n)) << launcher_size << " says " << n << " ranks";
        break;
      }
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

// The same global batch on every rank (same seeds); each rank takes its share.
struct GlobalBatch {
  static constexpr int64_t kSize = 8;
  Tensor images = testing::random_tensor({kSize, 6, 6, 3}, 11, DType::F32);
  Tensor labels = Tensor::from_vector_i64({0, 1, 2, 3, 4, 0, 1, 2}, {kSize});
};

// Gradients of the whole batch on one replica, by parameter name.
std::vector<std::pair<std::string, Tensor>> whole_batch_gradients(const GlobalBatch& batch, Device device) {
  auto whole = small_net(5, device);
  cross_entropy((*whole)(batch.images.to(device)), batch.labels.to(device)).backward();
  return whole->named_parameters();
}

// `got` holds averaged shard gradients: equal to the whole batch's, except the
// head no rank reached, averaged as zeros in a world of several and untouched in one.
void expect_whole_batch_gradients(const nn::Module& got_model, const GlobalBatch& batch, Device device, int world) {
  const auto got = got_model.named_parameters(), want = whole_batch_gradients(batch, device);
  for (size_t i = 0; i < got.size(); ++i) {
    const std::string& name = got[i].first;
    if (name.rfind("unused.", 0) == 0) {
      if (world > 1) {
        expect_close(got[i].second.grad().cpu(), Tensor::zeros(got[i].second.shape()), 0.0, 0.0, name);
      } else {
        EXPECT_FALSE(got[i].second.grad().defined()) << name;
      }
      continue;
    }
    expect_close(got[i].second.grad().cpu(), want[i].second.grad().cpu(), 1e-6, 1e-5, name);
  }
}

TEST_P(Dist, AveragedShardGradientsEqualTheWholeBatchGradient) {
  const GlobalBatch batch;
  ASSERT_EQ(batch.kSize % world_, 0) << "run with a world size dividing " << batch.kSize;
  const int64_t share = batch.kSize / world_;
  for (const bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "started during backward" : "started after backward");
    auto replica = small_net(5, device_);
    dist::GradientAverager sync(replica->parameters(), /*bucket_bytes=*/512);  // several buckets
    if (overlap) sync.prepare_for_backward();
    cross_entropy((*replica)(batch.images.narrow(0, rank_ * share, share).to(device_)),
                  batch.labels.narrow(0, rank_ * share, share).to(device_))
        .backward();
    sync.average();
    expect_whole_batch_gradients(*replica, batch, device_, world_);
    EXPECT_GT(sync.buckets(), 1);
    // The unused head is last, so in the first bucket: it holds every bucket back.
    EXPECT_EQ(sync.buckets_started_in_backward(), 0);
  }
}

TEST_P(Dist, AllReducesStartDuringTheLastMicroBatchesBackward) {
  const GlobalBatch batch;
  ASSERT_EQ(batch.kSize % (2 * world_), 0) << "run with a world size dividing " << batch.kSize / 2;
  const int64_t share = batch.kSize / world_, micro = share / 2;
  auto replica = small_net(5, device_);
  replica->unused->weight.set_requires_grad(false);  // frozen: left out of the buckets
  replica->unused->bias.set_requires_grad(false);
  dist::GradientAverager sync(replica->parameters(), /*bucket_bytes=*/512);
  for (int64_t m = 0; m < 2; ++m) {
    if (m == 1) sync.prepare_for_backward();
    const int64_t first = rank_ * share + m * micro;
    mul_scalar(cross_entropy((*replica)(batch.images.narrow(0, first, micro).to(device_)),
                             batch.labels.narrow(0, first, micro).to(device_)),
               0.5)
        .backward();
  }
  sync.average();
  const auto got = replica->named_parameters(), want = whole_batch_gradients(batch, device_);
  for (size_t i = 0; i < got.size(); ++i) {
    const std::string& name = got[i].first;
    if (name.rfind("unused.", 0) == 0) {
      EXPECT_FALSE(got[i].second.grad().defined()) << name;
      continue;
    }
    expect_close(got[i].second.grad().cpu(), want[i].second.grad().cpu(), 1e-6, 1e-5, name);
  }
  if (world_ > 1) {
    EXPECT_GT(sync.buckets(), 1);
    EXPECT_EQ(sync.buckets_started_in_backward(), sync.buckets());
    // A further backward would add to gradients already being summed.
    sync.prepare_for_backward();
    Tensor loss = cross_entropy((*replica)(batch.images.narrow(0, rank_ * share, share).to(device_)),
                                batch.labels.narrow(0, rank_ * share, share).to(device_));
    loss.backward();
    try {
      cross_entropy((*replica)(batch.images.narrow(0, rank_ * share, share).to(device_)),
                    batch.labels.narrow(0, rank_ * share, share).to(device_))
          .backward();
      ADD_FAILURE() << "a second backward after prepare_for_backward() was accepted";
    } catch (const AutogradError& e) {
      EXPECT_NE(std::string(e.what()).find("second backward"), std::string::npos) << e.what();
    }
    sync.average();  // the ranks' collectives stay paired
  } else {
    EXPECT_EQ(sync.buckets_started_in_backward(), 0);  // a world of one has nothing to sum
  }
}

#if defined(KESTREL_CUDA_EMULATOR)
// The emulator runs every stream at once, so the order of the side stream's
// NCCL work is read from what was queued: each all-reduce after its stream
// waited for the current one (the gradients are written), and the current
// stream waiting for it before average() returns (the optimizer reads them).
TEST_P(Dist, OverlappedAllReducesRunOnASideStreamOrderedWithTheCurrentOne) {
  if (GetParam() != DeviceType::CUDA || world_ == 1) GTEST_SKIP() << "needs CUDA and a world of several ranks";
  const GlobalBatch batch;
  const int64_t share = batch.kSize / world_;
  auto replica = small_net(5, device_);
  replica->unused->weight.set_requires_grad(false);
  replica->unused->bias.set_requires_grad(false);
  dist::GradientAverager sync(replica->parameters(), /*bucket_bytes=*/512);
  const cudaStream_t current = cuda::current_stream(device_.index);
  sync.prepare_for_backward();
  cross_entropy((*replica)(batch.images.narrow(0, rank_ * share, share).to(device_)),
                batch.labels.narrow(0, rank_ * share, share).to(device_))
      .backward();
  ASSERT_EQ(sync.buckets_started_in_backward(), sync.buckets());
  emu::take_stream_log();  // the creation of the communicator, if this test made it
  sync.prepare_for_backward();
  cross_entropy((*replica)(batch.images.narrow(0, rank_ * share, share).to(device_)),
                batch.labels.narrow(0, rank_ * share, share).to(device_))
      .backward();
  sync.average();
  const std::vector<emu::StreamLogEntry> log = emu::take_stream_log();
  int64_t collectives = 0;
  bool side_waited = false;
  for (const emu::StreamLogEntry& e : log) {
    if (e.kind == emu::StreamLogEntry::kWait && e.waited == current) side_waited = true;
    if (e.kind != emu::StreamLogEntry::kCollective) continue;
    ++collectives;
    EXPECT_NE(e.stream, current) << "all-reduce " << collectives << " ran on the current stream";
    EXPECT_TRUE(side_waited) << "all-reduce " << collectives << " queued before its stream waited for the gradients";
    side_waited = false;
  }
  EXPECT_EQ(collectives, sync.buckets());
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.back().kind, emu::StreamLogEntry::kWait);
  EXPECT_EQ(log.back().stream, current) << "average() returned before the current stream waited for the sums";
  EXPECT_NE(log.back().waited, current);
}
#endif

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
