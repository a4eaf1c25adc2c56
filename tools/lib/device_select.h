// The --device flag of kestrel train, eval and predict, and the little a
// command needs to run a model on the device it names.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/device_sync.h"
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

// The --amp flag: "off", "fp16" or "bf16" -> the autocast dtype (f32 for off).
// Throws ValueError naming the valid values otherwise.
DType amp_dtype(const std::string& amp);

inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Milliseconds of each of `iters` calls after `warmup` untimed ones, each
// ended by synchronize(device) (engine/device_sync.h) so a CUDA call is timed to its last kernel.
template <typename F>
std::vector<double> timed_calls_ms(Device device, int64_t warmup, int64_t iters, F&& call) {
  for (int64_t i = 0; i < warmup; ++i) call();
  synchronize(device);
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    synchronize(device);
    ms.push_back(ms_since(t0));
  }
  return ms;
}

}  // namespace kestrel::tools
