// Registers the CUDA caching allocator as kestrel's CUDA DeviceAllocator at
// static-init time. CMake adds this file as an INTERFACE source of
// kestrel_engine, so it is compiled into every executable linking the engine
// and its initializer cannot be dropped by the static-library linker.
// Makes no CUDA call: safe on machines without a GPU.
#include "engine/cuda/runtime.h"

namespace {
const bool kestrel_cuda_allocator_registered = [] {
  kestrel::cuda::ensure_registered();
  return true;
}();
}  // namespace
