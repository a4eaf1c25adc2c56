#include "tools/lib/datasets.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <utility>
#include <vector>

#include "data/readers.h"
#include "engine/dist/process_group.h"
#include "engine/text.h"

namespace kestrel::tools {

int64_t image_preload_limit_bytes() {
  // KESTREL_PRELOAD_LIMIT_MB overrides the limit (tests set it small).
  if (const char* env = std::getenv("KESTREL_PRELOAD_LIMIT_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    KCHECK(*env != '\0' && *end == '\0' && mb >= 0, ValueError,
           "KESTREL_PRELOAD_LIMIT_MB must be a whole number of megabytes, got '", env, "'");
    return mb << 20;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  const int64_t quarter_of_ram = pages > 0 && page_size > 0 ? static_cast<int64_t>(pages) * page_size / 4 : 0;
  return quarter_of_ram > 0 ? std::min<int64_t>(2LL << 30, quarter_of_ram) : 2LL << 30;
}

std::string data_dir_or_default(const std::string& dataset, const std::string& data_dir) {
  if (!data_dir.empty()) return data_dir;
  if (dataset == "fashion-mnist") return "/usr/share/datasets/fashion-mnist";
  if (dataset == "mnist") return "/usr/share/datasets/mnist";
  if (dataset.rfind("cifar", 0) == 0) return "datasets";  // where tools/get_data.sh puts them
  return "";
}

namespace {

// Images under dir/train/: what --dataset folder reads (CIFAR-10 as JPEG folders, say).
bool holds_image_folders(const std::string& dir) {
  const std::filesystem::path train = std::filesystem::path(dir) / "train";
  if (!std::filesystem::is_directory(train)) return false;
  try {
    return !data::list_image_files(train.string()).empty();
  } catch (const Error&) {
    return false;
  }
}

// The readers of the official file layouts (IDX, CIFAR binary).
std::shared_ptr<const data::Dataset> open_official_files(const std::string& dataset, const std::string& dir,
                                                         data::Split split, const data::ReadOptions& ro) {
  if (dataset == "fashion-mnist") return data::open_fashion_mnist(dir, split, ro);
  if (dataset == "mnist") return data::open_mnist(dir, split, ro);
  if (dataset == "cifar10") return data::open_cifar10(dir, split, ro);
  if (dataset == "cifar100" || dataset == "cifar100-coarse")  // the 100 fine or the 20 coarse classes
    return data::open_cifar100(dir, split, dataset == "cifar100", ro);
  throw ValueError("unknown dataset '" + dataset +
                   "' (valid: cifar10, cifar100, cifar100-coarse, fashion-mnist, mnist, folder)");
}

}  // namespace

std::shared_ptr<const data::Dataset> open_dataset(const std::string& dataset, const std::string& data_dir,
                                                  data::Split split, bool skip_bad, int64_t limit,
                                                  double test_split) {
  const std::string dir = data_dir_or_default(dataset, data_dir);
  KCHECK(std::filesystem::exists(dir), IOError, "data directory not found: ", dir,
         dataset.rfind("cifar", 0) == 0 ? " (run tools/get_data.sh to download CIFAR)" : "");
  data::ReadOptions ro;
  ro.skip_bad = skip_bad;
  std::shared_ptr<const data::Dataset> ds;
  if (dataset != "folder") {
    try {
      ds = open_official_files(dataset, dir, split, ro);
    } catch (const IOError&) {
      // The files are not there, but class folders of images are: the data set's type was wrong.
      KCHECK(!holds_image_folders(dir), IOError, "--dataset ", dataset, ": ", dir,
             " holds image folders (train/<class>/...), not the ", dataset, " files; pass --dataset folder");
      throw;
    }
  } else {
    data::ImageFolderOptions fo;
    fo.read = ro;
    fo.preload = true;
    fo.preload_limit_bytes = image_preload_limit_bytes();
    fo.whole = test_split == 0.0;
    fo.test_fraction = test_split;
    auto folder = data::open_image_folder(dir, split, fo);
    if (!folder->preloaded() && dist::is_main()) {
      auto size = [](int64_t bytes) {
        const double mib = static_cast<double>(bytes) / (1 << 20);
        char b[32];
        std::snprintf(b, sizeof(b), mib >= 1024 ? "%.1f GiB" : "%.1f MiB", mib >= 1024 ? mib / 1024 : mib);
        return std::string(b);
      };
      std::cerr << "image folder " << dir << " (" << (split == data::Split::Train ? "train" : "test") << "): about "
                << size(folder->estimated_decoded_bytes()) << " decoded, over the preload limit of "
                << size(fo.preload_limit_bytes)
                << " (KESTREL_PRELOAD_LIMIT_MB sets it); decoding each image as it is read\n";
    }
    ds = folder;
  }
  KCHECK(ds->size() > 0, IOError, "data set ", dataset, " at ", dir, " has no images");
  if (ds->skipped() > 0 && dist::is_main())
    std::cerr << "warning: --skip-bad skipped " << ds->skipped() << " bad record" << (ds->skipped() == 1 ? "" : "s")
              << " of the " << (split == data::Split::Train ? "training" : "test") << " set in " << dir << "\n";
  if (limit > 0 && limit < ds->size()) {
    // The official files are shuffled, so their first N images are a fair
    // sample. An image folder is listed class by class: its first N would be
    // one class, so it gives N evenly spaced images instead.
    const bool grouped_by_class = dataset == "folder";
    std::vector<int64_t> idx(static_cast<size_t>(limit));
    for (int64_t i = 0; i < limit; ++i) idx[i] = grouped_by_class ? i * ds->size() / limit : i;
    auto subset = std::make_shared<data::SubsetDataset>(ds, idx);
    return subset;
  }
  return ds;
}

Normalization normalization_for(const std::string& dataset, const data::Dataset& train) {
  if (dataset == "fashion-mnist") return {{0.2860f}, {0.3530f}};
  if (dataset == "mnist") return {{0.1307f}, {0.3081f}};
  if (dataset == "cifar10") return {{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}};
  if (dataset == "cifar100" || dataset == "cifar100-coarse")
    return {{0.5071f, 0.4865f, 0.4409f}, {0.2673f, 0.2564f, 0.2762f}};
  const int64_t n = std::min<int64_t>(train.size(), 2000);
  std::vector<double> sum, sq;
  double count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const data::Example e = train.get(i * (train.size() / n));
    if (sum.empty()) sum.assign(e.image.c, 0.0), sq.assign(e.image.c, 0.0);
    for (size_t p = 0; p < e.image.pixels.size(); ++p) {
      const double v = e.image.pixels[p] / 255.0;
      sum[p % e.image.c] += v;
      sq[p % e.image.c] += v * v;
    }
    count += static_cast<double>(e.image.h) * e.image.w;
  }
  Normalization out;
  for (size_t c = 0; c < sum.size(); ++c) {
    const double m = sum[c] / count;
    out.mean.push_back(static_cast<float>(m));
    out.std.push_back(static_cast<float>(std::sqrt(std::max(sq[c] / count - m * m, 1e-6))));
  }
  return out;
}

namespace {

std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%g", v);
  return b;
}

// One step of the training images' augmentation and how the banner names it.
struct AugmentStep {
  std::string name;
  data::Transform transform;
};

// train_transform's steps between the resize and the normalization, in order.
std::vector<AugmentStep> augment_steps(const TrainConfig& c, int height, int width) {
  std::vector<AugmentStep> t;
  // The crop, mirror and cutout settings are the resident loader's (one place).
  const data::ResidentAugment a = resident_train_augment(c, height, Normalization{});
  if (a.crop_padding >= 0)
    t.push_back(
        {"crop (pad " + std::to_string(a.crop_padding) + ")", data::random_crop(height, width, a.crop_padding)});
  if (a.hflip > 0) t.push_back({a.hflip == 0.5 ? "flip" : "flip p " + number(a.hflip), data::random_hflip(a.hflip)});
  if (c.vflip > 0) t.push_back({"vertical flip p " + number(c.vflip), data::random_vflip(c.vflip)});
  // Geometry, then colour, then the policies, as in the seeds' albumentations pipelines.
  if (c.shift_scale_rotate > 0) {
    const std::array<double, 3> lim = c.shift_scale_rotate_limits();
    t.push_back({"shift-scale-rotate p " + number(c.shift_scale_rotate) + " (" + number(lim[0]) + ", " +
                     number(lim[1]) + ", " + number(lim[2]) + " deg)",
                 data::random_shift_scale_rotate(lim[0], lim[1], lim[2], c.shift_scale_rotate)});
  }
  if (c.rotation > 0) t.push_back({"rotation " + number(c.rotation) + " deg", data::random_rotation(c.rotation)});
  if (!c.color_jitter.empty()) {
    const std::array<float, 4> j = c.color_jitter_amounts();
    t.push_back({"color jitter " + c.color_jitter, data::color_jitter(j[0], j[1], j[2], j[3])});
  }
  if (c.brightness_contrast > 0)
    t.push_back({"brightness/contrast p " + number(c.brightness_contrast),
                 data::random_brightness_contrast(0.2, 0.2, c.brightness_contrast)});
  if (c.hsv_shift > 0)
    t.push_back({"HSV shift p " + number(c.hsv_shift), data::random_hsv_shift(20.0, 0.12, 0.08, c.hsv_shift)});
  if (c.auto_augment) t.push_back({"AutoAugment (CIFAR-10)", data::auto_augment_cifar10()});
  if (!c.randaugment.empty()) {
    const std::array<int, 2> nm = c.randaugment_n_m();
    t.push_back({"RandAugment " + c.randaugment, data::rand_augment(nm[0], nm[1])});
  }
  if (a.cutout_size > 0)
    t.push_back({"cutout " + std::to_string(a.cutout_size) + " px p " + number(a.cutout_p),
                 data::cutout(a.cutout_size, a.cutout_p)});
  return t;
}

// Without --image-size the model takes the first image's size and the trainer
// samples the set for others; one it missed is resized, and said so once.
data::Transform resize_noting_other_sizes(int height, int width) {
  auto noted = std::make_shared<std::atomic<bool>>(false);
  return [=, resize = data::resize(height, width)](data::FImage& img, Generator& g) {
    if ((img.h != height || img.w != width) && !noted->exchange(true))
      std::cerr << "warning: a training image is " << img.w << "x" << img.h << ", not " << width << "x" << height
                << " as the first: resized (pass --image-size N to choose the size for them all)\n";
    resize(img, g);
  };
}

}  // namespace

data::Transform train_transform(const TrainConfig& c, int height, int width, const Normalization& n) {
  // Nothing to do at the data's own size.
  std::vector<data::Transform> t;
  if (!c.random_resized_crop.empty()) {
    const std::array<double, 2> area = c.random_resized_crop_area();
    t.push_back(data::random_resized_crop(height, width, area[0], area[1]));
  } else {
    t.push_back(c.image_size > 0 ? data::resize(height, width) : resize_noting_other_sizes(height, width));
  }
  for (AugmentStep& step : augment_steps(c, height, width)) t.push_back(std::move(step.transform));
  t.push_back(data::normalize(n.mean, n.std));
  if (c.random_erase > 0) t.push_back(data::random_erasing(c.random_erase));  // noise in normalized units
  return data::compose(std::move(t));
}

std::string augmentation_summary(const TrainConfig& c, int height, int width) {
  std::vector<std::string> image, batch;
  if (!c.random_resized_crop.empty()) {
    const std::array<double, 2> area = c.random_resized_crop_area();
    image.push_back("random resized crop (area " + number(area[0]) + " to " + number(area[1]) + ")");
  }
  for (const AugmentStep& step : augment_steps(c, height, width)) image.push_back(step.name);
  if (c.random_erase > 0) image.push_back("random erasing p " + number(c.random_erase));
  const std::pair<const char*, double> mixers[] = {{"mixup", c.mixup}, {"cutmix", c.cutmix}, {"ricap", c.ricap}};
  for (const auto& [name, p] : mixers)
    if (p > 0) batch.push_back(std::string(name) + " " + number(p));
  std::vector<std::string> parts;  // the image steps; the batch mixers
  if (!image.empty()) parts.push_back(join(image, ", "));
  if (!batch.empty())
    parts.push_back(join(batch, ", ") +
                    (c.mixup_off_epoch > 0 ? " (first " + std::to_string(c.mixup_off_epoch) + " epochs)" : ""));
  return parts.empty() ? "none" : join(parts, "; ");
}

data::Transform eval_transform(int height, int width, const Normalization& n, double crop_pct) {
  return data::compose({data::resize(height, width, crop_pct), data::normalize(n.mean, n.std)});
}

data::ResidentAugment resident_train_augment(const TrainConfig& c, int height, const Normalization& n) {
  data::ResidentAugment a;  // the resident twin of train_transform's steps
  if (c.random_crop) a.crop_padding = std::max(2, height / 8);
  a.hflip = c.hflip;
  if (c.cutout > 0) {
    a.cutout_size = std::max(4, height / 2);
    a.cutout_p = c.cutout;
  }
  a.mean = n.mean;
  a.std = n.std;
  return a;
}

data::ResidentAugment resident_eval_augment(const Normalization& n) {
  data::ResidentAugment a;
  a.mean = n.mean;
  a.std = n.std;
  return a;
}

std::string resident_unsupported(const TrainConfig& c, bool train, const data::Dataset& ds, int height, int width) {
  if (train) {
    const std::pair<bool, const char*> host_only[] = {
        {c.auto_augment, "--auto-augment"},
        {!c.randaugment.empty(), "--randaugment"},
        {c.shift_scale_rotate > 0, "--shift-scale-rotate"},
        {c.rotation > 0, "--rotation"},
        {!c.color_jitter.empty(), "--color-jitter"},
        {c.brightness_contrast > 0, "--brightness-contrast"},
        {c.hsv_shift > 0, "--hsv-shift"},
        {c.random_erase > 0, "--random-erase"},
        {c.vflip > 0, "--vflip"},
    };
    for (const auto& [on, flag] : host_only)
      if (on) return std::string(flag) + " runs on the host";
    if (!c.random_resized_crop.empty()) return "--random-resized-crop crops each image on the host";
  } else if (c.crop_pct < 1) {
    return "--crop-pct resizes and centre-crops each image on the host";
  }
  const data::Image first = ds.get(0).image;
  if (first.h != height || first.w != width)
    return "the images are " + std::to_string(first.h) + "x" + std::to_string(first.w) + " and need resizing to " +
           std::to_string(height) + "x" + std::to_string(width);
  return "";
}

LoaderChoice make_loader(const TrainConfig& c, std::shared_ptr<const data::Dataset> ds, const data::LoaderOptions& lo,
                         bool train, int height, int width, const Normalization& n, int64_t num_classes,
                         Device device) {
  const std::string why_not = resident_unsupported(c, train, *ds, height, width);
  KCHECK(c.loader != "resident" || why_not.empty(), ValueError, "--loader resident cannot be used: ", why_not);
  LoaderChoice choice;
  if (c.loader == "auto" && device.is_cuda()) {
    if (!why_not.empty())
      choice.why_threads = why_not;
    else if (c.dataset == "folder")
      choice.why_threads = "image folders may hold images of several sizes";
    else if (data::resident_size_bytes(*ds) > kAutoResidentBytes)
      choice.why_threads = "the images take more than 4 GiB";
  }
  const bool resident =
      c.loader == "resident" || (c.loader == "auto" && device.is_cuda() && choice.why_threads.empty());
  choice.resident = resident;
  if (resident) {
    choice.loader = std::make_unique<data::ResidentLoader>(
        *ds, lo, train ? resident_train_augment(c, height, n) : resident_eval_augment(n),
        train ? batch_mixer(c) : data::BatchMixer(), num_classes, device);
  } else {
    choice.loader = std::make_unique<data::DataLoader>(
        ds, lo, train ? train_transform(c, height, width, n) : eval_transform(height, width, n, c.crop_pct),
        train ? batch_mixing(c, num_classes) : data::BatchTransform());
  }
  return choice;
}

data::BatchMixer batch_mixer(const TrainConfig& c) {
  const double total = c.mixup + c.cutmix + c.ricap;
  if (total <= 0) return {};
  KCHECK(total <= 1.0 + 1e-9, ValueError, "--mixup + --cutmix + --ricap probabilities sum to ", total,
         "; they are exclusive per batch, so the sum must be at most 1");
  return data::choose_mixer({{c.mixup, data::mixup_mixer(c.mix_alpha)},
                             {c.cutmix, data::cutmix_mixer(c.mix_alpha)},
                             {c.ricap, data::ricap_mixer(0.3)}});
}

data::BatchTransform batch_mixing(const TrainConfig& c, int64_t num_classes) {
  data::BatchMixer mixer = batch_mixer(c);
  if (!mixer) return {};
  return data::mixing_transform(std::move(mixer), num_classes);
}

}  // namespace kestrel::tools
