// NCCL itself on a GPU, in a world of one rank: it loads, a communicator forms
// on the device, and its collectives run on the current stream and leave the
// data right. (Two ranks need two GPUs; test_dist's dist.mpi2 entries cover
// the averaging logic, on the emulator through an emulated NCCL.)
#include <gtest/gtest.h>

#include "engine/dist/nccl.h"
#include "tests/cuda_parity.h"
#include "tests/test_util.h"

namespace kestrel {
namespace {

TEST(NcclCommunicator, WorldOfOneReducesAndBroadcastsOnTheDevice) {
  KESTREL_REQUIRE_CUDA();
  std::string why;
  if (!dist::nccl_enabled(&why)) GTEST_SKIP() << "NCCL not loadable: " << why;
  dist::NcclCommunicator comm(1, 0, dist::NcclCommunicator::new_unique_id(), Device::cuda(0));
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I64}) {
    const Tensor values = (testing::random_tensor({257, 3}, 21, DType::F32) * 100.0).to(dtype);
    Tensor t = values.to(Device::cuda(0));
    comm.all_reduce_sum_(t);
    testing::expect_close(t.cpu().to(DType::F64), values.to(DType::F64), 0.0, 0.0, dtype_name(dtype));
    comm.broadcast_(t, 0);
    testing::expect_close(t.cpu().to(DType::F64), values.to(DType::F64), 0.0, 0.0, dtype_name(dtype));
  }
  Tensor on_cpu = Tensor::zeros({4});
  EXPECT_THROW(comm.all_reduce_sum_(on_cpu), ValueError);
}

}  // namespace
}  // namespace kestrel
