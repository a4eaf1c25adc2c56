#include "tools/lib/checkpoint_average.h"

#include <algorithm>

namespace kestrel::tools {

namespace {

std::string describe(const ModelInfo& i) {
  return detail::concat(i.model, " (width ", i.width_mult, ", depth ", i.depth_mult, ", ", i.num_classes, " classes, ",
                        i.in_channels, "x", i.height, "x", i.width, " input", i.cifar_stem ? ", CIFAR stem" : "", ")");
}

void check_same_model(const ModelInfo& first, const std::string& first_path, const ModelInfo& other,
                      const std::string& other_path) {
  KCHECK(describe(first) == describe(other), ValueError, "average: ", other_path, " is ", describe(other), " but ",
         first_path, " is ", describe(first));
  KCHECK(first.to_metadata() == other.to_metadata(), ValueError, "average: ", other_path, " and ", first_path,
         " were trained on other data (their classes, normalization or evaluation crop differ)");
}

}  // namespace

AveragedModel average_checkpoints(const std::vector<std::string>& paths) {
  KCHECK(paths.size() >= 2, ValueError, "average: needs at least two checkpoints, got ", paths.size());
  AveragedModel out;
  std::vector<std::vector<double>> sums;  // per tensor of the first checkpoint's state, in its order
  std::vector<std::vector<int64_t>> largest;  // integer buffers
  for (size_t k = 0; k < paths.size(); ++k) {
    const LoadedModel loaded = load_checkpoint(paths[k]);  // strict: same tensor names and shapes as its model
    KCHECK(!loaded.info.quantized, ValueError, "average: ", paths[k], " is an int8 (qat) checkpoint; average the "
           "float checkpoints, then quantize the average with kestrel qat");
    const nn::NamedTensors state = loaded.model->state_dict();
    if (k == 0) {
      out.model = loaded.model;
      out.info = loaded.info;
      for (const auto& [name, t] : state) {
        sums.push_back(is_floating(t.dtype()) ? t.to_vector_f64() : std::vector<double>{});
        largest.push_back(is_floating(t.dtype()) ? std::vector<int64_t>{} : t.to_vector_i64());
      }
      continue;
    }
    check_same_model(out.info, paths[0], loaded.info, paths[k]);
    for (size_t n = 0; n < state.size(); ++n) {
      const Tensor& t = state[n].second;
      if (is_floating(t.dtype())) {
        const std::vector<double> v = t.to_vector_f64();
        for (size_t i = 0; i < v.size(); ++i) sums[n][i] += v[i];
      } else {
        const std::vector<int64_t> v = t.to_vector_i64();
        for (size_t i = 0; i < v.size(); ++i) largest[n][i] = std::max(largest[n][i], v[i]);
      }
    }
  }
  nn::NamedTensors averaged;
  const nn::NamedTensors first = out.model->state_dict();
  for (size_t n = 0; n < first.size(); ++n) {
    const auto& [name, t] = first[n];
    if (is_floating(t.dtype())) {
      for (double& s : sums[n]) s /= static_cast<double>(paths.size());
      averaged.emplace_back(name, Tensor::from_vector_f64(sums[n], t.shape()).to(t.dtype()));
    } else {
      averaged.emplace_back(name, Tensor::from_vector_i64(largest[n], t.shape()).to(t.dtype()));
    }
  }
  out.model->load_state_dict(averaged, true);
  return out;
}

}  // namespace kestrel::tools
