// kestrel eval: a checkpoint measured on its test set; prints the Markdown
// report and writes report.json, report.md, confusion.csv and confusion.png.
// Several checkpoints are measured one after another, each report beside its
// checkpoint, and printed side by side as kestrel table does.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/error.h"
#include "tools/lib/report.h"
#include "tools/lib/results_table.h"

namespace kestrel::cli {

namespace {

// Writes the report and says where; returns its folder.
std::string evaluate_one(const tools::EvalOptions& o, bool print_report) {
  const tools::EvalReport r = tools::run_eval(o);
  const std::string dir = o.out.empty() ? tools::default_report_dir(o) : o.out;
  tools::write_report(r, dir);
  if (print_report) std::cout << tools::report_markdown(r);
  if (tools::latency_unsteady(r))
    std::cerr << "warning: batch-1 latency was unsteady (median " << r.latency_median_ms << " ms, p95 "
              << r.latency_p95_ms << " ms); on a busy machine try OMP_NUM_THREADS=1 or a quieter moment\n";
  std::cerr << "report written to " << dir << "/ (report.json, report.md, confusion.csv, confusion.png)\n";
  return dir;
}

void run_evals(tools::EvalOptions o, const std::vector<std::string>& checkpoints) {
  KCHECK(checkpoints.size() == 1 || o.out.empty(), ValueError, "eval: --out names one report folder; with ",
         checkpoints.size(), " checkpoints leave it out (each report goes beside its checkpoint)");
  std::set<std::filesystem::path> dirs;  // by their canonical paths: run/x and ./run/x are one
  for (const std::string& c : checkpoints) {
    o.checkpoint = c;
    const std::string dir = tools::default_report_dir(o);
    KCHECK(dirs.insert(std::filesystem::weakly_canonical(dir)).second, ValueError, "eval: ", c,
           " is given twice (or two checkpoints would share the report folder ", dir, ")");
  }
  if (checkpoints.size() == 1) {
    o.checkpoint = checkpoints[0];
    evaluate_one(o, true);
    return;
  }
  std::vector<tools::ResultsRow> rows;
  for (const std::string& c : checkpoints) {
    o.checkpoint = c;
    rows.push_back(tools::read_results_row(evaluate_one(o, false)));
  }
  std::cout << tools::results_table_markdown(rows);
}

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<tools::EvalOptions>();
  auto no_progress = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("eval", "Measure a checkpoint: accuracy, per-class metrics, confusion, speed");
  auto checkpoints = std::make_shared<std::vector<std::string>>();
  cmd->add_option("--checkpoint,-c", *checkpoints,
                  "model checkpoint (.safetensors from kestrel train); several are measured in turn and compared in "
                  "one table")
      ->required();
  cmd->add_option("--dataset", o->dataset, "cifar10, cifar100 (cifar100-coarse: its 20 superclasses), fashion-mnist, mnist or folder (default: the checkpoint's)");
  cmd->add_option("--data-dir", o->data_dir, "data location (default: the training run's, else the standard place)");
  cmd->add_option("--batch-size,-b", o->batch_size, "batch size of the accuracy pass and the throughput measurement")
      ->capture_default_str();
  cmd->add_flag("--tta", o->tta, "test-time augmentation: average over each image and its mirror");
  cmd->add_option("--tta-shift", o->tta_shift,
                  "test-time augmentation: also average over four views shifted by +-N pixels (black borders, "
                  "as a padded crop), each mirrored too with --tta");
  cmd->add_option("--crop-pct", o->crop_pct,
                  "read the centre crop_pct of each image (scaled to cover the size / crop_pct, aspect kept, as "
                  "timm); 1 = the whole image resized (default: the checkpoint's, from kestrel train --crop-pct)");
  cmd->add_option("--out,-o", o->out, "report folder (default: beside the checkpoint, eval/ for best.safetensors on the "
                  "run's test set, else e.g. eval-last/, eval-tta/, eval-crop0.875/, eval-first1000/, eval-<data folder>/)");
  cmd->add_option("--test-split", o->test_split,
                  "a folder without train/ and test/: the fraction of each class to test on, as kestrel train "
                  "holds it out; 0 = every image (default: the run's split of its own folder, all of another; "
                  "with no run beside the checkpoint, train's default 0.1)");
  cmd->add_option("--limit", o->limit, "use only N test images (the first; an image folder's spread over its classes; 0: all)");
  cmd->add_option("--latency-iters", o->latency_iters, "timed batch-1 forward passes after warm-up; 0 skips timing")
      ->capture_default_str();
  cmd->add_flag("--cuda-graph", o->cuda_graph, "time latency and throughput as CUDA graph replays (CUDA devices)");
  cmd->add_flag("--skip-bad", o->skip_bad, "warn about and skip unreadable images (on by itself when the "
                                          "training run used it)");
  cmd->add_option("--workers", o->workers, "data loader threads")->capture_default_str();
  cmd->add_option("--device", o->device, "auto, cpu, cuda or cuda:N (auto: cuda when a GPU is usable)")
      ->capture_default_str();
  cmd->add_flag("--no-progress", *no_progress, "no progress bar");
  cmd->callback([o, no_progress, checkpoints] {
    o->progress = !*no_progress;
    run_evals(*o, *checkpoints);
  });
}

}  // namespace kestrel::cli
