#include "engine/cuda/graph.h"

#include <cuda_runtime.h>

namespace kestrel::cuda {

Graph::Graph(int device) : stream_(Stream::create(device)) { begin_private_pool(stream()); }

Graph::~Graph() {
  if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
  try {
    end_private_pool(stream());
  } catch (const Error&) {
    // A failed device cannot be waited for; its memory goes with the process.
  }
}

void Graph::capture(const std::function<void()>& work) {
  KCHECK(!captured(), DeviceError, "a CUDA graph is captured once; make a new Graph for new work");
  DeviceGuard device(stream_.device());
  StreamScope scope(stream(), stream_.device());
  work();
  // Relaxed: the caching allocator may cudaMalloc during the capture.
  KESTREL_CUDA_CHECK_CTX(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeRelaxed), "capturing a CUDA graph");
  cudaGraph_t graph = nullptr;
  try {
    work();
  } catch (...) {
    (void)cudaStreamEndCapture(stream(), &graph);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  KESTREL_CUDA_CHECK_CTX(cudaStreamEndCapture(stream(), &graph),
                         "capturing a CUDA graph (a call in it waited for the device or used another stream)");
  const cudaError_t instantiated = cudaGraphInstantiate(&exec_, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (instantiated != cudaSuccess) exec_ = nullptr;
  KESTREL_CUDA_CHECK_CTX(instantiated, "instantiating a captured CUDA graph");
}

void Graph::replay() {
  KCHECK(captured(), DeviceError, "CUDA graph replayed before it was captured");
  KESTREL_CUDA_CHECK_CTX(cudaGraphLaunch(exec_, stream()), "replaying a CUDA graph");
}

}  // namespace kestrel::cuda
