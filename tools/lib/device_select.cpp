#include "tools/lib/device_select.h"

#include "engine/dist/process_group.h"
#include "engine/error.h"
#if defined(KESTREL_HAVE_CUDA)
#include "engine/cuda/runtime.h"
#endif

namespace kestrel::tools {

namespace {

bool cuda_usable() {
#if defined(KESTREL_HAVE_CUDA)
  return cuda::cuda_available();
#else
  return false;
#endif
}

std::string why_no_cuda() {
#if defined(KESTREL_HAVE_CUDA)
  return "no usable CUDA device on this machine (" + cuda::unavailable_reason() + ")";
#else
  return "this build has no CUDA backend (nvcc was not found or KESTREL_CUDA=OFF)";
#endif
}

}  // namespace

Device resolve_device(const std::string& flag) {
  if (flag == "auto") return cuda_usable() ? resolve_device("cuda") : Device::cpu();
  Device d;
  try {
    d = Device::parse(flag);
  } catch (const ValueError&) {
    throw ValueError("--device '" + flag + "' is not one of: auto, cpu, cuda, cuda:N");
  }
  if (d.is_cpu()) return d;
  KCHECK(cuda_usable(), DeviceError, "--device ", flag, ": ", why_no_cuda(), "; use --device cpu or auto");
#if defined(KESTREL_HAVE_CUDA)
  // One process per GPU in a data-parallel job: "cuda" means this rank's own.
  if (flag.find(':') == std::string::npos) d.index = dist::local_rank() % cuda::device_count();
  KCHECK(d.index >= 0 && d.index < cuda::device_count(), DeviceError, "--device ", flag, ": this machine has ",
         cuda::device_count(), " CUDA device(s), numbered from 0");
#endif
  return d;
}

Device module_device(const nn::Module& module) {
  const nn::NamedTensors params = module.named_parameters();
  if (!params.empty()) return params.front().second.device();
  const nn::NamedTensors buffers = module.named_buffers();
  return buffers.empty() ? Device::cpu() : buffers.front().second.device();
}

DType amp_dtype(const std::string& amp) {
  if (amp == "off") return DType::F32;
  if (amp == "fp16") return DType::F16;
  if (amp == "bf16") return DType::BF16;
  throw ValueError("--amp '" + amp + "' is not one of: off, fp16, bf16");
}

}  // namespace kestrel::tools
