#include "engine/device_sync.h"

#if defined(KESTREL_HAVE_CUDA)
#include "engine/cuda/runtime.h"
#endif

namespace kestrel {

void synchronize(Device device) {
  if (device.is_cpu()) return;
#if defined(KESTREL_HAVE_CUDA)
  cuda::DeviceGuard guard(device.index);
  KESTREL_CUDA_CHECK_CTX(cudaStreamSynchronize(cuda::current_stream(device.index)), "synchronize ", device.str());
#endif
}

}  // namespace kestrel
