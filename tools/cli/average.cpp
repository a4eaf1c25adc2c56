// kestrel average: one checkpoint holding the mean of several, as timm's
// avg_checkpoints.py: a run folder's kept best epochs (train --checkpoint-hist)
// or checkpoints named one by one.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "tools/lib/checkpoint_average.h"
#include "tools/lib/checkpoint_history.h"

namespace kestrel::cli {

namespace {

struct AverageArgs {
  std::vector<std::string> inputs;
  int64_t top = 0;
  std::string out;
  bool overwrite = false;
};

void run_average(const AverageArgs& a) {
  namespace fs = std::filesystem;
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

  const tools::AveragedModel averaged = tools::average_checkpoints(paths);
  nlohmann::json sources = nlohmann::json::array();
  for (const std::string& p : paths) sources.push_back(fs::path(p).filename().string());
  tools::save_checkpoint(out, *averaged.model, averaged.info, {}, {{"kestrel.averaged_from", sources.dump()}});
  std::string names;
  for (const auto& s : sources) names += (names.empty() ? "" : ", ") + s.get<std::string>();
  std::printf("averaged %zu checkpoints of %s (%s) into %s; kestrel eval -c %s measures it\n", paths.size(),
              averaged.info.model.c_str(), names.c_str(), out.c_str(), out.c_str());
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
  cmd->callback([a] { run_average(*a); });
}

}  // namespace kestrel::cli
