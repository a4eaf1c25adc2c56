// Speed of a zoo model as timm's benchmark measures it: images per second of
// eval-mode inference and of whole training steps (forward, cross-entropy,
// backward, SGD update) at one batch size, on one device, with or without
// mixed precision. The library side of `kestrel bench`.
#pragma once
#include <cstdint>
#include <string>

#include "engine/device.h"
#include "tools/lib/op_profile.h"

namespace kestrel::tools {

struct BenchOptions {
  std::string model = "efficientnet_b0";
  int64_t num_classes = 0;  // 0: the model's published class count (1000, or 10 for CIFAR nets)
  double width_mult = 1.0;
  int64_t channels = 3, height = 224, width = 224;
  int64_t batch = 64;
  Device device = Device::cpu();
  std::string amp = "off";  // off, fp16, bf16 (CUDA)
  bool train = true;        // also time training steps
  bool fuse = true;         // CPU inference with batch norms folded (models/fuse.h), as eval and predict run it
  int64_t warmup = 3;
  int64_t iters = 10;
  bool cuda_graph = false;  // CUDA inference replayed as a CUDA graph (engine/nn/graphed_forward.h)
  bool profile = false;  // after timing, `iters` more passes of each under a timed trace
  bool progress = false;  // a progress bar on stderr over every pass
};

struct BenchResult {
  int64_t params = 0;
  int64_t macs = 0;  // per image, forward
  double infer_ms = 0, infer_img_s = 0;  // median over iters, per batch
  double train_ms = 0, train_img_s = 0;  // 0 when not timed
  OpProfile infer_profile, train_profile;  // with BenchOptions::profile (per batch)
};

// ValueError for options bench_model would refuse (an unknown model, a
// batch below 1, --amp on the CPU, ...), so a caller can check before printing.
void check_bench_options(const BenchOptions& o);
// Random inputs and labels, seeded; the CIFAR stem when the input is 64 px or less.
BenchResult bench_model(const BenchOptions& o);

}  // namespace kestrel::tools
