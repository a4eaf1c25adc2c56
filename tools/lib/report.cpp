#include "tools/lib/report.h"

#include <omp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "engine/nn/graphed_forward.h"
#include "engine/text.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/datasets.h"
#include "tools/lib/device_select.h"
#include "tools/lib/plot.h"
#include "tools/lib/predictor.h"
#include "tools/lib/run_data.h"
#include "tools/lib/trainer.h"

namespace fs = std::filesystem;

namespace kestrel::tools {

namespace {

// A batch of n model inputs made of the test set's first images, repeated as needed.
Tensor input_batch(const data::Dataset& ds, const data::Transform& input, const ModelInfo& info, int64_t n) {
  const int64_t per = info.height * info.width * info.in_channels;
  Tensor t = Tensor::empty({n, info.height, info.width, info.in_channels});
  float* dst = t.data<float>();
  Generator unused(0);
  const int64_t distinct = std::min<int64_t>(n, ds.size());
  for (int64_t i = 0; i < distinct; ++i) {
    data::FImage f = data::to_float(ds.get(i).image);
    input(f, unused);
    std::copy_n(f.data.data(), per, dst + i * per);
  }
  for (int64_t i = distinct; i < n; ++i) std::copy_n(dst + (i % distinct) * per, per, dst + i * per);
  return t;
}

// The classes the model's outputs stand for: the checkpoint's names, then the
// data's for outputs the checkpoint does not name, then "class N (unnamed)".
std::vector<std::string> output_class_names(const ModelInfo& info, const std::vector<std::string>& data_classes) {
  std::vector<std::string> names;
  for (size_t k = 0; k < static_cast<size_t>(info.num_classes); ++k)
    names.push_back(k < info.classes.size()  ? info.classes[k]
                    : k < data_classes.size() ? data_classes[k]
                                              : unnamed_class_name(static_cast<int64_t>(k)));
  return names;
}

// "off", "on (flip)", "on (flip, 4 shifts of 2 px: 10 views)".
std::string tta_description(const EvalReport& r) {
  if (!r.tta) return "off";
  std::vector<std::string> views;
  if (r.tta_flip) views.push_back("flip");
  if (r.tta_shift > 0)
    views.push_back("4 shifts of " + std::to_string(r.tta_shift) + " px: " + std::to_string(r.tta_views) + " views");
  return "on (" + join(views, ", ") + ")";
}

}  // namespace

std::string markdown_cell(const std::string& text) {
  std::string out;
  for (char ch : text) out += ch == '|' ? std::string("\\|") : ch == '\n' ? std::string(" ") : std::string(1, ch);
  return out;
}

std::string unnamed_class_name(int64_t index) { return "class " + std::to_string(index) + " (unnamed)"; }

std::string format_number(const char* format, double v) {
  char b[64];
  std::snprintf(b, sizeof(b), format, v);
  return b;
}

std::string format_percent(double fraction) { return format_number("%.2f", 100.0 * fraction); }

std::string format_count(int64_t n) {
  if (n >= 1000000) return format_number("%.2fM", static_cast<double>(n) / 1e6);
  if (n >= 1000) return format_number("%.1fK", static_cast<double>(n) / 1e3);
  return std::to_string(n);
}

EvalReport run_eval(const EvalOptions& o) {
  KCHECK(o.batch_size >= 1, ValueError, "eval: --batch-size must be at least 1, got ", o.batch_size);
  KCHECK(o.latency_iters >= 0, ValueError, "eval: --latency-iters must be 0 or more, got ", o.latency_iters);
  KCHECK(o.limit >= 0, ValueError, "eval: --limit must be 0 or more, got ", o.limit);
  const Device device = resolve_device(o.device);
  KCHECK(!o.cuda_graph || device.is_cuda(), ValueError, "eval: --cuda-graph needs a CUDA device (it is ",
         device.str(), ")");
  Predictor predictor(o.checkpoint, device);
  if (o.crop_pct != -1.0) predictor.set_crop_fraction(o.crop_pct);
  const ModelInfo& info = predictor.info();
  nn::Module& model = predictor.model();

  EvalReport r;
  r.checkpoint = o.checkpoint;
  r.limit = o.limit;
  r.model = info.model;
  r.quantized = info.quantized;
  r.dataset = o.dataset.empty() ? info.dataset : o.dataset;
  KCHECK(!r.dataset.empty(), ValueError, "eval: ", o.checkpoint, " does not record its data set; pass --dataset");
  const RunData data = run_data_beside(o.checkpoint, r.dataset, o.data_dir, o.skip_bad, o.test_split);
  if (!data.note.empty()) std::cerr << "note: " << data.note << "\n";
  r.data_dir = data.data_dir;
  r.parameters = predictor.num_parameters();
  r.input_height = info.height;
  r.input_width = info.width;
  r.input_channels = info.in_channels;
  r.crop_pct = info.crop_fraction;
  const std::optional<data::TTAOptions> tta = tta_options(o.tta, o.tta_shift, info);
  r.tta = tta.has_value();
  r.tta_flip = o.tta;
  r.tta_shift = o.tta_shift;
  r.tta_views = tta ? data::tta_view_count(*tta) : 1;
  r.device = device.str();
  r.threads = omp_get_max_threads();

  auto test_set = open_dataset(r.dataset, r.data_dir, data::Split::Test, data.skip_bad, o.limit, data.test_split);
  r.skipped = test_set->skipped();
  check_data_fits_model(*test_set, info, o.checkpoint, "eval", r.dataset, r.data_dir);
  const std::vector<std::string>& data_classes = test_set->classes();
  r.classes = output_class_names(info, data_classes);

  // Accuracy pass.
  const data::Transform input = model_input_transform(info);
  data::LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.num_workers = o.workers;
  lo.pin_memory = device.is_cuda();
  data::DataLoader loader(test_set, lo, input);
  const EvalResult ev = evaluate(model, loader, info.num_classes, o.progress, "eval", tta);
  const ClassificationMetrics& m = ev.metrics;
  r.images = m.count();
  r.eval_seconds = ev.seconds;
  r.loss = ev.loss;
  r.top1 = m.top1();
  r.top5 = m.top5();
  r.macro_precision = m.macro_precision();
  r.macro_recall = m.macro_recall();
  r.macro_f1 = m.macro_f1();
  r.macro_classes = m.macro_class_count();
  r.per_class_accuracy = m.per_class_accuracy();
  r.precision = m.precision();
  r.recall = m.recall();
  r.f1 = m.f1();
  r.confusion = m.confusion();
  for (const auto& row : r.confusion) {
    int64_t s = 0;
    for (int64_t v : row) s += v;
    r.support.push_back(s);
  }

  // Speed: forward passes only (inputs prepared beforehand), eval mode, no autograd.
  if (o.latency_iters > 0) {
    NoGradGuard no_grad;
    model.eval();
    // Timed passes end with synchronize(): a CUDA forward returns before its kernels finish.
    const Tensor one = input_batch(*test_set, input, info, 1).to(device);
    std::optional<nn::GraphedForward> graphed;
    if (o.cuda_graph) graphed.emplace(model, device);
    auto forward = [&](const Tensor& x) { return graphed ? (*graphed)(x) : model(x); };
    r.cuda_graph = o.cuda_graph;
    // 5 warm-up passes: allocator, caches, thread pool.
    const LatencyStats s = latency_stats(timed_calls_ms(device, 5, o.latency_iters, [&] { forward(one); }));
    r.latency_median_ms = s.median;
    r.latency_p95_ms = s.p95;
    r.latency_mean_ms = s.mean;
    r.latency_iters = o.latency_iters;

    r.throughput_batch = o.batch_size;
    const Tensor many = input_batch(*test_set, input, info, o.batch_size).to(device);
    forward(many);  // warm-up
    synchronize(device);
    // At least 3 passes and 1 s of work, at most 20 passes.
    int64_t passes = 0;
    const auto t0 = std::chrono::steady_clock::now();
    while (passes < 3 || (passes < 20 && ms_since(t0) < 1000.0)) {
      forward(many);
      ++passes;
      synchronize(device);
    }
    const double secs = ms_since(t0) / 1000.0;
    r.throughput = secs > 0 ? static_cast<double>(passes * o.batch_size) / secs : 0.0;
  }
  return r;
}

std::string default_report_dir(const EvalOptions& o) {
  const std::filesystem::path checkpoint(o.checkpoint);
  std::string name = "eval";
  if (checkpoint.stem() != "best") name += "-" + checkpoint.stem().string();
  if (o.tta || o.tta_shift > 0) name += "-tta";
  if (o.crop_pct != -1.0) name += "-crop" + format_number("%g", o.crop_pct);
  if (o.limit > 0) name += "-first" + std::to_string(o.limit);
  // Other data, or other images of it, never replace the report of the run's own test set.
  if (!o.dataset.empty()) name += "-" + o.dataset;
  if (!o.data_dir.empty()) {
    std::filesystem::path folder = std::filesystem::path(o.data_dir).lexically_normal();
    if (folder.filename().empty()) folder = folder.parent_path();  // "data/" names data
    name += "-" + folder.filename().string();
  }
  if (o.test_split != -1.0) name += "-split" + format_number("%g", o.test_split);
  return (checkpoint.parent_path() / name).string();
}

nlohmann::json report_json(const EvalReport& r) {
  nlohmann::json j;
  j["checkpoint"] = r.checkpoint;
  j["model"] = r.model;
  j["parameters"] = r.parameters;
  j["input"] = {r.input_height, r.input_width, r.input_channels};
  j["crop_pct"] = r.crop_pct;
  j["dataset"] = r.dataset;
  j["data_dir"] = r.data_dir;
  j["images"] = r.images;
  j["limit"] = r.limit;
  j["quantized"] = r.quantized;
  j["tta"] = r.tta;
  j["tta_flip"] = r.tta_flip;
  j["tta_shift"] = r.tta_shift;
  j["tta_views"] = r.tta_views;
  j["device"] = r.device;
  j["threads"] = r.threads;
  j["loss"] = r.loss;
  j["top1"] = r.top1;
  j["top5"] = r.top5;
  j["macro_precision"] = r.macro_precision;
  j["macro_recall"] = r.macro_recall;
  j["macro_f1"] = r.macro_f1;
  j["macro_classes"] = r.macro_classes;
  nlohmann::json per = nlohmann::json::array();
  for (size_t k = 0; k < r.classes.size(); ++k)
    per.push_back({{"class", r.classes[k]},
                   {"index", k},
                   {"support", r.support[k]},
                   {"accuracy", r.per_class_accuracy[k]},
                   {"precision", r.precision[k]},
                   {"recall", r.recall[k]},
                   {"f1", r.f1[k]}});
  j["per_class"] = per;
  j["confusion"] = r.confusion;
  // Not measured (--latency-iters 0): null, never a 0 a script would average in.
  const bool timed = r.latency_iters > 0;
  const auto measured = [timed](double v) { return timed ? nlohmann::json(v) : nlohmann::json(nullptr); };
  j["latency_ms"] = {{"batch", 1},
                     {"iterations", r.latency_iters},
                     {"median", measured(r.latency_median_ms)},
                     {"p95", measured(r.latency_p95_ms)},
                     {"mean", measured(r.latency_mean_ms)}};
  j["throughput"] = {{"batch", r.throughput_batch}, {"images_per_second", measured(r.throughput)}};
  j["cuda_graph"] = r.cuda_graph;
  j["skipped_images"] = r.skipped;
  j["eval_seconds"] = r.eval_seconds;
  return j;
}

bool latency_unsteady(const EvalReport& r) {
  return r.latency_iters > 0 && r.latency_median_ms > 0 && r.latency_p95_ms > 3 * r.latency_median_ms;
}

std::string report_markdown(const EvalReport& r) {
  const bool timed = r.latency_iters > 0;
  std::string md = "# " + r.model + " on " + r.dataset + "\n\n";
  md += "| Model | Params | Top-1 (%) | Top-5 (%) | Macro F1 (%) |";
  if (timed)
    md += " Latency b=1 (ms, median / p95) | Throughput (img/s, b=" + std::to_string(r.throughput_batch) + ") |";
  md += timed ? "\n|:--|--:|--:|--:|--:|--:|--:|\n" : "\n|:--|--:|--:|--:|--:|\n";
  const std::string model = r.model + (r.quantized ? " (int8, simulated)" : "");
  md += "| " + markdown_cell(model) + " | " + format_count(r.parameters) + " | " + format_percent(r.top1) + " | " +
        format_percent(r.top5) + " | " + format_percent(r.macro_f1) + " |";
  if (timed)
    md += " " + format_number("%.2f", r.latency_median_ms) + " / " + format_number("%.2f", r.latency_p95_ms) + " | " +
          format_number("%.0f", r.throughput) + " |";
  md += "\n\n";
  md += std::to_string(r.images) + " test images of " + r.dataset + " (" + r.data_dir + ")" +
        (r.skipped > 0 ? ", " + std::to_string(r.skipped) + " unreadable ones skipped" : "") + ", input " +
        std::to_string(r.input_height) + "x" + std::to_string(r.input_width) + "x" + std::to_string(r.input_channels) +
        (r.crop_pct < 1.0 ? " (centre crop " + format_number("%g", r.crop_pct) + ")" : "") + ", TTA " +
        tta_description(r) + ", " + r.device + " with " + std::to_string(r.threads) +
        " thread" + (r.threads == 1 ? "" : "s") + "; checkpoint `" + r.checkpoint + "`" +
        (timed ? "" : "; latency and throughput not measured (--latency-iters 0)") +
        (timed && r.cuda_graph ? "; latency and throughput timed as CUDA graph replays" : "") +
        (r.quantized ? "; int8 simulated in float (fake-quantized), so its speed here is not int8 speed: kestrel "
                       "export and tools/onnx_report.py measure that"
                     : "") +
        (latency_unsteady(r) ? "; latency unsteady (p95 " + format_number("%.0f", r.latency_p95_ms / r.latency_median_ms) +
                                   "x the median): was the machine busy?"
                             : "") +
        ".\n";
  // scikit-learn's default: classes with neither images nor predictions (under --limit, say) are left out.
  md += "Macro averages over the " + std::to_string(r.macro_classes) + " of " + std::to_string(r.classes.size()) +
        " classes present in the labels or the predictions: precision " + format_percent(r.macro_precision) +
        "%, recall " + format_percent(r.macro_recall) + "%, F1 " + format_percent(r.macro_f1) + "%; loss " +
        format_number("%.4f", r.loss) + ".\n\n";
  md += "| Class | Images | Accuracy (%) | Precision (%) | F1 (%) |\n|:--|--:|--:|--:|--:|\n";
  for (size_t k = 0; k < r.classes.size(); ++k)
    md += "| " + markdown_cell(r.classes[k]) + " | " + std::to_string(r.support[k]) + " | " +
          format_percent(r.per_class_accuracy[k]) + " | " + format_percent(r.precision[k]) + " | " +
          format_percent(r.f1[k]) + " |\n";
  md += "\nConfusion matrix (rows: true class, columns: predicted): confusion.csv, confusion.png.\n";
  return md;
}

std::string confusion_csv(const EvalReport& r) {
  auto quote = [](const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    return q + "\"";
  };
  std::string csv = "true\\predicted";
  for (const auto& c : r.classes) csv += "," + quote(c);
  csv += "\n";
  for (size_t t = 0; t < r.confusion.size(); ++t) {
    csv += quote(t < r.classes.size() ? r.classes[t] : std::to_string(t));
    for (int64_t v : r.confusion[t]) csv += "," + std::to_string(v);
    csv += "\n";
  }
  return csv;
}

void write_report(const EvalReport& r, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  KCHECK(!ec, IOError, "eval: cannot create ", dir, ": ", ec.message());
  io::write_text_atomically(dir + "/report.json", report_json(r).dump(2) + "\n", "eval");
  io::write_text_atomically(dir + "/report.md", report_markdown(r), "eval");
  io::write_text_atomically(dir + "/confusion.csv", confusion_csv(r), "eval");
  std::vector<std::vector<long long>> counts;
  for (const auto& row : r.confusion) counts.emplace_back(row.begin(), row.end());
  write_heatmap(dir + "/confusion.png", counts, r.classes,
                r.model + " on " + r.dataset + ": top-1 " + format_percent(r.top1) + "%");
}

}  // namespace kestrel::tools
