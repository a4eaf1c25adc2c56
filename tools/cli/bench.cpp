// kestrel bench: images per second of zoo models' inference and training
// steps at one batch size and input, on the CPU or a GPU (like timm's
// benchmark.py), with their parameters and multiply-adds.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "engine/text.h"
#include "models/registry.h"
#include "tools/cli/input_size.h"
#include "tools/lib/device_select.h"
#include "tools/lib/model_bench.h"

namespace kestrel::cli {

namespace {

struct BenchArgs {
  tools::BenchOptions o;
  std::string models = "efficientnet_b0";  // comma-separated
  std::string out;                         // .csv or .json results file; empty: none
  std::string input = "3x224x224";
  std::string device = "auto";
  bool no_train = false;
  bool no_fuse = false;
  bool no_progress = false;
  int64_t profile_layers = 15;
};

void print_profile(const char* what, const tools::OpProfile& p, double unprofiled_ms, const BenchArgs& a) {
  std::printf("\n%s, per batch: %.2f ms profiled (%.2f ms unprofiled), mean of %lld passes\n\n", what, p.total_ms,
              unprofiled_ms, static_cast<long long>(a.o.iters));
  std::printf("%s", tools::profile_markdown(p, a.profile_layers).c_str());
}

std::vector<std::string> model_list(const std::string& text) {
  KCHECK(!text.empty() && text.back() != ',', ValueError, "bench: --model '", text,
         "' is empty or ends in a comma (names are comma-separated)");
  std::vector<std::string> names;
  std::stringstream in(text);
  for (std::string name; std::getline(in, name, ',');) {
    KCHECK(!name.empty(), ValueError, "bench: --model '", text, "' has an empty name (names are comma-separated)");
    models::find_model(name);  // every name checked before the first is timed
    names.push_back(name);
  }
  return names;
}

// One row of the results file, in the table's terms (ms per batch, images per second).
nlohmann::json result_record(const BenchArgs& a, const tools::BenchResult& r) {
  nlohmann::json j = {{"model", a.o.model},          {"params", r.params},
                      {"macs_per_image", r.macs},     {"device", a.o.device.str()},
                      {"batch", a.o.batch},           {"input", a.input},
                      {"amp", a.o.amp},               {"infer_img_s", r.infer_img_s},
                      {"infer_ms", r.infer_ms},       {"cuda_graph", a.o.cuda_graph}};
  j["train_img_s"] = a.o.train ? nlohmann::json(r.train_img_s) : nlohmann::json();
  j["train_ms"] = a.o.train ? nlohmann::json(r.train_ms) : nlohmann::json();
  return j;
}

std::string results_csv(const nlohmann::json& rows) {
  const char* keys[] = {"model", "params", "macs_per_image", "device", "batch", "input", "amp",
                        "infer_img_s", "infer_ms", "train_img_s", "train_ms", "cuda_graph"};
  std::string csv = join(keys, ",") + "\n";
  for (const auto& row : rows)
    csv += join(keys, ",", [&row](const char* k) {
             const nlohmann::json& v = row.at(k);
             return v.is_null() ? "" : v.is_string() ? v.get<std::string>() : v.dump();
           }) +
           "\n";
  return csv;
}

void run_bench(BenchArgs& a) {
  const std::string ext = std::filesystem::path(a.out).extension().string();
  KCHECK(a.out.empty() || ext == ".csv" || ext == ".json", ValueError, "bench: --out must end in .csv or .json, got ",
         a.out);
  io::check_folder_of(a.out, "bench");
  const std::vector<std::string> names = model_list(a.models);
  KCHECK(!a.o.profile || names.size() == 1, ValueError, "bench: --profile traces one model; give one --model");
  const std::vector<int64_t> chw = parse_chw(a.input, "bench");
  a.o.channels = chw[0];
  a.o.height = chw[1];
  a.o.width = chw[2];
  a.o.device = tools::resolve_device(a.device);
  a.o.train = !a.no_train;
  a.o.fuse = !a.no_fuse;
  a.o.progress = !a.no_progress;
  for (const std::string& name : names) {  // every refusal before the table starts
    a.o.model = name;
    tools::check_bench_options(a.o);
  }
  if (a.o.cuda_graph) std::fprintf(stderr, "inference timed as CUDA graph replays\n");
  if (a.o.fuse && a.o.device.is_cpu())
    std::fprintf(stderr, "inference timed with batch norms folded into their convolutions, as eval and predict run "
                         "(--no-fuse: the model as built)\n");
  std::printf("| model | params | GMACs/img | device | batch | input | amp | infer img/s (ms) | train img/s (ms) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  nlohmann::json rows = nlohmann::json::array();
  tools::BenchResult r;
  for (const std::string& name : names) {  // each row as soon as it is measured
    a.o.model = name;
    r = tools::bench_model(a.o);
    char train[64] = "-";
    if (a.o.train) std::snprintf(train, sizeof(train), "%.1f (%.2f)", r.train_img_s, r.train_ms);
    std::printf("| %s | %lld | %.3f | %s | %lld | %s | %s | %.1f (%.2f) | %s |\n", a.o.model.c_str(),
                static_cast<long long>(r.params), static_cast<double>(r.macs) / 1e9, a.o.device.str().c_str(),
                static_cast<long long>(a.o.batch), a.input.c_str(), a.o.amp.c_str(), r.infer_img_s, r.infer_ms, train);
    std::fflush(stdout);
    rows.push_back(result_record(a, r));
  }
  if (!a.out.empty()) {
    io::write_text_atomically(a.out, ext == ".csv" ? results_csv(rows) : rows.dump(2) + "\n", "bench");
    std::fprintf(stderr, "%zu result%s written to %s\n", rows.size(), rows.size() == 1 ? "" : "s", a.out.c_str());
  }
  if (!a.o.profile) return;
  print_profile("Inference", r.infer_profile, r.infer_ms, a);
  if (a.o.train) print_profile("Training step", r.train_profile, r.train_ms, a);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Images per second of a zoo model: inference and training steps");
  cmd->add_option("--model,-m", a->models, "model name, or several comma-separated (kestrel summary --list)")
      ->capture_default_str();
  cmd->add_option("--out,-o", a->out, "also write the results to this .csv or .json file");
  cmd->add_option("--input", a->input, "C x H x W")->capture_default_str();
  cmd->add_option("--batch-size,-b", a->o.batch, "batch size")->capture_default_str();
  cmd->add_option("--num-classes", a->o.num_classes, "classifier outputs (default: the model's published count)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  cmd->add_option("--width-mult", a->o.width_mult, "channel multiplier")->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--amp", a->o.amp, "off, fp16 or bf16 (CUDA)")->capture_default_str();
  cmd->add_option("--warmup", a->o.warmup, "untimed iterations first")->capture_default_str();
  cmd->add_option("--iters", a->o.iters, "timed iterations (the median is reported)")->capture_default_str();
  cmd->add_flag("--no-progress", a->no_progress, "no progress bar");
  cmd->add_flag("--no-train", a->no_train, "time inference only");
  cmd->add_flag("--no-fuse", a->no_fuse, "CPU inference without folding batch norms into convolutions");
  cmd->add_flag("--cuda-graph", a->o.cuda_graph, "CUDA inference captured once as a CUDA graph and replayed "
                                                "(one launch per pass instead of one per kernel)");
  cmd->add_flag("--profile", a->o.profile, "then time every op: tables by kind of op and by layer (on CUDA each op "
                                           "waits for its kernels)");
  cmd->add_option("--profile-layers", a->profile_layers, "slowest layers listed by --profile (-1: all)")
      ->capture_default_str();
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace kestrel::cli
