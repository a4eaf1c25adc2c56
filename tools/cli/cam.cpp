// kestrel cam: class activation maps (Grad-CAM) of one or more checkpoints on
// the same images, side by side in one PNG: what differently scaled models
// look at.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "tools/lib/cam.h"
#include "tools/lib/distill.h"
#include "tools/lib/predictor.h"

namespace kestrel::cli {

namespace {

struct CamArgs {
  std::string checkpoints;  // comma-separated
  std::vector<std::string> images;
  int64_t class_index = -1;
  std::string out = "cam.png";
  int display = 128;
  double alpha = 0.5;
  int64_t max_images = 16;
};

void run_cam(const CamArgs& a) {
  KCHECK(a.display >= 8 && a.display <= 1024, ValueError, "cam: --size must be in [8, 1024], got ", a.display);
  KCHECK(a.alpha >= 0 && a.alpha <= 1, ValueError, "cam: --alpha must be in [0, 1], got ", a.alpha);
  KCHECK(a.max_images >= 1, ValueError, "cam: --max-images must be at least 1, got ", a.max_images);
  KCHECK(a.class_index >= -1, ValueError, "cam: --class must be a class index (or -1: each model's prediction), got ",
         a.class_index);
  KCHECK(std::filesystem::path(a.out).extension() == ".png", ValueError, "cam: --out ", a.out,
         " must end in .png (the maps are written as PNG)");
  io::check_folder_of(a.out, "cam");
  const std::vector<std::string> paths = tools::split_paths(a.checkpoints);
  KCHECK(!paths.empty(), ValueError, "cam: --checkpoint names no checkpoint");
  std::vector<std::unique_ptr<tools::Predictor>> models;
  for (const std::string& p : paths) {
    models.push_back(std::make_unique<tools::Predictor>(p, Device::cpu(), /*fuse=*/false));
    const int64_t classes = models.back()->info().num_classes;
    KCHECK(a.class_index < classes, ValueError, "cam: --class ", a.class_index, " is out of range: ", p, " has ",
           classes, " classes (0 to ", classes - 1, ")");
  }
  std::vector<std::string> images;
  for (const std::string& i : a.images)
    for (const std::string& f : tools::list_images(i)) images.push_back(f);
  // One row per image: a whole folder would make a PNG too tall to look at.
  if (static_cast<int64_t>(images.size()) > a.max_images) {
    std::fprintf(stderr, "cam: %zu images; mapping the first %lld (--max-images to change)\n", images.size(),
                 static_cast<long long>(a.max_images));
    images.resize(static_cast<size_t>(a.max_images));
  }

  std::vector<std::vector<data::FImage>> grid;
  for (const std::string& file : images) {
    const data::Image img = models[0]->load_image(file);
    // Each map is drawn over the part of the image its model sees (a centre
    // crop when its metadata has a crop_fraction below 1).
    const auto view = [&](const tools::Predictor& p) {
      const double crop = p.info().crop_fraction;
      return crop < 1.0 ? data::resize_center_crop(data::to_float(img), a.display, a.display, crop)
                        : data::resize_bilinear(data::to_float(img), a.display, a.display);
    };
    std::vector<data::FImage> row{view(*models[0])};
    std::printf("%s\n", file.c_str());
    for (size_t m = 0; m < models.size(); ++m) {
      tools::Predictor& p = *models[m];
      const tools::ClassActivationMap cam = tools::grad_cam(p.model(), p.preprocess(img), a.class_index);
      row.push_back(tools::overlay_heat(view(p), cam, a.alpha));
      std::printf("  %-40s %-16s p=%.3f  map %lldx%lld\n", paths[m].c_str(), p.class_name(cam.class_index).c_str(),
                  cam.probability, static_cast<long long>(cam.height), static_cast<long long>(cam.width));
    }
    grid.push_back(std::move(row));
  }
  tools::write_image_grid(a.out, grid);
  std::fprintf(stderr, "wrote %s: one row per image; the image, then each checkpoint's map\n", a.out.c_str());
}

}  // namespace

void register_cam(CLI::App& app) {
  auto a = std::make_shared<CamArgs>();
  CLI::App* cmd =
      app.add_subcommand("cam", "Class activation maps (Grad-CAM) of checkpoints on images, side by side in a PNG");
  cmd->add_option("--checkpoint,-c", a->checkpoints, "checkpoints to compare (comma-separated)")->required();
  cmd->add_option("images", a->images, "image files or folders")->required();
  cmd->add_option("--class", a->class_index, "class index to explain (default: each model's prediction)");
  cmd->add_option("--out,-o", a->out, "the PNG to write")->capture_default_str();
  cmd->add_option("--size", a->display, "pixels per tile")->capture_default_str();
  cmd->add_option("--alpha", a->alpha, "opacity of the map over the image")->capture_default_str();
  cmd->add_option("--max-images", a->max_images, "rows at most: the first N of the images listed (a folder's sorted)")
      ->capture_default_str();
  cmd->callback([a] { run_cam(*a); });
}

}  // namespace kestrel::cli
