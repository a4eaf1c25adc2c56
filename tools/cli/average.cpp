// kestrel average: one checkpoint holding the mean of several, as timm's
// avg_checkpoints.py: a run folder's kept best epochs (train --checkpoint-hist)
// or checkpoints named one by one.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "engine/text.h"
#include "tools/lib/checkpoint_average.h"
#include "tools/lib/checkpoint_history.h"
#include "tools/lib/datasets.h"
#include "tools/lib/device_select.h"
#include "tools/lib/precise_bn.h"
#include "tools/lib/run_data.h"

namespace kestrel::cli {

namespace {

struct AverageArgs {
  std::vector<std::string> inputs;
  int64_t top = 0;
  std::string out;
  bool overwrite = false;
  int64_t precise_bn = 0;
  std::string data_dir;
  int64_t batch_size = -1;  // -1: the run's
  std::string device = "auto";
};

// --precise-bn: the mean of several weights is none of them, nor is the mean
// of their batch-norm statistics what the mean weights would see; N batches
// of the run's training images, read as evaluation reads them, give their own.
int64_t recompute_statistics(const AverageArgs& a, const std::string& checkpoint, Device device,
                             tools::AveragedModel& averaged) {
  const tools::ModelInfo& info = averaged.info;
  KCHECK(tools::has_batch_norm_to_recompute(*averaged.model), ValueError, "average: --precise-bn: ", info.model,
         " has no batch norms to recompute");
  KCHECK(!info.dataset.empty(), ValueError, "average: ", checkpoint, " does not record its data set, so --precise-bn "
         "cannot read its training images");
  const tools::RunData data = tools::run_data_beside(checkpoint, info.dataset, a.data_dir, false);
  if (!data.note.empty()) std::fprintf(stderr, "note: %s\n", data.note.c_str());
  auto train_set = tools::open_dataset(info.dataset, data.data_dir, data::Split::Train, data.skip_bad, 0,
                                       data.test_split);
  tools::check_data_fits_model(*train_set, info, checkpoint, "average", info.dataset, data.data_dir,
                               "pass the --data-dir it was trained on");
  const nlohmann::json run = tools::training_config_beside(checkpoint);
  data::LoaderOptions lo;
  if (a.batch_size != -1)
    lo.batch_size = a.batch_size;
  else if (run.is_object())
    lo.batch_size = run.value("batch_size", lo.batch_size);
  lo.drop_last = true;  // a short last batch gives noisy statistics, as in training
  constexpr uint64_t kAveragePreciseBnTag = 0x41504EULL;  // "APN"
  lo.seed = data::derive_seed(run.is_object() ? run.value("seed", uint64_t{0}) : 0, kAveragePreciseBnTag);
  KCHECK(train_set->size() >= lo.batch_size, ValueError, "average: --precise-bn needs a full batch of ",
         lo.batch_size, " images, but ", info.dataset, " at ", data.data_dir, " has ", train_set->size(),
         " training images; give a smaller --batch-size");
  data::DataLoader loader(train_set, lo,
                          tools::eval_transform(static_cast<int>(info.height), static_cast<int>(info.width),
                                                {info.mean, info.std}, info.crop_fraction));
  if (!device.is_cpu()) averaged.model->to(device);
  std::fprintf(stderr, "recomputing batch-norm statistics over %lld batches of %lld %s training images on %s\n",
               static_cast<long long>(std::min(a.precise_bn, loader.num_batches())),
               static_cast<long long>(lo.batch_size), info.dataset.c_str(), device.str().c_str());
  return tools::recompute_batch_norm_statistics(*averaged.model, loader, 0, a.precise_bn);
}

void run_average(const AverageArgs& a) {
  namespace fs = std::filesystem;
  KCHECK(a.precise_bn >= 0, ValueError, "average: --precise-bn must be >= 0 (0: off), got ", a.precise_bn);
  KCHECK(a.batch_size == -1 || a.batch_size >= 1, ValueError, "average: --batch-size must be >= 1, got ",
         a.batch_size);
  KCHECK(a.precise_bn > 0 || (a.data_dir.empty() && a.batch_size == -1 && a.device == "auto"), ValueError,
         "average: --data-dir, --batch-size and --device serve --precise-bn; add --precise-bn N");
  const bool from_run = a.inputs.size() == 1 && fs::is_directory(a.inputs[0]);
  KCHECK(from_run || a.top == 0, ValueError, "average: --top picks from a run folder's kept checkpoints; give one "
         "run folder, or drop --top");
  if (!from_run)
    for (const std::string& p : a.inputs) tools::check_checkpoint_path(p);  // a missing file, a folder among many
  KCHECK(from_run || a.inputs.size() >= 2, ValueError, "average: needs a run folder or at least two checkpoints, "
         "got one checkpoint (", a.inputs[0], ")");
  const std::vector<std::string> paths = from_run ? tools::kept_checkpoint_paths(a.inputs[0], a.top) : a.inputs;
  const fs::path beside = from_run ? fs::path(a.inputs[0]) : fs::path(paths[0]).parent_path();
  const std::string out = a.out.empty() ? (beside / "average.safetensors").string() : a.out;
  KCHECK(!fs::is_directory(out), IOError, "average: ", out, " is a folder; give -o a file path (e.g. ",
         (fs::path(out) / "average.safetensors").string(), ")");
  for (const std::string& p : paths) {
    std::error_code not_there;
    KCHECK(!fs::equivalent(out, p, not_there), IOError, "average: ", out, " is one of the checkpoints averaged; give "
           "another -o");
  }
  KCHECK(a.overwrite || !fs::exists(out), IOError, "average: ", out, " exists; pass --overwrite to replace it");
  io::check_folder_of(out, "average");

  const Device device = a.precise_bn > 0 ? tools::resolve_device(a.device) : Device::cpu();
  tools::AveragedModel averaged = tools::average_checkpoints(paths);
  const int64_t precise_batches = a.precise_bn > 0 ? recompute_statistics(a, paths[0], device, averaged) : 0;
  nlohmann::json sources = nlohmann::json::array();
  for (const std::string& p : paths) sources.push_back(fs::path(p).filename().string());
  io::Metadata metadata = {{"kestrel.averaged_from", sources.dump()}};
  if (precise_batches > 0) metadata["kestrel.precise_bn_batches"] = std::to_string(precise_batches);
  tools::save_checkpoint(out, *averaged.model, averaged.info, {}, metadata);
  const std::string names = join(sources, ", ", [](const nlohmann::json& s) { return s.get<std::string>(); });
  const std::string statistics =
      precise_batches > 0 ? "; batch-norm statistics from " + std::to_string(precise_batches) + " training batches"
                          : "";
  std::printf("averaged %zu checkpoints of %s (%s) into %s%s; kestrel eval -c %s measures it\n", paths.size(),
              averaged.info.model.c_str(), names.c_str(), out.c_str(), statistics.c_str(), out.c_str());
}

}  // namespace

void register_average(CLI::App& app) {
  auto a = std::make_shared<AverageArgs>();
  CLI::App* cmd = app.add_subcommand("average", "Average checkpoints of one model into one (a run's best epochs)");
  cmd->add_option("inputs", a->inputs,
                  "a run folder (its epochs kept by train --checkpoint-hist, best first) or two or more checkpoints")
      ->required();
  cmd->add_option("--top", a->top, "from a run folder: average its N best kept epochs (default: all it kept)");
  cmd->add_option("--out,-o", a->out, "the averaged checkpoint (default: average.safetensors in the run folder, "
                  "or beside the first checkpoint)");
  cmd->add_flag("--overwrite", a->overwrite, "replace an existing file");
  cmd->add_option("--precise-bn", a->precise_bn,
                  "recompute the average's batch-norm statistics over N batches of the run's training images "
                  "(default 0: keep the mean of the checkpoints' statistics, as timm)");
  cmd->add_option("--data-dir", a->data_dir, "with --precise-bn: the training data (default: the run's)");
  cmd->add_option("--batch-size,-b", a->batch_size,
                  "with --precise-bn: images a batch (default: the run's; a data-parallel run's is the whole step's, "
                  "shared among its processes)");
  cmd->add_option("--device", a->device, "with --precise-bn: auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([a] { run_average(*a); });
}

}  // namespace kestrel::cli
