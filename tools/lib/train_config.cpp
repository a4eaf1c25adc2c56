#include "tools/lib/train_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "engine/text.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/distill.h"

namespace kestrel::tools {

#define KESTREL_CONFIG_FIELDS(X)                                                                               \
  X(model) X(num_classes) X(width_mult) X(depth_mult) X(image_size) X(stem) X(dropout) X(drop_path)            \
  X(dataset) X(data_dir) X(limit_train) X(limit_test) X(test_split) X(skip_bad) X(workers) X(loader)           \
  X(epochs) X(batch_size) X(lr) X(lr_base) X(lr_base_size) X(lr_base_scale) X(optimizer) X(momentum)           \
  X(nesterov) X(weight_decay) X(warmup_epochs) X(warmup_lr) X(schedule) X(step_size) X(milestones)             \
  X(step_gamma) X(plateau_patience) X(min_lr) X(adam_betas) X(adam_eps) X(rmsprop_alpha) X(rmsprop_eps)        \
  X(label_smoothing) X(loss) X(focal_gamma) X(clip_grad) X(grad_accum) X(ema) X(amp) X(early_stop)             \
  X(eval_metric) X(checkpoint_hist) X(mixup) X(cutmix) X(ricap) X(mix_alpha) X(mixup_off_epoch) X(auto_augment) X(randaugment)    \
  X(random_crop) X(hflip) X(cutout) X(seed) X(device) X(out) X(teacher) X(distill_alpha)                       \
  X(distill_temperature) X(quantize_from) X(calib_batches) X(initial_checkpoint) X(mean) X(std) X(precise_bn)  \
  X(save_every_steps) X(rotation) X(color_jitter) X(shift_scale_rotate) X(ssr_limits) X(brightness_contrast)   \
  X(hsv_shift) X(random_resized_crop) X(crop_pct) X(random_erase) X(vflip)

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j;
#define X(name) j[#name] = name;
  KESTREL_CONFIG_FIELDS(X)
#undef X
  return j;
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  TrainConfig c;
  c.update_from_json(j);
  return c;
}

void TrainConfig::update_from_json(const nlohmann::json& given) {
  nlohmann::json j = given;
  // Before 2026-11-26 a flip was on or off, and on was a coin toss.
  if (j.contains("hflip") && j["hflip"].is_boolean()) j["hflip"] = j["hflip"].get<bool>() ? 0.5 : 0.0;
#define X(name) \
  if (j.contains(#name)) j.at(#name).get_to(name);
  KESTREL_CONFIG_FIELDS(X)
#undef X
}

double TrainConfig::lr_from_base() const {
  const double ratio = static_cast<double>(batch_size * grad_accum) / static_cast<double>(lr_base_size);
  return lr_base * (lr_base_uses_sqrt() ? std::sqrt(ratio) : ratio);
}

bool TrainConfig::lr_base_uses_sqrt() const {
  return lr_base_scale == "sqrt" || (lr_base_scale == "auto" && optimizer == "adamw");
}

std::string TrainConfig::flag_of(const std::string& key) {
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

namespace {

// "a,b,c" as numbers: between min_count and max_count of them, nothing else.
std::vector<double> numbers_in(const std::string& text, size_t min_count, size_t max_count, const std::string& flag,
                               const char* expected) {
  std::vector<double> out;
  size_t pos = 0;
  bool ok = !text.empty();
  while (ok && pos <= text.size() && out.size() < max_count) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    ok = !item.empty() && end == item.c_str() + item.size() && std::isfinite(v);
    out.push_back(v);
    pos = comma + 1;
  }
  ok = ok && pos > text.size() && out.size() >= min_count;
  KCHECK(ok, ValueError, flag, " expects ", expected, ", got '", text, "'");
  return out;
}

}  // namespace

std::array<int, 2> TrainConfig::randaugment_n_m() const {
  const char* expected = "N,M with N in [1, 100] and M in [0, 30], whole numbers (e.g. 2,9)";
  const std::vector<double> v = numbers_in(randaugment, 2, 2, "--randaugment", expected);
  KCHECK(v[0] >= 1 && v[0] <= 100 && v[0] == std::floor(v[0]) && v[1] >= 0 && v[1] <= 30 && v[1] == std::floor(v[1]),
         ValueError, "--randaugment expects ", expected, ", got '", randaugment, "'");
  return {static_cast<int>(v[0]), static_cast<int>(v[1])};
}

std::array<float, 4> TrainConfig::color_jitter_amounts() const {
  const char* expected = "B,C,S or B,C,S,H: amounts >= 0, hue at most 0.5 (e.g. 0.4,0.4,0.4)";
  std::vector<double> v = numbers_in(color_jitter, 3, 4, "--color-jitter", expected);
  v.resize(4, 0.0);
  KCHECK(v[0] >= 0 && v[1] >= 0 && v[2] >= 0 && v[3] >= 0 && v[3] <= 0.5, ValueError, "--color-jitter expects ",
         expected, ", got '", color_jitter, "'");
  return {static_cast<float>(v[0]), static_cast<float>(v[1]), static_cast<float>(v[2]), static_cast<float>(v[3])};
}

std::array<double, 3> TrainConfig::shift_scale_rotate_limits() const {
  const char* expected =
      "SHIFT,SCALE,DEGREES with SHIFT in [0, 1], SCALE in [0, 1), DEGREES in [0, 180] (e.g. 0.0625,0.1,45)";
  const std::vector<double> v = numbers_in(ssr_limits, 3, 3, "--ssr-limits", expected);
  KCHECK(v[0] >= 0 && v[0] <= 1 && v[1] >= 0 && v[1] < 1 && v[2] >= 0 && v[2] <= 180, ValueError,
         "--ssr-limits expects ", expected, ", got '", ssr_limits, "'");
  return {v[0], v[1], v[2]};
}

std::vector<int64_t> TrainConfig::milestone_epochs() const {
  if (milestones.empty()) return {};
  const char* expected = "ascending whole epochs, at least 1 (e.g. 60,120,160)";
  const std::vector<double> v = numbers_in(milestones, 1, 64, "--milestones", expected);
  std::vector<int64_t> out;
  for (double e : v) {
    KCHECK(e >= 1 && e == std::floor(e) && (out.empty() || e > static_cast<double>(out.back())) && e <= 1e6,
           ValueError, "--milestones expects ", expected, ", got '", milestones, "'");
    out.push_back(static_cast<int64_t>(e));
  }
  return out;
}

std::array<double, 2> TrainConfig::adam_beta_values() const {
  const char* expected = "B1,B2 with each in [0, 1) (e.g. 0.9,0.999)";
  const std::vector<double> v = numbers_in(adam_betas, 2, 2, "--adam-betas", expected);
  KCHECK(v[0] >= 0 && v[0] < 1 && v[1] >= 0 && v[1] < 1, ValueError, "--adam-betas expects ", expected, ", got '",
         adam_betas, "'");
  return {v[0], v[1]};
}

std::array<double, 2> TrainConfig::random_resized_crop_area() const {
  const char* expected = "MIN,MAX area fractions with 0 < MIN <= MAX <= 1 (e.g. 0.08,1)";
  const std::vector<double> v = numbers_in(random_resized_crop, 2, 2, "--random-resized-crop", expected);
  KCHECK(v[0] > 0 && v[0] <= v[1] && v[1] <= 1, ValueError, "--random-resized-crop expects ", expected, ", got '",
         random_resized_crop, "'");
  return {v[0], v[1]};
}

std::vector<float> TrainConfig::mean_values() const {
  if (mean.empty()) return {};
  const std::vector<double> v = numbers_in(mean, 1, 4, "--mean", "one number per channel (e.g. 0.485,0.456,0.406)");
  return {v.begin(), v.end()};
}

std::vector<float> TrainConfig::std_values() const {
  if (std.empty()) return {};
  const char* expected = "one positive number per channel (e.g. 0.229,0.224,0.225)";
  const std::vector<double> v = numbers_in(std, 1, 4, "--std", expected);
  for (double s : v) KCHECK(s > 0, ValueError, "--std expects ", expected, ", got '", std, "'");
  return {v.begin(), v.end()};
}

namespace {
void one_of(const std::string& flag, const std::string& value, std::initializer_list<const char*> valid) {
  if (std::any_of(valid.begin(), valid.end(), [&value](const char* v) { return value == v; })) return;
  throw ValueError("--" + flag + " '" + value + "' is not one of: " + join(valid, ", "));
}
}  // namespace

void TrainConfig::validate() const {
  // inf and nan pass the range checks below (nan fails every comparison, but
  // inf > 0 holds): name them first.
  const nlohmann::json fields = to_json();
  for (const auto& [key, value] : fields.items())
    KCHECK(!value.is_number_float() || std::isfinite(value.get<double>()), ValueError, flag_of(key),
           " must be a finite number, got ", value.get<double>());
  KCHECK(num_classes >= 0, ValueError, "--num-classes must be positive (or 0: from the data set), got ", num_classes);
  one_of("stem", stem, {"auto", "cifar", "model"});
  one_of("dataset", dataset, {"cifar10", "cifar100", "cifar100-coarse", "fashion-mnist", "mnist", "folder"});
  one_of("optimizer", optimizer, {"sgd", "adamw", "rmsprop"});
  one_of("schedule", schedule, {"cosine", "step", "onecycle", "plateau"});
  one_of("lr-base-scale", lr_base_scale, {"auto", "linear", "sqrt"});
  KCHECK(lr_base >= 0 && lr_base_size >= 1, ValueError, "--lr-base must be >= 0 (0: off) and --lr-base-size >= 1, "
         "got ", lr_base, " and ", lr_base_size);
  KCHECK(lr_base > 0 || (lr_base_size == TrainConfig{}.lr_base_size && lr_base_scale == TrainConfig{}.lr_base_scale),
         ValueError, "--lr-base-size and --lr-base-scale shape --lr-base, which this run does not set");
  one_of("loss", loss, {"ce", "focal"});
  one_of("amp", amp, {"off", "fp16", "bf16"});
  one_of("loader", loader, {"auto", "threads", "resident"});
  one_of("eval-metric", eval_metric, {"top1", "top5", "loss"});
  // A qat run of 0 epochs is post-training quantization: calibration alone.
  KCHECK(epochs > 0 || (epochs == 0 && !quantize_from.empty()), ValueError,
         quantize_from.empty() ? "--epochs must be positive, got " : "--epochs must be 0 (calibration alone) or more, got ",
         epochs);
  // Far beyond any real run, and epochs * steps stays inside 64 bits.
  KCHECK(epochs <= 1000000, ValueError, "--epochs must be at most 1000000, got ", epochs);
  KCHECK(batch_size > 0, ValueError, "--batch-size must be positive, got ", batch_size);
  KCHECK(limit_train >= 0 && limit_test >= 0, ValueError, "--limit-train and --limit-test must be >= 0 (0: all), got ",
         limit_train, " and ", limit_test);
  KCHECK(early_stop >= 0, ValueError, "--early-stop must be >= 0 (0: off), got ", early_stop);
  KCHECK(checkpoint_hist >= 0, ValueError, "--checkpoint-hist must be >= 0 (0: off), got ", checkpoint_hist);
  KCHECK(checkpoint_hist == 0 || quantize_from.empty(), ValueError,
         "--checkpoint-hist: kestrel qat keeps no epoch checkpoints (int8 checkpoints are not averaged; average the "
         "float run's, then quantize that)");
  KCHECK(save_every_steps >= 0, ValueError, "--save-every-steps must be >= 0 (0: at epoch ends only), got ",
         save_every_steps);
  KCHECK(precise_bn >= 0, ValueError, "--precise-bn must be >= 0 (0: off), got ", precise_bn);
  KCHECK(precise_bn == 0 || quantize_from.empty(), ValueError,
         "--precise-bn recomputes batch-norm statistics, and a quantized model's norms are folded");
  KCHECK(calib_batches >= 0, ValueError, "--calib-batches must be >= 0 (0: all), got ", calib_batches);
  KCHECK(dropout == -1.0 || (dropout >= 0 && dropout < 1), ValueError, "--dropout must be in [0, 1), got ", dropout);
  KCHECK(drop_path == -1.0 || (drop_path >= 0 && drop_path < 1), ValueError, "--drop-path must be in [0, 1), got ",
         drop_path);
  KCHECK(schedule != "step" || (step_size >= 1 && step_gamma > 0), ValueError,
         "--schedule step needs --step-size >= 1 and --step-gamma > 0, got ", step_size, " and ", step_gamma);
  KCHECK(milestones.empty() || schedule == "step", ValueError, "--milestones are the epochs --schedule step decays at; "
         "this run's schedule is ", schedule);
  milestone_epochs();
  const std::string lr_source = lr_base > 0 ? " (--lr from --lr-base)" : "";
  KCHECK(lr > 0, ValueError, "--lr must be positive, got ", lr, lr_source);  // before the checks that compare to it
  KCHECK(min_lr >= 0 && min_lr < lr, ValueError, "--min-lr must be in [0, --lr) = [0, ", lr, ")", lr_source, ", got ",
         min_lr);
  KCHECK(min_lr == 0 || schedule == "cosine" || schedule == "plateau", ValueError, "--min-lr is where --schedule "
         "cosine ends (or plateau's floor); this run's schedule is ", schedule);
  KCHECK(schedule != "plateau" || (step_gamma > 0 && step_gamma < 1), ValueError,
         "--schedule plateau needs --step-gamma in (0, 1) (the decay factor), got ", step_gamma);
  KCHECK(plateau_patience >= 0, ValueError, "--plateau-patience must be >= 0, got ", plateau_patience);
  KCHECK(plateau_patience == TrainConfig{}.plateau_patience || schedule == "plateau", ValueError,
         "--plateau-patience is --schedule plateau's; this run's schedule is ", schedule);
  adam_beta_values();
  KCHECK(adam_eps > 0, ValueError, "--adam-eps must be positive, got ", adam_eps);
  KCHECK(optimizer == "adamw" || (adam_betas == TrainConfig{}.adam_betas && adam_eps == TrainConfig{}.adam_eps),
         ValueError, "--adam-betas and --adam-eps are AdamW's; this run's optimizer is ", optimizer);
  KCHECK(rmsprop_alpha >= 0 && rmsprop_alpha < 1, ValueError, "--rmsprop-alpha must be in [0, 1), got ",
         rmsprop_alpha);
  KCHECK(rmsprop_eps > 0, ValueError, "--rmsprop-eps must be positive, got ", rmsprop_eps);
  KCHECK(optimizer == "rmsprop" ||
             (rmsprop_alpha == TrainConfig{}.rmsprop_alpha && rmsprop_eps == TrainConfig{}.rmsprop_eps),
         ValueError, "--rmsprop-alpha and --rmsprop-eps are RMSprop's; this run's optimizer is ", optimizer);
  KCHECK(mix_alpha > 0, ValueError, "--mix-alpha must be positive, got ", mix_alpha);
  KCHECK(mixup_off_epoch >= 0, ValueError, "--mixup-off-epoch must be >= 0 (0: mix in every epoch), got ",
         mixup_off_epoch);
  KCHECK(mixup_off_epoch == 0 || mixup > 0 || cutmix > 0 || ricap > 0, ValueError,
         "--mixup-off-epoch ends --mixup, --cutmix and --ricap, and this run uses none of them");
  KCHECK(focal_gamma >= 0, ValueError, "--focal-gamma must be >= 0 (0: cross-entropy), got ", focal_gamma);
  // The focal loss is defined on hard labels; soft targets would silently drop it.
  KCHECK(loss != "focal" || (label_smoothing == 0 && mixup == 0 && cutmix == 0 && ricap == 0), ValueError,
         "--loss focal takes hard labels: it cannot be combined with --label-smoothing, --mixup, --cutmix or --ricap");
  if (!randaugment.empty()) randaugment_n_m();
  KCHECK(!(auto_augment && !randaugment.empty()), ValueError,
         "--auto-augment and --randaugment are two policies for one step; pick one");
  KCHECK(momentum >= 0 && momentum < 1, ValueError, "--momentum must be in [0, 1), got ", momentum);
  if (!color_jitter.empty()) color_jitter_amounts();
  KCHECK(mean_values().size() == std_values().size(), ValueError,
         "--mean and --std go together, one number per channel each; got '", mean, "' and '", std, "'");
  shift_scale_rotate_limits();
  if (!random_resized_crop.empty()) random_resized_crop_area();
  KCHECK(crop_pct > 0 && crop_pct <= 1, ValueError, "--crop-pct must be in (0, 1] (1: the whole image), got ",
         crop_pct);
  KCHECK(rotation >= 0 && rotation <= 180, ValueError, "--rotation must be in [0, 180] degrees (0: off), got ",
         rotation);
  KCHECK(grad_accum >= 1, ValueError, "--grad-accum must be at least 1, got ", grad_accum);
  KCHECK(label_smoothing >= 0 && label_smoothing < 1, ValueError, "--label-smoothing must be in [0, 1), got ",
         label_smoothing);
  KCHECK(ema == 0 || (ema > 0 && ema < 1), ValueError, "--ema decay must be in (0, 1), got ", ema);
  const std::pair<const char*, double> probabilities[] = {
      {"mixup", mixup},   {"cutmix", cutmix},
      {"ricap", ricap},   {"cutout", cutout}, {"random_erase", random_erase}, {"hflip", hflip}, {"vflip", vflip},
      {"hsv_shift", hsv_shift}, {"shift_scale_rotate", shift_scale_rotate},
      {"brightness_contrast", brightness_contrast}};
  for (const auto& [key, p] : probabilities)
    KCHECK(p >= 0 && p <= 1, ValueError, flag_of(key), " is a probability: it must be in [0, 1], got ", p);
  KCHECK(workers >= 0, ValueError, "--workers must be >= 0");
  KCHECK(dataset != "folder" || !data_dir.empty(), ValueError, "--dataset folder needs --data-dir");
  KCHECK(test_split > 0 && test_split < 1, ValueError, "--test-split must be in (0, 1), got ", test_split);
  KCHECK(dataset == "folder" || test_split == kDefaultTestSplit, ValueError, "--test-split splits an image folder; ",
         dataset, " has its own test set");
  KCHECK(clip_grad >= 0, ValueError, "--clip-grad must be >= 0");
  KCHECK(warmup_epochs >= 0, ValueError, "--warmup-epochs must be >= 0");
  KCHECK(warmup_lr == -1.0 || (warmup_lr >= 0 && warmup_lr <= lr), ValueError,
         "--warmup-lr must be in [0, --lr] = [0, ", lr, "]", lr_source, ", got ", warmup_lr);
  KCHECK(warmup_lr == -1.0 || schedule != "onecycle", ValueError,
         "--warmup-lr is where a warmup starts, and --schedule onecycle ramps up by itself (from --lr / 25)");
  KCHECK(width_mult > 0 && depth_mult > 0, ValueError, "--width-mult and --depth-mult must be positive");
  KCHECK(image_size == 0 || (image_size >= 8 && image_size <= 1024), ValueError,
         "--image-size must be in [8, 1024] (or 0 for the data's own size), got ", image_size);
  KCHECK(distill_alpha >= 0 && distill_alpha <= 1, ValueError, "--distill-alpha must be in [0, 1], got ",
         distill_alpha);
  KCHECK(distill_temperature > 0, ValueError, "--distill-temperature must be positive, got ", distill_temperature);
  KCHECK(quantize_from.empty() || amp == "off", ValueError,
         "quantization-aware training runs in f32: --amp must be off, got ", amp);
  if (!quantize_from.empty()) check_checkpoint_path(quantize_from, "float checkpoint");
  KCHECK(initial_checkpoint.empty() || quantize_from.empty(), ValueError,
         "--initial-checkpoint is for float runs; kestrel qat starts from its --checkpoint");
  if (!initial_checkpoint.empty()) check_checkpoint_path(initial_checkpoint, "--initial-checkpoint");
  for (const std::string& path : split_paths(teacher))  // before the run folder is touched
    check_checkpoint_path(path, "--teacher checkpoint");
}

}  // namespace kestrel::tools
