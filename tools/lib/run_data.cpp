#include "tools/lib/run_data.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/error.h"
#include "tools/lib/datasets.h"

namespace kestrel::tools {

namespace {

bool same_folder(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::weakly_canonical(a, ec) == std::filesystem::weakly_canonical(b, ec);
}

}  // namespace

RunData run_data_beside(const std::string& checkpoint, const std::string& dataset, const std::string& data_dir,
                        bool skip_bad, double test_split) {
  KCHECK(test_split == -1.0 || (test_split >= 0 && test_split < 1), ValueError,
         "--test-split must be in [0, 1) (0: the whole folder), got ", test_split);
  RunData d;
  d.data_dir = data_dir;
  d.test_split = kDefaultTestSplit;
  d.split_guessed = true;
  d.skip_bad = skip_bad;
  const nlohmann::json cfg = training_config_beside(checkpoint);
  if (cfg.is_object() && cfg.value("dataset", "") == dataset) {
    const std::string run_dir = cfg.value("data_dir", "");
    const bool runs_folder = d.data_dir.empty() || same_folder(d.data_dir, run_dir);
    if (d.data_dir.empty()) d.data_dir = run_dir;
    d.test_split = runs_folder ? cfg.value("test_split", kDefaultTestSplit) : 0.0;
    d.split_guessed = false;
    d.skip_bad = d.skip_bad || cfg.value("skip_bad", false);
  }
  if (test_split != -1.0) {
    d.test_split = test_split;
    d.split_guessed = false;
  }
  d.data_dir = data_dir_or_default(dataset, d.data_dir);
  return d;
}

void check_data_fits_model(const data::Dataset& ds, const ModelInfo& info, const std::string& checkpoint,
                           const std::string& command, const std::string& dataset, const std::string& data_dir) {
  const std::vector<std::string>& data_classes = ds.classes();
  KCHECK(ds.num_classes() <= info.num_classes, ValueError, command, ": ", dataset, " at ", data_dir, " has ",
         ds.num_classes(), " classes but the model in ", checkpoint, " has ", info.num_classes,
         " outputs; pass the --dataset/--data-dir it was trained on");
  if (info.classes.empty()) return;
  for (size_t k = 0; k < data_classes.size(); ++k) {
    KCHECK(k < info.classes.size(), ValueError, command, ": ", dataset, " at ", data_dir, " has class '",
           data_classes[k], "' (class ", k, ") but the checkpoint ", checkpoint, " names only ", info.classes.size(),
           " classes; pass the --dataset/--data-dir it was trained on");
    KCHECK(data_classes[k] == info.classes[k], ValueError, command, ": class ", k, " of ", dataset, " at ", data_dir,
           " is '", data_classes[k], "' but the checkpoint's class ", k, " is '", info.classes[k],
           "' (the classes must be the same, in the same order); pass the --dataset/--data-dir it was trained on");
  }
}

}  // namespace kestrel::tools
