// kestrel predict: top-k classes of images (files or folders) from a checkpoint,
// as an aligned table or JSON.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "data/readers.h"
#include "engine/error.h"
#include "tools/lib/device_select.h"
#include "tools/lib/predictor.h"

namespace kestrel::cli {

namespace {

struct PredictArgs {
  std::string checkpoint;
  std::vector<std::string> inputs;
  int64_t top_k = 5;
  int64_t batch_size = 64;
  std::string format = "table";
  std::string device = "auto";
  bool tta = false;
  int64_t tta_shift = 0;
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

void print_table(const std::vector<std::string>& images, const std::vector<tools::TopK>& results) {
  size_t wi = std::string("image").size(), wc = std::string("class").size();
  for (size_t i = 0; i < images.size(); ++i) {
    wi = std::max(wi, display_width(images[i]));
    for (const auto& p : results[i]) wc = std::max(wc, display_width(p.class_name));
  }
  std::printf("%s  %4s  %s  %11s\n", pad_right("image", wi).c_str(), "rank", pad_right("class", wc).c_str(),
              "probability");
  for (size_t i = 0; i < images.size(); ++i)
    for (size_t r = 0; r < results[i].size(); ++r)
      std::printf("%s  %4zu  %s  %10.2f%%\n", pad_right(r == 0 ? images[i] : "", wi).c_str(), r + 1,
                  pad_right(results[i][r].class_name, wc).c_str(), 100.0 * results[i][r].probability);
}

void print_json(const tools::Predictor& p, const std::vector<std::string>& images,
                const std::vector<tools::TopK>& results) {
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
  std::cout << j.dump(2) << "\n";
}

}  // namespace

void register_predict(CLI::App& app) {
  auto a = std::make_shared<PredictArgs>();
  CLI::App* cmd = app.add_subcommand("predict", "Classify images (files or folders) with a checkpoint");
  cmd->add_option("--checkpoint,-c", a->checkpoint, "model checkpoint (.safetensors from kestrel train)")->required();
  cmd->add_option("images", a->inputs, "image files or folders (every image below a folder, sorted)")->required();
  cmd->add_option("--top-k,-k", a->top_k, "classes to show per image")->capture_default_str();
  cmd->add_option("--batch-size,-b", a->batch_size, "images per forward pass")->capture_default_str();
  cmd->add_option("--format", a->format, "table or json")->capture_default_str()->check(
      CLI::IsMember({"table", "json"}));
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N (auto: cuda when a GPU is usable)")
      ->capture_default_str();
  cmd->add_flag("--tta", a->tta, "test-time augmentation: average over each image and its mirror (as kestrel eval)");
  cmd->add_option("--tta-shift", a->tta_shift,
                  "test-time augmentation: also average over four views shifted by +-N pixels, each mirrored too "
                  "with --tta");
  cmd->callback([a] {
    // Checked here: CLI11's range check prints its range as a 300-digit float.
    KCHECK(a->top_k >= 1, ValueError, "--top-k must be at least 1, got ", a->top_k);
    KCHECK(a->batch_size >= 1, ValueError, "--batch-size must be at least 1, got ", a->batch_size);
    std::vector<std::string> images;
    for (const auto& in : a->inputs)  // all paths are checked before the model is loaded
      for (auto& f : data::list_image_files(in)) images.push_back(std::move(f));
    tools::Predictor p(a->checkpoint, tools::resolve_device(a->device));
    p.set_tta(tools::tta_options(a->tta, a->tta_shift, p.info()));
    // A model trained with --num-classes above its data's count has outputs
    // without names: the predictor calls them "class N (unnamed)".
    const std::vector<tools::TopK> results = p.predict_batch(images, a->top_k, a->batch_size);
    if (a->format == "json")
      print_json(p, images, results);
    else
      print_table(images, results);
  });
}

}  // namespace kestrel::cli
