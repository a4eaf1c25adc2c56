#include "tools/lib/precise_bn.h"

#include <string>
#include <vector>

#include "data/pinned_batch.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/nn/layers.h"
#include "models/common.h"
#include "tools/lib/device_select.h"

namespace kestrel::tools {

namespace {

std::vector<nn::BatchNorm2d*> unfolded_batch_norms(nn::Module& model) {
  std::vector<nn::BatchNorm2d*> norms;
  models::visit_modules(model, [&](nn::Module& m, const std::string&) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(&m); bn != nullptr && !bn->folded) norms.push_back(bn);
  });
  return norms;
}

}  // namespace

bool has_batch_norm_to_recompute(nn::Module& model) { return !unfolded_batch_norms(model).empty(); }

int64_t recompute_batch_norm_statistics(nn::Module& model, data::BatchLoader& loader, int64_t epoch, int64_t batches) {
  const std::vector<nn::BatchNorm2d*> norms = unfolded_batch_norms(model);
  KCHECK(!norms.empty(), ValueError,
         "--precise-bn: the model has no batch norms to recompute (a quantized model's are folded)");
  struct Kept {
    double momentum;
    Tensor batches_tracked;
  };
  std::vector<Kept> kept;
  for (nn::BatchNorm2d* bn : norms) kept.push_back({bn->momentum, bn->num_batches_tracked.clone()});

  // Training mode throughout (dropout and drop-path too), so that every path
  // normalizes with batch statistics, as in training; the draws they take are
  // given back, so training continues as it would have without this pass.
  Generator& gen = nn::init_generator();
  const uint64_t gen_seed = gen.seed(), gen_offset = gen.offset();
  const Device device = module_device(model);
  const bool was_training = model.is_training();
  model.train();
  NoGradGuard no_grad;
  loader.start_epoch(epoch);
  data::Batch b;
  int64_t used = 0;
  while (used < batches && loader.next(b)) {
    // Momentum 1/(k+1) at the k-th batch makes the running value the mean of the k+1 seen.
    for (nn::BatchNorm2d* bn : norms) bn->momentum = 1.0 / static_cast<double>(used + 1);
    model(data::copy_batch_to_device(b, device).images);
    ++used;
  }
  for (size_t i = 0; i < norms.size(); ++i) {
    norms[i]->momentum = kept[i].momentum;
    norms[i]->num_batches_tracked.copy_(kept[i].batches_tracked);
  }
  gen.set_state(gen_seed, gen_offset);
  model.train(was_training);
  return used;
}

}  // namespace kestrel::tools
