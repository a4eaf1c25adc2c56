// The CPU emulator of the CUDA execution model (tests/emu) catches what it
// claims to catch: a missing barrier, divergent barriers, shuffles over
// partial warps, over-limit launches, reads past a buffer, unwritten memory.
// Runs in the emulator build (KESTREL_CUDA_EMULATOR=ON) only.
#include <gtest/gtest.h>

#if !defined(KESTREL_CUDA_EMULATOR)

TEST(CudaEmulator, SkippedOutsideTheEmulatorBuild) {
  GTEST_SKIP() << "the emulator's self-tests run in the KESTREL_CUDA_EMULATOR=ON build (tools/test.sh)";
}

#else

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/emu/cuda_emu.h"

namespace {

using kestrel::emu::launch;

// Each thread publishes a value in shared memory and reads its neighbour's.
__global__ void neighbour_kernel(int seed, bool with_barrier, int* out) {
  __shared__ int slot[64];
  const int t = static_cast<int>(threadIdx.x);
  slot[t] = t + seed;
  if (with_barrier) __syncthreads();
  out[t] = slot[(t + 1) % 64];
}

__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void warp_sum_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

__global__ void read_kernel(const float* in, int index, float* out) { out[0] = in[index]; }

std::vector<int> run_neighbours(int seed, bool with_barrier) {
  int* out = nullptr;
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&out), 64 * sizeof(int)), cudaSuccess);
  launch(neighbour_kernel, "neighbour_kernel", 1, 64)(seed, with_barrier, out);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<int> host(64);
  std::memcpy(host.data(), out, 64 * sizeof(int));
  cudaFree(out);
  return host;
}

int wrong_neighbours(const std::vector<int>& got, int seed) {
  int wrong = 0;
  for (int t = 0; t < 64; ++t) wrong += got[t] != (t + 1) % 64 + seed;
  return wrong;
}

TEST(CudaEmulator, AMissingBarrierGivesStaleSharedMemory) {
  EXPECT_EQ(wrong_neighbours(run_neighbours(1000, true), 1000), 0);
  EXPECT_GT(wrong_neighbours(run_neighbours(2000, false), 2000), 0)
      << "threads run one at a time between barriers, so a read without one sees the old value";
}

TEST(CudaEmulator, ASyncthreadsSomeThreadsNeverReachFailsTheLaunch) {
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&out), 64 * sizeof(int)), cudaSuccess);
  launch(early_exit_kernel, "early_exit_kernel", 1, 64)(out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(std::string(cudaGetErrorString(cudaErrorLaunchFailure)).find("__syncthreads"), std::string::npos);
  cudaFree(out);
}

TEST(CudaEmulator, WarpShufflesExchangeWithinAWarpAndRejectPartialWarps) {
  float* out = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&out), 64 * sizeof(float)), cudaSuccess);
  launch(warp_sum_kernel, "warp_sum_kernel", 1, 64)(out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(out[0], 31.f * 32.f / 2.f);  // lanes 0..31
  EXPECT_EQ(out[63], (32.f + 63.f) * 32.f / 2.f);  // lanes 32..63
  launch(warp_sum_kernel, "warp_sum_kernel", 1, 48)(out);  // a partial second warp
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(std::string(cudaGetErrorString(cudaErrorLaunchFailure)).find("partial warp"), std::string::npos);
  cudaFree(out);
}

TEST(CudaEmulator, LaunchesOverTheHardwareLimitsFail) {
  float* out = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&out), 4), cudaSuccess);
  launch(read_kernel, "read_kernel", 1, 1025)(out, 0, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  launch(read_kernel, "read_kernel", dim3(1, 65536), 32)(out, 0, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  launch(read_kernel, "read_kernel", 1, 32, 48 * 1024 + 1)(out, 0, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  cudaFree(out);
}

TEST(CudaEmulator, DeviceMemoryStartsAsNaNAndEndsAtAGuardPage) {
  float* in = nullptr;
  float* out = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&in), 10 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&out), sizeof(float)), cudaSuccess);
  launch(read_kernel, "read_kernel", 1, 1)(in, 9, out);
  EXPECT_TRUE(std::isnan(out[0])) << "unwritten device memory reads as NaN";
  // Past the 16-byte-rounded end of the buffer lies a PROT_NONE page.
  EXPECT_DEATH(launch(read_kernel, "read_kernel", 1, 1)(in, 12, out), "");
  cudaFree(in);
  cudaFree(out);
}

}  // namespace

#endif  // KESTREL_CUDA_EMULATOR
