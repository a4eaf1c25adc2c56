// The constrained search behind EfficientNet's compound scaling (Tan & Le
// 2019, section 3.3): a grid of (alpha, beta, gamma) with
// alpha * beta^2 * gamma^2 ~= 2, each candidate built at phi and measured
// (parameters, multiply-adds), optionally trained briefly as a proxy for
// accuracy; beside it, the single-dimension strategies at the same FLOPs
// target (depth alone: alpha = 2; width alone: beta = sqrt 2; resolution
// alone: gamma = sqrt 2) and the paper's 1.2 / 1.1 / 1.15.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/scaling.h"
#include "tools/lib/train_config.h"

namespace kestrel::tools {

struct ScaleGrid {
  double alpha_max = 2.0, beta_max = 1.5, gamma_max = 1.5;  // each from 1.0
  double step = 0.05;
  double tolerance = 0.1;  // |alpha beta^2 gamma^2 - 2| at most this
};

struct ScaleCandidate {
  std::string name;  // "depth only", "paper", "grid"
  models::CompoundCoefficients coefficients;
  double depth_mult = 1, width_mult = 1;
  int64_t resolution = 0;
  int64_t params = 0, macs = 0;
  double macs_ratio = 0;  // macs over the unscaled model's
  double top1 = -1;       // proxy accuracy when trained; -1 otherwise
  std::string run_dir;
};

// The proxy runs' defaults: CIFAR-100, as EfficientNet's seed project.
inline TrainConfig cifar100_recipe() {
  TrainConfig t;
  t.dataset = "cifar100";
  return t;
}

struct ScaleSearchOptions {
  std::string model = "efficientnet_b0";
  double phi = 1.0;
  int64_t base_resolution = 32;
  // 0: the proxy data's (with train_epochs), else 100 classes and 3 channels.
  int64_t num_classes = 0;
  int64_t in_channels = 0;
  ScaleGrid grid;
  int64_t max_params = 0;  // 0: no budget
  int64_t max_macs = 0;
  // Proxy training of every candidate within budget when train_epochs > 0,
  // with `train` as the recipe (its model, sizes, epochs and out are set per candidate).
  int64_t train_epochs = 0;
  TrainConfig train = cifar100_recipe();
  std::string out = "runs/scale_search";
  bool overwrite = false;  // replace an existing search in `out`
  bool progress = true;
};

// The grid points that satisfy the constraint, in (alpha, beta, gamma) order.
std::vector<models::CompoundCoefficients> constrained_grid(const ScaleGrid& grid);

// Named strategies first (depth only, width only, resolution only, paper),
// then the grid; within budget; trained when asked. Writes search.csv and
// search.md to options.out.
std::vector<ScaleCandidate> scale_search(const ScaleSearchOptions& options);

// The Markdown table of a search.
std::string scale_search_markdown(const std::vector<ScaleCandidate>& rows, const ScaleSearchOptions& options);

}  // namespace kestrel::tools
