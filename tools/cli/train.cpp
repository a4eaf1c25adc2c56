// kestrel train: flags (or a recipe file with the same keys) -> a training run.
#include <CLI/CLI.hpp>
#include <iostream>
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include "engine/dist/process_group.h"
#include "engine/error.h"
#include "engine/text.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/qat.h"
#include "tools/lib/trainer.h"

namespace kestrel::cli {

void set_exit_status(int status);  // main.cpp: what the process returns

namespace {

// --hflip: a probability as timm's, or on/off words as before 2026-11-26 (on: a coin toss).
double flip_probability(const std::string& text) {
  std::string word = text;
  std::transform(word.begin(), word.end(), word.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (const char* on : {"true", "on", "yes", "enable"})
    if (word == on) return 0.5;
  for (const char* off : {"false", "off", "no", "disable"})
    if (word == off) return 0.0;
  char* end = nullptr;
  const double p = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !(p >= 0 && p <= 1))
    throw CLI::ValidationError("--hflip", "expects a probability in [0, 1] (true = 0.5, false = 0), got '" + text +
                                              "'");
  // Before 2026-11-26, 1 meant on; now it mirrors every image.
  if (p == 1) std::cerr << "note: --hflip 1 mirrors every image (it is a probability; true = 0.5)\n";
  return p;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// Reads `key = value` lines (a TOML subset: comments, quoted strings, numbers,
// booleans) and gives each key to the option of the same long name, unless the
// command line already set it.
void apply_recipe(CLI::App& cmd, const std::string& path) {
  KCHECK(std::filesystem::is_regular_file(path), IOError, "--config ", path,
         std::filesystem::is_directory(path) ? " is a folder, not a recipe file" : ": no such recipe file");
  std::ifstream in(path);
  KCHECK(in.good(), IOError, "cannot read recipe file ", path);
  std::string line;
  std::set<std::string> seen;
  // A rate given on the command line sets it in both of its forms: the
  // recipe's other form (--lr-base with its size and scale) gives way, as
  // any recipe key does to its flag.
  const bool command_lr = cmd.get_option("--lr")->count() > 0;
  const bool command_lr_base = cmd.get_option("--lr-base")->count() > 0;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    KCHECK(line[0] != '[', ValueError, path, ":", lineno, ": '", line, "': a recipe is flat key = value lines, "
           "without [sections]");
    const size_t eq = line.find('=');
    KCHECK(eq != std::string::npos, ValueError, path, ":", lineno, ": expected key = value, got '", line, "'");
    std::string key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    std::replace(key.begin(), key.end(), '_', '-');
    std::string rest;  // what follows the value: nothing, or a comment
    if (!value.empty() && value.front() == '"') {
      const size_t close = value.find('"', 1);
      KCHECK(close != std::string::npos, ValueError, path, ":", lineno, ": unterminated string for '", key, "'");
      rest = trim(value.substr(close + 1));
      value = value.substr(1, close - 1);
    } else if (const size_t hash = value.find('#'); hash != std::string::npos) {
      rest = value.substr(hash);
      value = trim(value.substr(0, hash));
    }
    KCHECK(rest.empty() || rest[0] == '#', ValueError, path, ":", lineno, ": unexpected '", rest, "' after the value of '",
           key, "'");
    CLI::Option* opt = cmd.get_option_no_throw("--" + key);
    KCHECK(opt != nullptr && key != "config", ValueError, path, ":", lineno, ": unknown key '", key, "' (keys are the long flags of kestrel ",
           cmd.get_name(), ")");
    KCHECK(seen.insert(key).second, ValueError, path, ":", lineno, ": '", key, "' is set twice");
    if (opt->count() > 0) continue;  // the command line wins
    if ((key == "lr" && command_lr_base) || (key.rfind("lr-base", 0) == 0 && command_lr)) continue;
    try {
      opt->add_result(value);
      opt->run_callback();
    } catch (const CLI::Error& e) {
      throw ValueError(detail::concat(path, ":", lineno, ": ", key, " = ", value, ": ", e.what()));
    }
  }
}

// What the command asks for: every option it gave, as a flag or a recipe
// key, even one equal to the default; to_json() keys and values.
nlohmann::json requested_options(const tools::TrainConfig& c, const CLI::App& cmd, const nlohmann::json& defaults) {
  nlohmann::json requested = nlohmann::json::object();
  const nlohmann::json now = c.to_json();
  for (const auto& [key, value] : now.items()) {
    const CLI::Option* opt = cmd.get_option_no_throw(tools::TrainConfig::flag_of(key));
    // Keys with no option of their name (qat's --checkpoint) count when they differ from the default.
    if (opt != nullptr ? opt->count() > 0 : defaults[key] != value) requested[key] = value;
  }
  return requested;
}

// --resume continues a run exactly as it was set up: a command that asks
// for something else (more epochs, another teacher) would be silently
// ignored, so it is refused.
void refuse_to_change_a_resumed_run(const tools::TrainConfig& c, const CLI::App& cmd, const nlohmann::json& defaults) {
  const nlohmann::json requested = requested_options(c, cmd, defaults);
  const std::vector<std::string> conflicts = tools::resume_conflicts(c.out, requested);
  KCHECK(conflicts.empty(), ValueError, "--resume continues ", c.out, " as it was set up, but this command",
         c.recipe_file.empty() ? "" : " and its recipe " + c.recipe_file, " changes ", join(conflicts, ", "),
         "; drop those flags, or start a new run from its weights with --initial-checkpoint ", c.out,
         "/last.safetensors");
}

// Defaults that follow other settings, where neither the command nor its
// recipe sets them: AdamW takes PyTorch's rate and decay and RMSprop its rate
// (SGD's 0.1 is far too high for them), digits are not mirrored (a mirrored 2
// is no digit), and a random resized crop is not cropped again with padding.
void apply_dependent_defaults(tools::TrainConfig& c, const CLI::App& cmd) {
  const auto given = [&cmd](const char* flag) {
    const CLI::Option* opt = cmd.get_option_no_throw(flag);
    return opt != nullptr && opt->count() > 0;
  };
  if (c.optimizer == "adamw") {
    if (!given("--lr")) c.lr = 1e-3;
    if (!given("--weight-decay")) c.weight_decay = 0.01;
  }
  if (c.optimizer == "rmsprop" && !given("--lr")) c.lr = 1e-3;  // Keras's; with --momentum 0.9 the step is 10x
  if (c.dataset == "mnist" && !given("--hflip")) c.hflip = 0.0;
  if (!c.random_resized_crop.empty() && !given("--random-crop")) c.random_crop = false;
}

// "best top-1 91.20%", or by another --eval-metric "best val loss 0.2513 (top-1 91.20%)".
std::string best_words(const tools::TrainSummary& s) {
  char b[96];
  if (s.eval_metric == "loss")
    std::snprintf(b, sizeof(b), "best val loss %.4f (top-1 %.2f%%)", -s.best_score, 100 * s.best_top1);
  else if (s.eval_metric == "top5")
    std::snprintf(b, sizeof(b), "best top-5 %.2f%% (top-1 %.2f%%)", 100 * s.best_score, 100 * s.best_top1);
  else
    std::snprintf(b, sizeof(b), "best top-1 %.2f%%", 100 * s.best_top1);
  return b;
}

// `kestrel train`; `kestrel distill`, the same run, which must name its
// teachers; `kestrel qat`, the same run from a float checkpoint, whose model it keeps.
enum class Kind { Train, Distill, Qat };

void add_training_command(CLI::App& app, const std::string& name, const std::string& help, Kind kind) {
  auto c = std::make_shared<tools::TrainConfig>();
  if (kind == Kind::Qat) {  // a short fine-tune of a trained model
    c->epochs = 3;
    c->lr = 0.001;  // without batch norms to absorb it, a float run's rate undoes the calibration
    c->warmup_epochs = 0;
    c->out = "runs/qat";
  }
  auto no_progress = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand(name, help);
  auto recipe = std::make_shared<std::string>();
  cmd->add_option("--config", *recipe, "recipe file (key = value lines, keys as the long flags); command-line flags win");
  if (kind == Kind::Qat) {
    cmd->add_option("--checkpoint,-c", c->quantize_from,
                    "the float checkpoint to quantize (its model and data set are kept, and its run's data "
                    "folder and augmentation unless flags say otherwise); required");
    cmd->add_option("--calib-batches", c->calib_batches,
                    "training batches that calibrate the activation ranges first (0 = all)")->capture_default_str();
  } else {
    cmd->add_option("--model,-m", c->model, "model name (kestrel summary --list)")->capture_default_str();
    cmd->add_option("--num-classes", c->num_classes, "classifier outputs (default: from the data set)");
    cmd->add_option("--width-mult", c->width_mult, "channel multiplier")->capture_default_str();
    cmd->add_option("--depth-mult", c->depth_mult, "layer-repeat multiplier (EfficientNet)")->capture_default_str();
    cmd->add_option("--image-size", c->image_size,
                    "train and evaluate at this square size (images resized); 0 = as stored")->capture_default_str();
    cmd->add_option("--initial-checkpoint", c->initial_checkpoint,
                    "start from these weights: a Kestrel checkpoint or a torchvision/timm state_dict in safetensors "
                    "(tools/torch_weights.py); a classifier of another class count starts fresh");
    cmd->add_option("--mean", c->mean,
                    "input normalization, one mean per channel (e.g. 0.485,0.456,0.406; default: the first "
                    "teacher's or the initial checkpoint's when it records one, else the data set's)");
    cmd->add_option("--std", c->std, "input normalization, one standard deviation per channel (with --mean)");
  }
  cmd->add_option("--stem", c->stem, "auto (the stride-1 CIFAR stem at 64 px and below), cifar, or model (its own)")
      ->capture_default_str();
  cmd->add_option("--dropout", c->dropout, "classifier dropout (default: the model's)");
  cmd->add_option("--drop-path", c->drop_path, "stochastic depth rate (default: the model's)");
  if (kind == Kind::Qat)
    cmd->add_option("--dataset", c->dataset, "cifar10, cifar100 (cifar100-coarse: its 20 superclasses), fashion-mnist, mnist or folder (default: the checkpoint's)");
  else
    cmd->add_option("--dataset", c->dataset, "cifar10, cifar100 (cifar100-coarse: its 20 superclasses), fashion-mnist, mnist or folder")->capture_default_str();
  cmd->add_option("--data-dir", c->data_dir,
                  kind == Kind::Qat ? "data location (default: the float run's when it is the same data set, else "
                                      "the data set's standard place)"
                                    : "data location (default: the data set's standard place)");
  cmd->add_option("--limit-train", c->limit_train, "use only N training images (the first; an image folder's spread over its classes)");
  cmd->add_option("--limit-test", c->limit_test, "use only N test images (the first; an image folder's spread over its classes)");
  cmd->add_option("--test-split", c->test_split,
                  "--dataset folder without train/ and test/: the fraction of each class held out for testing "
                  "(the same images in every run)")
      ->capture_default_str();
  cmd->add_flag("--skip-bad", c->skip_bad, "warn about and skip unreadable images instead of stopping");
  cmd->add_option("--workers", c->workers, "data loader threads")->capture_default_str();
  cmd->add_option("--loader", c->loader,
                  "auto, threads or resident (images kept on the device, batches built there; "
                  "auto: resident on CUDA when the augmentations allow)")
      ->capture_default_str();
  cmd->add_option("--epochs", c->epochs, kind == Kind::Qat ? "epochs (0: post-training quantization only)" : "epochs")
      ->capture_default_str();
  cmd->add_option("--batch-size,-b", c->batch_size,
                 "batch size (of one whole step: under mpirun, shared among the processes)")->capture_default_str();
  cmd->add_option("--lr", c->lr,
                  kind == Kind::Qat ? "peak learning rate (default: 0.001)"
                                    : "peak learning rate (default: 0.1 with sgd, 0.001 with adamw and rmsprop)");
  cmd->add_option("--lr-base", c->lr_base,
                  "instead of --lr: the rate for a batch of --lr-base-size, scaled to this run's batch x "
                  "--grad-accum (timm's --lr-base); 0 = off")
      ->capture_default_str();
  cmd->add_option("--lr-base-size", c->lr_base_size, "the batch --lr-base is for")->capture_default_str();
  cmd->add_option("--lr-base-scale", c->lr_base_scale,
                  "how --lr-base scales with the batch: linear, sqrt, or auto (sqrt for adamw, else linear)")
      ->capture_default_str();
  cmd->add_option("--optimizer", c->optimizer, "sgd, adamw or rmsprop")->capture_default_str();
  cmd->add_option("--adam-betas", c->adam_betas, "AdamW's B1,B2")->capture_default_str();
  cmd->add_option("--adam-eps", c->adam_eps, "AdamW's epsilon")->capture_default_str();
  cmd->add_option("--rmsprop-alpha", c->rmsprop_alpha, "RMSprop's smoothing constant (torch's rule)")
      ->capture_default_str();
  cmd->add_option("--rmsprop-eps", c->rmsprop_eps, "RMSprop's epsilon")->capture_default_str();
  cmd->add_option("--momentum", c->momentum, "SGD and RMSprop momentum")->capture_default_str();
  cmd->add_option("--nesterov", c->nesterov, "Nesterov momentum for SGD (true/false)")->capture_default_str();
  cmd->add_option("--weight-decay", c->weight_decay,
                  kind == Kind::Qat ? "weight decay, not on biases and norms (default: 0.0005)"
                                    : "weight decay, not on biases and norms (default: 0.0005 with sgd, 0.01 with "
                                      "adamw)");
  cmd->add_option("--warmup-epochs", c->warmup_epochs,
                  "linear warmup, at most half the run (cosine, step and plateau; onecycle ramps up by itself)")
      ->capture_default_str();
  cmd->add_option("--warmup-lr", c->warmup_lr, "the rate the warmup starts from (default: 1% of --lr)");
  cmd->add_option("--schedule", c->schedule,
                  "cosine, step, onecycle or plateau (decay when --eval-metric stops improving, as torch's "
                  "ReduceLROnPlateau)")
      ->capture_default_str();
  cmd->add_option("--step-size", c->step_size, "epochs between decays for --schedule step")->capture_default_str();
  cmd->add_option("--milestones", c->milestones,
                  "for --schedule step: decay at these epochs (e.g. 60,120,160) instead of every --step-size");
  cmd->add_option("--min-lr", c->min_lr, "where --schedule cosine ends; the floor of --schedule plateau")
      ->capture_default_str();
  cmd->add_option("--step-gamma", c->step_gamma, "decay factor for --schedule step and plateau")->capture_default_str();
  cmd->add_option("--plateau-patience", c->plateau_patience,
                  "--schedule plateau: decay after more than N epochs without improvement")
      ->capture_default_str();
  cmd->add_option("--label-smoothing", c->label_smoothing, "label smoothing")->capture_default_str();
  cmd->add_option("--loss", c->loss, "ce or focal")->capture_default_str();
  cmd->add_option("--focal-gamma", c->focal_gamma, "focal loss gamma")->capture_default_str();
  cmd->add_option("--mixup", c->mixup, "probability of MixUp per batch")->capture_default_str();
  cmd->add_option("--cutmix", c->cutmix, "probability of CutMix per batch")->capture_default_str();
  cmd->add_option("--ricap", c->ricap, "probability of RICAP per batch")->capture_default_str();
  cmd->add_option("--mix-alpha", c->mix_alpha, "Beta(alpha, alpha) for MixUp/CutMix")->capture_default_str();
  cmd->add_option("--mixup-off-epoch", c->mixup_off_epoch,
                  "mix batches (--mixup, --cutmix, --ricap) in the first N epochs only, as timm's; 0 = every epoch")
      ->capture_default_str();
  cmd->add_flag("--auto-augment", c->auto_augment, "AutoAugment CIFAR-10 policy");
  cmd->add_option("--randaugment", c->randaugment, "RandAugment N,M (e.g. 2,9)");
  const bool qat = kind == Kind::Qat;
  cmd->add_option("--random-crop", c->random_crop,
                  qat ? "random crop with padding, true/false (default: the float run's)"
                      : "random crop with padding, true/false (default: true, but false with --random-resized-crop)");
  cmd->add_option("--random-resized-crop", c->random_resized_crop,
                  std::string("MIN,MAX: crop a random MIN to MAX of each image's area (aspect 3/4 to 4/3) and resize "
                              "it to the model's size, as torchvision's RandomResizedCrop (e.g. 0.08,1); default: ") +
                      (qat ? "the float run's" : "off"));
  cmd->add_option("--crop-pct", c->crop_pct,
                  std::string("evaluate on the centre crop_pct of each image (scaled to cover the size / crop_pct, "
                              "aspect kept, as timm); 1 = the whole image resized; saved in the checkpoints for eval "
                              "and predict; default: ") +
                      (qat ? "the float checkpoint's" : "1"));
  cmd->add_option_function<std::string>(
      "--hflip", [c](const std::string& text) { c->hflip = flip_probability(text); },
      qat ? "probability of a horizontal flip per image; true = 0.5, false = 0 (default: the float run's)"
          : "probability of a horizontal flip per image; true = 0.5, false = 0 (default: 0.5, but 0 on mnist)")
      ->type_name("FLOAT");
  cmd->add_option("--vflip", c->vflip, "probability of a vertical flip per image (aerial, microscopy); 0 = off")
      ->capture_default_str();
  cmd->add_option("--cutout", c->cutout, "probability of cutout per image")->capture_default_str();
  cmd->add_option("--random-erase", c->random_erase,
                  "probability of random erasing per image: a rectangle of 2% to 33% of it filled with noise "
                  "(timm's --reprob)")
      ->capture_default_str();
  cmd->add_option("--shift-scale-rotate", c->shift_scale_rotate,
                  "probability of a random shift, scale and rotation per image (albumentations' ShiftScaleRotate)")
      ->capture_default_str();
  cmd->add_option("--ssr-limits", c->ssr_limits,
                  "its limits: SHIFT (fraction of the size), SCALE (1 +- SCALE), DEGREES")->capture_default_str();
  cmd->add_option("--rotation", c->rotation, "random rotation within +-DEGREES for every image; 0 = off")
      ->capture_default_str();
  cmd->add_option("--color-jitter", c->color_jitter,
                  "B,C,S[,H]: brightness, contrast, saturation (factors from 1 +- x) and hue (turns), as torchvision's");
  cmd->add_option("--brightness-contrast", c->brightness_contrast,
                  "probability of a random brightness and contrast change (+-0.2 each) per image")
      ->capture_default_str();
  cmd->add_option("--hsv-shift", c->hsv_shift,
                  "probability of a random hue (+-20 degrees), saturation and value (+-0.12, +-0.08) shift per image")
      ->capture_default_str();
  cmd->add_option("--ema", c->ema, "weight EMA decay (e.g. 0.999); 0 = off")->capture_default_str();
  cmd->add_option("--amp", c->amp, "mixed precision on CUDA: off, fp16 (with loss scaling) or bf16")
      ->capture_default_str();
  cmd->add_option("--grad-accum", c->grad_accum, "micro-batches per optimizer step")->capture_default_str();
  cmd->add_option("--clip-grad", c->clip_grad, "clip gradients to this global norm; 0 = off")->capture_default_str();
  cmd->add_option("--early-stop", c->early_stop, "stop after N epochs without improvement; 0 = off");
  cmd->add_option("--eval-metric", c->eval_metric,
                  "what ranks the epochs for best.safetensors and --early-stop: top1, top5 or loss (the val loss)")
      ->capture_default_str();
  if (kind != Kind::Qat)
    cmd->add_option("--checkpoint-hist", c->checkpoint_hist,
                    "also keep the N best epochs (by --eval-metric) as checkpoint-E.safetensors, for kestrel average; "
                    "0 = off")
        ->capture_default_str();
  cmd->add_option("--save-every-steps", c->save_every_steps,
                  "also save last.safetensors every N optimizer steps, mid-epoch (a job that may be killed without "
                  "warning resumes from there); 0 = at epoch ends only");
  if (kind != Kind::Qat)
    cmd->add_option("--precise-bn", c->precise_bn,
                    "before each evaluation, recompute batch-norm statistics as the average over N training "
                    "batches (weights fixed); 0 = off")
        ->capture_default_str();
  if (kind != Kind::Qat) {
    cmd->add_option("--teacher", c->teacher,
                    "distill from these checkpoints (comma-separated; their logits are averaged)");
    cmd->add_option("--distill-alpha", c->distill_alpha, "weight of the teachers' term (the labels get 1 - alpha)")
        ->capture_default_str();
    cmd->add_option("--distill-temperature", c->distill_temperature, "softmax temperature of distillation")
        ->capture_default_str();
  }
  cmd->add_option("--seed", c->seed, "random seed (0 to 2^64 - 1)")
      ->check(CLI::Validator(
          [](std::string& v) {
            // Whole numbers only: CLI11 would wrap -1 and clamp 2^64 or 1e23 to 2^64 - 1.
            const bool digits = !v.empty() && v.size() <= 20 && v.find_first_not_of("0123456789") == std::string::npos;
            return digits && (v.size() < 20 || v <= "18446744073709551615")
                       ? std::string()
                       : "must be a whole number from 0 to 18446744073709551615, got " + v;
          },
          "SEED"))
      ->capture_default_str();
  cmd->add_option("--device", c->device, "auto, cpu, cuda or cuda:N (auto: cuda when a GPU is usable)")
      ->capture_default_str();
  cmd->add_option("--out,-o", c->out, "run folder")->capture_default_str();
  cmd->add_flag("--resume", c->resume, "continue the run in --out from its last checkpoint");
  cmd->add_flag("--overwrite", c->overwrite, "replace an existing run folder");
  cmd->add_flag("--no-progress", *no_progress, "no progress bars");
  cmd->add_option("--stop-after-steps", c->stop_after_steps, "stop abruptly after N optimizer steps (testing aid)")
      ->group("");
  cmd->add_option("--interrupt-after-steps", c->interrupt_after_steps,
                  "send this process SIGINT after N optimizer steps (testing aid)")
      ->group("");
  // What the command sets is what differs from these (flags and recipe keys alike).
  const auto defaults = std::make_shared<nlohmann::json>(c->to_json());
  cmd->callback([c, no_progress, recipe, cmd, kind, defaults] {
    if (!recipe->empty()) apply_recipe(*cmd, *recipe);
    c->recipe_file = *recipe;
    // A recipe's run gets its own folder, named after it, unless --out or the recipe names one.
    if (!recipe->empty() && cmd->get_option("--out")->count() == 0)
      c->out = "runs/" + std::filesystem::path(*recipe).stem().string();
    if (c->resume) refuse_to_change_a_resumed_run(*c, *cmd, *defaults);
    KCHECK(c->lr_base == 0 || cmd->get_option("--lr")->count() == 0, ValueError,
           "--lr and --lr-base both set the learning rate; give one (on the command line, or in the recipe)");
    // A resumed run has its teachers and float checkpoint in its saved recipe.
    KCHECK(kind != Kind::Distill || c->resume || !c->teacher.empty(), ValueError,
           "kestrel distill needs --teacher CHECKPOINT[,CHECKPOINT...] (or a recipe's teacher key)");
    KCHECK(kind != Kind::Qat || c->resume || !c->quantize_from.empty(), ValueError,
           "kestrel qat needs --checkpoint FLOAT.safetensors (or a recipe's checkpoint key)");
    if (kind == Kind::Qat && !c->resume) {
      tools::check_checkpoint_path(c->quantize_from, "float checkpoint");
      tools::configure_from_float_checkpoint(*c, requested_options(*c, *cmd, *defaults));
    } else if (!c->resume) {
      apply_dependent_defaults(*c, *cmd);  // (qat takes its float run's augmentation)
    }
    c->progress = !*no_progress;
    const tools::TrainSummary s = tools::train(*c);
    if (s.interrupted_by != 0) set_exit_status(128 + s.interrupted_by);  // as the shell reports a signal
    if (!s.completed || !dist::is_main()) return;
    if (kind == Kind::Qat && s.float_top1 >= 0)
      std::printf("float top-1 %.2f%%; int8 after calibration %.2f%%; ", 100 * s.float_top1,
                  100 * s.calibrated_top1);
    if (s.epochs_run == 0 && s.float_top1 >= 0) {  // qat with --epochs 0: post-training quantization only
      std::printf("%.1f s; run folder %s (ptq.safetensors)\n", s.seconds, s.out_dir.c_str());
      return;
    }
    if (s.epochs_run == 0 && s.early_stopped) {  // --resume of a run that had stopped early
      std::printf("nothing left to train: run folder %s stopped early (--early-stop); %s at epoch %lld\n",
                  s.out_dir.c_str(), best_words(s).c_str(), static_cast<long long>(s.best_epoch));
      return;
    }
    if (s.epochs_run == 0) {  // --resume of a run that had already finished
      std::printf("nothing left to train: run folder %s already holds its %lld epochs; %s at epoch %lld\n",
                  s.out_dir.c_str(), static_cast<long long>(s.epochs), best_words(s).c_str(),
                  static_cast<long long>(s.best_epoch));
      return;
    }
    std::printf("%s at epoch %lld; final top-1 %.2f%%; %.1f s; run folder %s\n", best_words(s).c_str(),
                static_cast<long long>(s.best_epoch), 100 * s.final_top1, s.seconds, s.out_dir.c_str());
    if (c->checkpoint_hist > 1)
      std::printf("kept the %lld best epochs as checkpoint-E.safetensors: kestrel average %s writes their mean\n",
                  static_cast<long long>(c->checkpoint_hist), s.out_dir.c_str());
  });
}

}  // namespace

void register_train(CLI::App& app) {
  add_training_command(app, "train", "Train a model from the zoo on a data set", Kind::Train);
  add_training_command(app, "distill",
                       "Train a student from averaged teacher checkpoints (knowledge distillation) and the labels",
                       Kind::Distill);
  add_training_command(app, "qat",
                       "Quantize a float checkpoint to int8: fold BNs, calibrate, then fine-tune with fake quantization",
                       Kind::Qat);
}

}  // namespace kestrel::cli
