#include "tools/lib/run_data.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "data/readers.h"
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
  d.skip_bad = skip_bad;
  const nlohmann::json cfg = training_config_beside(checkpoint);
  const bool run_beside = cfg.is_object();
  const bool same_data = run_beside && cfg.value("dataset", "") == dataset;
  const std::string run_dir = same_data ? cfg.value("data_dir", "") : "";
  const double run_split = same_data ? cfg.value("test_split", kDefaultTestSplit) : kDefaultTestSplit;
  const bool runs_folder = same_data && (d.data_dir.empty() || same_folder(d.data_dir, run_dir));
  if (same_data) {
    if (d.data_dir.empty()) d.data_dir = run_dir;
    d.skip_bad = d.skip_bad || cfg.value("skip_bad", false);
  }
  if (runs_folder) d.test_split = run_split;
  else if (run_beside) d.test_split = 0.0;  // images the run never read: all of them
  d.data_dir = data_dir_or_default(dataset, d.data_dir);
  KCHECK(!d.data_dir.empty(), ValueError, checkpoint, " was trained on an image folder, and no run config.json "
         "beside it names the folder; pass --data-dir");

  // The split only applies to a folder without train/ and test/; say how it was chosen when it may surprise.
  const bool flat_folder = dataset == "folder" && std::filesystem::is_directory(d.data_dir) &&
                           !data::image_folder_has_split(d.data_dir);
  const bool missing = !std::filesystem::exists(d.data_dir);  // named when it is opened
  KCHECK(test_split == -1.0 || flat_folder || (dataset == "folder" && missing), ValueError, "--test-split splits an image folder without "
         "train/ and test/; ", dataset, " at ", d.data_dir, " has its own test set");
  if (test_split != -1.0) {
    d.test_split = test_split;
  } else if (flat_folder && !run_beside) {
    d.note = detail::concat("no training run beside ", checkpoint, " says how ", d.data_dir, " was split: split as "
                            "kestrel train splits it, ", 100 * d.test_split, "% of each class held out for "
                            "testing (--test-split 0: all of it)");
  } else if (flat_folder && !same_data) {
    d.note = detail::concat("the run beside ", checkpoint, " trained on ", cfg.value("dataset", "other data"),
                            ", so all of ", d.data_dir, " is read");
  } else if (flat_folder && !runs_folder) {
    d.note = detail::concat(d.data_dir, " is not the folder the run beside ", checkpoint, " trained on (", run_dir,
                            "), so all of it is read; if it is a copy, --test-split ", run_split,
                            " takes the run's split");
  }
  return d;
}

void check_data_fits_model(const data::Dataset& ds, const ModelInfo& info, const std::string& checkpoint,
                           const std::string& command, const std::string& dataset, const std::string& data_dir,
                           const std::string& remedy) {
  const std::vector<std::string>& data_classes = ds.classes();
  KCHECK(ds.num_classes() <= info.num_classes, ValueError, command, ": ", dataset, " at ", data_dir, " has ",
         ds.num_classes(), " classes but the model in ", checkpoint, " has ", info.num_classes,
         " outputs; ", remedy);
  if (info.classes.empty()) return;
  for (size_t k = 0; k < data_classes.size(); ++k) {
    KCHECK(k < info.classes.size(), ValueError, command, ": ", dataset, " at ", data_dir, " has class '",
           data_classes[k], "' (class ", k, ") but the checkpoint ", checkpoint, " names only ", info.classes.size(),
           " classes; ", remedy);
    KCHECK(data_classes[k] == info.classes[k], ValueError, command, ": class ", k, " of ", dataset, " at ", data_dir,
           " is '", data_classes[k], "' but the checkpoint's class ", k, " is '", info.classes[k],
           "' (the classes must be the same, in the same order); ", remedy);
  }
}

}  // namespace kestrel::tools
