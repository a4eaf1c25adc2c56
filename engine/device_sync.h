// Waiting for a device: for timing, since CUDA launches return before their
// kernels finish.
#pragma once
#include "engine/device.h"

namespace kestrel {

// Waits for the work queued on the device's current stream; nothing on the CPU.
void synchronize(Device device);

}  // namespace kestrel
