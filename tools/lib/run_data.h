// The data a checkpoint was trained on, from its run's config.json: eval and
// average read the same folder, split the same way, as the run did.
#pragma once
#include <string>

#include "data/dataset.h"
#include "tools/lib/checkpoint.h"

namespace kestrel::tools {

struct RunData {
  std::string data_dir;     // the folder to read (the data set's standard place when neither side names one)
  // A folder without train/ and test/: the fraction of each class held out
  // for testing; 0 reads all of it.
  double test_split = 0.0;
  bool skip_bad = false;  // the run skipped unreadable images, or the caller asked to
  // Why a folder without train/ and test/ is split as it is, where that may
  // surprise (no run beside the checkpoint, or a folder the run never read);
  // empty otherwise. The caller prints it.
  std::string note;
};

// `dataset`, `data_dir` and `test_split` are what the user asked for
// (data_dir may be empty, test_split -1). When the run beside `checkpoint`
// trained on `dataset`, its folder is the default, and its split holds when
// that folder is the one read; another folder, one the run never read, is
// read whole. With no run beside, a folder is split as kestrel train splits it.
// ValueError for a --test-split where there is nothing to split, or an image
// folder no one names.
RunData run_data_beside(const std::string& checkpoint, const std::string& dataset, const std::string& data_dir,
                        bool skip_bad, double test_split = -1.0);

// Labels index the model's outputs: the data's classes must be the model's
// first ones, in order. Fewer is fine: a model trained with --num-classes
// above its data's class count has unnamed outputs after them. ValueError
// names `command`, the data and the checkpoint otherwise, and ends with
// `remedy` (the flags that choose the data).
void check_data_fits_model(const data::Dataset& ds, const ModelInfo& info, const std::string& checkpoint,
                           const std::string& command, const std::string& dataset, const std::string& data_dir,
                           const std::string& remedy = "pass the --dataset/--data-dir it was trained on");

}  // namespace kestrel::tools
