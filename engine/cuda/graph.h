// CUDA graphs: work captured once on a private stream and replayed with one
// launch, so a network of many small kernels costs the host one call per
// pass instead of one launch per kernel (batch-1 inference, small inputs).
// Written and emulator-tested (tests/emu records captured work); untested on
// a GPU at the time of writing.
#pragma once
#include <cuda_runtime_api.h>

#include <functional>

#include "engine/cuda/runtime.h"

namespace kestrel::cuda {

class Graph {
 public:
  // A new stream of `device` with a private memory pool (runtime.h), used by
  // nothing but this graph.
  explicit Graph(int device = -1);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // Runs `work` once on stream() (the warm-up: cuDNN's algorithm choice and
  // other first-call work that cannot be captured), then captures a second
  // run of it. Tensors `work` allocates come from the private pool and stay
  // the graph's. Throws DeviceError naming the refused call when `work` waits
  // for the device or queues work on the legacy stream during the capture.
  void capture(const std::function<void()>& work);
  bool captured() const { return exec_ != nullptr; }
  // Queues the captured work on stream().
  void replay();
  cudaStream_t stream() const { return stream_.handle(); }

 private:
  Stream stream_;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace kestrel::cuda
