// One CUDA library handle (cuBLAS, cuDNN) per thread and device, bound to the
// engine's current stream of that device on every use. A handle's stream
// binding is per call and sharing one between threads would race on it, so
// each thread has its own. Handles live until the process exits (destroying
// them after the driver has shut down crashes). Host-only.
#pragma once
#include <vector>

#include "engine/cuda/runtime.h"

namespace kestrel::gpu {

// Declare one `thread_local LibraryHandles<H>` per library; get() returns the
// current device's handle, created by create(device) on first use, after
// bind(handle, stream) bound it to cuda::current_stream(device).
template <typename Handle>
class LibraryHandles {
 public:
  template <typename Create, typename Bind>
  Handle get(Create&& create, Bind&& bind) {
    const int device = cuda::current_device();
    if (static_cast<int>(handles_.size()) <= device) handles_.resize(device + 1, nullptr);
    if (handles_[device] == nullptr) handles_[device] = create(device);
    bind(handles_[device], cuda::current_stream(device));
    return handles_[device];
  }

 private:
  std::vector<Handle> handles_;
};

}  // namespace kestrel::gpu
