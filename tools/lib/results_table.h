// `kestrel table`: the eval reports of several runs as one results table, the
// shape of the seed projects' tables (model, size, cost, accuracy, speed), so
// a scripted sweep (tools/reproduce.sh) ends in the table it reproduces.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kestrel::tools {

struct ResultsRow {
  std::string run;  // the run folder's name, then "/<stem>" for a checkpoint other than best.safetensors
  std::string report;  // the report.json read, as a canonical path
  std::string model, dataset, device;
  double width_mult = 1.0;
  int64_t parameters = 0;
  int64_t macs = 0;  // multiply-adds of one forward at the model's input size
  int64_t input_height = 0, input_width = 0;
  int64_t epochs = -1;          // from the run's state.json; -1 when it has none
  double train_seconds = -1.0;  // summed epoch times (validation included)
  int64_t images = 0;           // test images evaluated
  bool limited = false;         // eval --limit: a part of the test set
  bool quantized = false;       // an int8 checkpoint, simulated
  bool tta = false;
  double top1 = 0, top5 = 0, macro_f1 = 0;
  double latency_median_ms = 0;
  int64_t throughput_batch = 0;
  double throughput = 0;
};

// `path`: a report.json, a folder holding one (kestrel eval's output), or a
// run folder holding eval/report.json. The checkpoint the report names gives
// the model (for its multiply-adds) and, beside it, state.json the training
// epochs and time. Throws IOError naming the path when there is no report.
ResultsRow read_results_row(const std::string& path);

std::string results_table_markdown(const std::vector<ResultsRow>& rows);
std::string results_table_csv(const std::vector<ResultsRow>& rows);

}  // namespace kestrel::tools
