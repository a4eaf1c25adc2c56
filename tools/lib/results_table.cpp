#include "tools/lib/results_table.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/io/safetensors.h"
#include "engine/text.h"
#include "models/summary.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/report.h"

namespace kestrel::tools {

namespace fs = std::filesystem;

namespace {

// "0.39G", "41.2M": multiply-adds as papers print FLOPs.
std::string format_macs(int64_t n) {
  if (n >= 1000000000) return format_number("%.2fG", static_cast<double>(n) / 1e9);
  return format_number("%.1fM", static_cast<double>(n) / 1e6);
}

std::string format_duration(double seconds) {
  if (seconds < 0) return "-";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char b[32];
  if (s >= 3600)
    std::snprintf(b, sizeof(b), "%lldh %02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else
    std::snprintf(b, sizeof(b), "%lldm %02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return b;
}

nlohmann::json read_json(const fs::path& p, const std::string& what) {
  std::ifstream in(p);
  KCHECK(in.good(), IOError, "table: cannot read ", what, " ", p.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw IOError(detail::concat("table: ", p.string(), " is not valid JSON (", e.what(), ")"));
  }
}

fs::path find_report(const std::string& path) {
  const fs::path p(path);
  KCHECK(fs::exists(p), IOError, "table: ", path, ": no such file or folder");
  if (fs::is_regular_file(p)) return p;
  for (const fs::path& candidate : {p / "report.json", p / "eval" / "report.json"})
    if (fs::is_regular_file(candidate)) return candidate;
  // Reports of another checkpoint or part of the test set (eval-last/, eval-first1000/) are named, not guessed.
  std::vector<std::string> others;
  for (const auto& e : fs::directory_iterator(p))
    if (e.path().filename().string().rfind("eval-", 0) == 0 && fs::is_regular_file(e.path() / "report.json"))
      others.push_back(e.path().string());
  std::sort(others.begin(), others.end());
  std::string hint = " (run kestrel eval --checkpoint " + path + "/best.safetensors first)";
  if (!others.empty()) {
    hint = " (its other reports: " + join(others, ", ") + "; name one, or run kestrel eval --checkpoint " + path +
           "/best.safetensors)";
  }
  throw IOError(detail::concat("table: no eval report in ", path, hint));
}

// Epoch count and summed epoch times from the training state beside the checkpoint.
void read_training_state(const fs::path& run_dir, ResultsRow& row) {
  const fs::path state = run_dir / "state.json";
  if (!fs::is_regular_file(state)) return;
  const nlohmann::json j = read_json(state, "training state");
  if (!j.contains("history") || !j["history"].is_array()) return;
  row.epochs = static_cast<int64_t>(j["history"].size());
  row.train_seconds = 0;
  for (const auto& h : j["history"]) row.train_seconds += h.value("epoch_seconds", 0.0);
}

// Multiply-adds of the checkpoint's model at its input size (weights are not needed).
void read_model_cost(const fs::path& checkpoint, ResultsRow& row) {
  const ModelInfo info = ModelInfo::from_metadata(io::load_safetensors_metadata(checkpoint.string()),
                                                  checkpoint.string());
  row.width_mult = info.width_mult;
  // An int8 run does its float model's multiply-adds; built fresh, its
  // quantizers would be uncalibrated and refuse to run.
  ModelInfo float_info = info;
  float_info.quantized = false;
  nn::ModulePtr model = build_from_info(float_info);
  model->eval();
  NoGradGuard guard;
  row.macs = models::summarize(*model, {1, info.height, info.width, info.in_channels}).total_macs;
}

}  // namespace

ResultsRow read_results_row(const std::string& path) {
  const fs::path report_path = find_report(path);
  const nlohmann::json r = read_json(report_path, "eval report");
  ResultsRow row;
  row.report = fs::weakly_canonical(report_path).string();
  try {
    row.model = r.at("model").get<std::string>();
    row.dataset = r.at("dataset").get<std::string>();
    row.device = r.at("device").get<std::string>();
    row.parameters = r.at("parameters").get<int64_t>();
    row.input_height = r.at("input").at(0).get<int64_t>();
    row.input_width = r.at("input").at(1).get<int64_t>();
    row.images = r.at("images").get<int64_t>();
    row.tta = r.at("tta").get<bool>();
    row.limited = r.value("limit", 0) > 0;
    row.quantized = r.value("quantized", false);
    row.top1 = r.at("top1").get<double>();
    row.top5 = r.at("top5").get<double>();
    row.macro_f1 = r.at("macro_f1").get<double>();
    // null: not measured (eval --latency-iters 0), which the rows hold as 0.
    const auto measured = [](const nlohmann::json& v) { return v.is_null() ? 0.0 : v.get<double>(); };
    row.latency_median_ms = measured(r.at("latency_ms").at("median"));
    row.throughput_batch = r.at("throughput").at("batch").get<int64_t>();
    row.throughput = measured(r.at("throughput").at("images_per_second"));
  } catch (const nlohmann::json::exception& e) {
    throw IOError(
        detail::concat("table: ", report_path.string(), " is not a kestrel eval report (", e.what(), ")"));
  }
  fs::path checkpoint = r.value("checkpoint", std::string());
  // A relative path was relative to eval's working folder; the run folder around eval/ holds it too.
  const fs::path beside = report_path.parent_path().parent_path() / checkpoint.filename();
  if (!fs::is_regular_file(checkpoint) && fs::is_regular_file(beside)) checkpoint = beside;
  const fs::path run_dir = checkpoint.parent_path();
  row.run = run_dir.filename().string();
  if (row.run.empty()) row.run = row.model;
  if (checkpoint.stem() != "best") row.run += "/" + checkpoint.stem().string();  // another of the run's checkpoints
  KCHECK(fs::is_regular_file(checkpoint), IOError, "table: the checkpoint ", checkpoint.string(), " that ",
         report_path.string(), " names is gone (its multiply-adds need the model)");
  read_model_cost(checkpoint, row);
  read_training_state(run_dir, row);
  return row;
}

std::string results_table_markdown(const std::vector<ResultsRow>& rows) {
  std::string md =
      "| Run | Model | Input | Params | MACs | Data | Epochs | Top-1 (%) | Top-5 (%) | Macro F1 (%) | "
      "Latency b=1 (ms) | Throughput (img/s) | Device | Train time |\n"
      "|:--|:--|--:|--:|--:|:--|--:|--:|--:|--:|--:|--:|:--|--:|\n";
  for (const ResultsRow& r : rows) {
    std::string model = r.model;
    if (r.width_mult != 1.0) model += " x" + format_number("%g", r.width_mult);
    if (r.quantized) model += " int8";
    std::string data = markdown_cell(r.dataset);
    if (r.tta) data += " (TTA)";
    if (r.limited) data += " (first " + std::to_string(r.images) + ")";
    const std::string throughput =
        r.throughput > 0 ? format_number("%.0f", r.throughput) + " (b=" + std::to_string(r.throughput_batch) + ")"
                         : "-";
    const std::vector<std::string> cells = {
        markdown_cell(r.run),
        markdown_cell(model),
        std::to_string(r.input_height) + "x" + std::to_string(r.input_width),
        format_count(r.parameters),
        format_macs(r.macs),
        data,
        r.epochs < 0 ? "-" : std::to_string(r.epochs),
        format_percent(r.top1),
        format_percent(r.top5),
        format_percent(r.macro_f1),
        r.latency_median_ms > 0 ? format_number("%.2f", r.latency_median_ms) : "-",
        throughput,
        markdown_cell(r.device),
        format_duration(r.train_seconds)};
    for (const std::string& cell : cells) md += "| " + cell + " ";
    md += "|\n";
  }
  return md;
}

std::string results_table_csv(const std::vector<ResultsRow>& rows) {
  // top1/top5/macro_f1 as fractions; an empty cell where nothing was measured.
  std::string csv =
      "run,model,width_mult,input_height,input_width,parameters,macs,dataset,tta,test_images,epochs,top1,top5,macro_f1,"
      "latency_median_ms,throughput_batch,throughput,device,train_seconds,quantized,limited\n";
  const auto or_empty = [](bool known, const std::string& text) { return known ? text : std::string(); };
  for (const ResultsRow& r : rows) {
    const std::vector<std::string> cells = {
        r.run,
        r.model,
        format_number("%g", r.width_mult),
        std::to_string(r.input_height),
        std::to_string(r.input_width),
        std::to_string(r.parameters),
        std::to_string(r.macs),
        r.dataset,
        r.tta ? "1" : "0",
        std::to_string(r.images),
        or_empty(r.epochs >= 0, std::to_string(r.epochs)),
        format_number("%.6f", r.top1),
        format_number("%.6f", r.top5),
        format_number("%.6f", r.macro_f1),
        or_empty(r.latency_median_ms > 0, format_number("%.4f", r.latency_median_ms)),
        std::to_string(r.throughput_batch),
        or_empty(r.throughput > 0, format_number("%.1f", r.throughput)),
        r.device,
        or_empty(r.train_seconds >= 0, format_number("%.1f", r.train_seconds)),
        r.quantized ? "1" : "0",
        r.limited ? "1" : "0"};
    csv += join(cells, ",") + "\n";
  }
  return csv;
}

}  // namespace kestrel::tools
