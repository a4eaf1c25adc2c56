// kestrel predict: top-k classes of images (files or folders) from a checkpoint,
// as an aligned table, CSV or JSON, on stdout or into a file.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "data/readers.h"
#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "tools/lib/device_select.h"
#include "tools/lib/predictor.h"
#include "tools/lib/progress.h"

namespace kestrel::cli {

namespace {

struct PredictArgs {
  std::string checkpoint;
  std::vector<std::string> inputs;
  int64_t top_k = 5;
  int64_t batch_size = 64;
  std::string format;  // table, csv or json; empty: from --out's extension, else table
  std::string out;     // empty: stdout
  std::string device = "auto";
  bool tta = false;
  int64_t tta_shift = 0;
  double crop_pct = -1.0;  // < 0: the checkpoint's
  bool skip_bad = false;
  bool progress = true;
};

// Columns as a terminal shows UTF-8 text: one per code point (printf's widths count bytes).
size_t display_width(const std::string& s) {
  size_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;  // not a continuation byte
  return n;
}

std::string pad_right(const std::string& s, size_t width) {
  const size_t w = display_width(s);
  return w >= width ? s : s + std::string(width - w, ' ');
}

// Rows go out as each batch finishes (a long folder shows its first answers at
// once, and `| head` stops early), so the table's columns are sized up front:
// every image path and every class name the model can answer with.
class TablePrinter {
 public:
  TablePrinter(const tools::Predictor& p, const std::vector<std::string>& images) {
    for (const std::string& i : images) image_width_ = std::max(image_width_, display_width(i));
    for (int64_t c = 0; c < p.info().num_classes; ++c)
      class_width_ = std::max(class_width_, display_width(p.class_name(c)));
  }
  std::string header() const {
    char b[64];
    std::snprintf(b, sizeof(b), "  %4s  ", "rank");
    return pad_right("image", image_width_) + b + pad_right("class", class_width_) + "  probability\n";
  }
  std::string rows(const std::string& image, const tools::TopK& top) const {
    std::string out;
    for (size_t r = 0; r < top.size(); ++r) {
      char rank[32], prob[32];
      std::snprintf(rank, sizeof(rank), "  %4zu  ", r + 1);
      std::snprintf(prob, sizeof(prob), "  %10.2f%%\n", 100.0 * top[r].probability);
      out += pad_right(r == 0 ? image : "", image_width_) + rank + pad_right(top[r].class_name, class_width_) + prob;
    }
    return out;
  }

 private:
  size_t image_width_ = std::string("image").size(), class_width_ = std::string("class").size();
};

// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

std::string csv_rows(const std::string& image, const tools::TopK& top) {
  std::string out;
  for (size_t r = 0; r < top.size(); ++r) {
    char prob[32];
    std::snprintf(prob, sizeof(prob), "%.6f", top[r].probability);
    out += csv_field(image) + "," + std::to_string(r + 1) + "," + std::to_string(top[r].class_index) + "," +
           csv_field(top[r].class_name) + "," + prob + "\n";
  }
  return out;
}

struct Skipped {
  std::string image, reason;
};

std::string json_text(const tools::Predictor& p, const std::vector<std::string>& images,
                      const std::vector<tools::TopK>& results, const std::vector<Skipped>& skipped) {
  nlohmann::json j;
  j["checkpoint"] = p.checkpoint_path();
  j["model"] = p.info().model;
  nlohmann::json preds = nlohmann::json::array();
  for (size_t i = 0; i < images.size(); ++i) {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& c : results[i])
      top.push_back({{"class_index", c.class_index}, {"class_name", c.class_name}, {"probability", c.probability}});
    preds.push_back({{"image", images[i]}, {"top_k", top}});
  }
  j["predictions"] = preds;
  nlohmann::json bad = nlohmann::json::array();
  for (const Skipped& s : skipped) bad.push_back({{"image", s.image}, {"error", s.reason}});
  j["skipped"] = bad;
  return j.dump(2) + "\n";
}

// --format, or the one --out's extension names.
std::string output_format(const PredictArgs& a) {
  const std::string ext = std::filesystem::path(a.out).extension().string();
  const std::string named = ext == ".csv" ? "csv" : ext == ".json" ? "json" : "";
  KCHECK(a.format.empty() || named.empty() || a.format == named, ValueError, "predict: --format ", a.format,
         " into ", a.out, ", a ", ext, " file; give one or the other");
  return !a.format.empty() ? a.format : !named.empty() ? named : "table";
}

void run_predict(const PredictArgs& a) {
  // Checked here: CLI11's range check prints its range as a 300-digit float.
  KCHECK(a.top_k >= 1, ValueError, "--top-k must be at least 1, got ", a.top_k);
  KCHECK(a.batch_size >= 1, ValueError, "--batch-size must be at least 1, got ", a.batch_size);
  io::check_folder_of(a.out, "predict");
  const std::string format = output_format(a);
  std::vector<std::string> images;
  for (const auto& in : a.inputs)  // all paths are checked before the model is loaded
    for (auto& f : data::list_image_files(in)) images.push_back(std::move(f));
  tools::Predictor p(a.checkpoint, tools::resolve_device(a.device));
  if (a.crop_pct != -1.0) p.set_crop_fraction(a.crop_pct);
  p.set_tta(tools::tta_options(a.tta, a.tta_shift, p.info()));
  const bool streamed = format != "json";
  // Streamed rows go to stdout at once; with --out they gather and are written whole at the end.
  std::string gathered;
  const auto emit = [&](const std::string& text) {
    if (!a.out.empty()) return void(gathered += text);
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  };
  std::optional<TablePrinter> printer;
  // The header goes out with the first row (or at the end), so that an
  // unreadable first image fails with its one line alone.
  std::string header;
  if (format == "table") {
    printer.emplace(p, images);
    header = printer->header();
  } else if (format == "csv") {
    header = "image,rank,class_index,class_name,probability\n";
  }
  const auto emit_header_once = [&] {
    if (header.empty()) return;
    emit(header);
    header.clear();
  };
  // A model trained with --num-classes above its data's count has outputs
  // without names: the predictor calls them "class N (unnamed)".
  std::vector<std::string> answered;
  std::vector<tools::TopK> results;
  std::vector<Skipped> skipped;
  const auto total = static_cast<int64_t>(images.size());
  // Not over rows streaming to the same terminal: they would break the bar's line.
  const bool rows_on_terminal = streamed && a.out.empty() && isatty(STDOUT_FILENO);
  tools::ProgressBar bar("predict", total, a.progress && total > a.batch_size && !rows_on_terminal);
  for (int64_t begin = 0; begin < total; begin += a.batch_size) {
    std::vector<std::string> paths;
    std::vector<data::Image> decoded;
    for (int64_t i = begin; i < std::min(total, begin + a.batch_size); ++i) {
      const std::string& file = images[static_cast<size_t>(i)];
      try {
        decoded.push_back(p.load_image(file));
        paths.push_back(file);
      } catch (const IOError& e) {
        if (!a.skip_bad) throw IOError(std::string(e.what()) + " (--skip-bad skips unreadable images)");
        std::fprintf(stderr, "warning: %s (skipped)\n", e.what());
        skipped.push_back({file, e.what()});
      }
    }
    const std::vector<tools::TopK> top = p.predict_batch(decoded, a.top_k, a.batch_size);
    for (size_t i = 0; i < top.size(); ++i) {
      emit_header_once();
      if (printer) emit(printer->rows(paths[i], top[i]));
      if (format == "csv") emit(csv_rows(paths[i], top[i]));
      if (!streamed) {
        answered.push_back(paths[i]);
        results.push_back(top[i]);
      }
    }
    bar.update(std::min(total, begin + a.batch_size));
  }
  bar.finish();
  emit_header_once();  // every image skipped: an empty table
  if (!streamed) emit(json_text(p, answered, results, skipped));
  if (!a.out.empty()) {
    io::write_text_atomically(a.out, gathered, "predict");
    const auto answered_count = static_cast<long long>(total) - static_cast<long long>(skipped.size());
    std::fprintf(stderr, "predictions for %lld image%s written to %s\n", answered_count, answered_count == 1 ? "" : "s",
                 a.out.c_str());
  }
  if (!skipped.empty())
    std::fprintf(stderr, "%zu unreadable image%s skipped (--skip-bad)\n", skipped.size(),
                 skipped.size() == 1 ? "" : "s");
}

}  // namespace

void register_predict(CLI::App& app) {
  auto a = std::make_shared<PredictArgs>();
  CLI::App* cmd = app.add_subcommand("predict", "Classify images (files or folders) with a checkpoint");
  cmd->add_option("--checkpoint,-c", a->checkpoint, "model checkpoint (.safetensors from kestrel train)")->required();
  cmd->add_option("images", a->inputs, "image files or folders (every image below a folder, sorted)")->required();
  cmd->add_option("--top-k,-k", a->top_k, "classes to show per image")->capture_default_str();
  cmd->add_option("--batch-size,-b", a->batch_size, "images per forward pass")->capture_default_str();
  cmd->add_option("--format", a->format, "table, csv or json (default: as --out's extension names, else table)")
      ->check(CLI::IsMember({"table", "csv", "json"}));
  cmd->add_option("--out,-o", a->out, "write the results to this file (written whole at the end) instead of stdout");
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N (auto: cuda when a GPU is usable)")
      ->capture_default_str();
  cmd->add_flag("--tta", a->tta, "test-time augmentation: average over each image and its mirror (as kestrel eval)");
  cmd->add_option("--tta-shift", a->tta_shift,
                  "test-time augmentation: also average over four views shifted by +-N pixels, each mirrored too "
                  "with --tta");
  cmd->add_option("--crop-pct", a->crop_pct,
                  "read the centre crop_pct of each image (as kestrel eval --crop-pct; default: the checkpoint's)");
  cmd->add_flag("--skip-bad", a->skip_bad, "warn about and skip unreadable images instead of stopping");
  auto no_progress = std::make_shared<bool>(false);
  cmd->add_flag("--no-progress", *no_progress,
                "no progress bar (shown past one batch, unless table rows go to the terminal)");
  cmd->callback([a, no_progress] {
    a->progress = !*no_progress;
    run_predict(*a);
  });
}

}  // namespace kestrel::cli
