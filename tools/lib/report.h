// `kestrel eval`: a checkpoint measured on a test set (accuracy, per-class
// metrics, confusion, latency, throughput), written as report.json, report.md
// (a results table like a paper's), confusion.csv and confusion.png.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kestrel::tools {

struct EvalOptions {
  std::string checkpoint;
  std::string dataset;   // empty: the checkpoint's data set
  std::string data_dir;  // empty: the training run's (config.json beside the checkpoint) or the standard place
  int64_t batch_size = 256;
  bool tta = false;          // average logits over the image and its mirror
  int64_t tta_shift = 0;     // and over four views shifted by +-N pixels (and their mirrors with tta); 0 = none
  double crop_pct = -1.0;    // centre crop (data::resize_center_crop) for the checkpoint's; -1: the checkpoint's
  std::string out;           // empty: default_report_dir(*this)
  int64_t limit = 0;         // first N test images (0 = all)
  // A folder without train/ and test/: the fraction of each class to test on
  // (0: all of it); -1: as run_data_beside decides (tools/lib/run_data.h).
  double test_split = -1.0;
  bool skip_bad = false;     // skip unreadable images with a warning (also when the training run did)
  int64_t latency_iters = 50;  // timed batch-1 forward passes (after warm-up)
  bool cuda_graph = false;     // time CUDA passes as CUDA graph replays (engine/nn/graphed_forward.h)
  int workers = 2;
  bool progress = true;
  std::string device = "auto";  // auto, cpu, cuda, cuda:N (tools/lib/device_select.h)
};

struct EvalReport {
  // what was measured
  std::string checkpoint, model, dataset, data_dir, device = "cpu";
  int64_t parameters = 0;
  int64_t input_height = 0, input_width = 0, input_channels = 0;
  double crop_pct = 1.0;   // the centre crop read (1: the whole image resized)
  int64_t images = 0;
  int64_t limit = 0;       // --limit: the first N test images only (0: all)
  bool quantized = false;  // an int8 checkpoint (kestrel qat), run as simulated (fake-quantized) int8
  int64_t skipped = 0;     // unreadable test images left out (--skip-bad)
  bool tta = false;        // any test-time augmentation
  bool tta_flip = false;
  int64_t tta_shift = 0;
  int64_t tta_views = 1;   // views averaged per image
  int threads = 1;
  std::vector<std::string> classes;
  // accuracy
  double loss = 0, top1 = 0, top5 = 0, macro_precision = 0, macro_recall = 0, macro_f1 = 0;
  int64_t macro_classes = 0;  // the macro averages' classes: those in the labels or the predictions
  std::vector<double> per_class_accuracy, precision, recall, f1;
  std::vector<int64_t> support;
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
  // speed
  double latency_median_ms = 0, latency_p95_ms = 0, latency_mean_ms = 0;
  int64_t latency_iters = 0;
  bool cuda_graph = false;        // latency and throughput timed as CUDA graph replays
  int64_t throughput_batch = 0;
  double throughput = 0;          // images/s of forward passes at throughput_batch
  double eval_seconds = 0;        // the whole accuracy pass, data loading included
};

// Loads the checkpoint and data, runs the accuracy pass, then times batch 1 and
// batch `batch_size` forward passes. Throws Error subclasses with one-line messages.
EvalReport run_eval(const EvalOptions& options);

nlohmann::json report_json(const EvalReport& r);
// p95 over 3x the median: other work on the machine (or OpenMP threads
// waiting on busy cores) took turns with the timed passes.
bool latency_unsteady(const EvalReport& r);
std::string report_markdown(const EvalReport& r);
std::string confusion_csv(const EvalReport& r);
// Beside the checkpoint: eval/ for the whole test set scored by best.safetensors
// (the folder `kestrel table` reads), else a folder naming what differs
// (eval-last, eval-tta, eval-first1000, eval-<data folder>, eval-split0), so one
// evaluation never replaces another.
std::string default_report_dir(const EvalOptions& o);
// report.json, report.md, confusion.csv, confusion.png in dir (created if needed).
void write_report(const EvalReport& r, const std::string& dir);
// User text (a class, run or model name) as a Markdown table cell: | escaped, no line breaks.
std::string markdown_cell(const std::string& text);
// How a report names a model output the checkpoint has no class name for: "class 9 (unnamed)".
std::string unnamed_class_name(int64_t index);
// "150.3K", "5.29M"
std::string format_count(int64_t n);
// One number, printf-style: format_number("%.2f", x).
std::string format_number(const char* format, double v);
// 0.9367 -> "93.67"
std::string format_percent(double fraction);

}  // namespace kestrel::tools
