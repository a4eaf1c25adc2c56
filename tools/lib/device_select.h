// The --device flag of kestrel train, eval and predict, and the little a
// command needs to run a model on the device it names.
#pragma once
#include <string>

#include "engine/device.h"
#include "engine/nn/module.h"

namespace kestrel::tools {

// "cpu", "cuda", "cuda:N" or "auto" (cuda when a CUDA device is usable,
// else cpu). "cuda" is cuda:0, or in a data-parallel job (engine/dist) the
// GPU of the rank's index on its machine. Throws DeviceError when a CUDA
// device is asked for and this build has no CUDA backend or the machine no
// usable device, ValueError for a value that names no device.
Device resolve_device(const std::string& flag);

// Where the module's parameters (else buffers) live; cpu for a module with none.
Device module_device(const nn::Module& module);

// Waits for the work queued on the device (its current stream); nothing on the CPU.
// For timing: CUDA launches return before the kernels finish.
void synchronize(Device device);

}  // namespace kestrel::tools
