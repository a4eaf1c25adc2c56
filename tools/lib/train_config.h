// Everything a training run is configured by: the `kestrel train` flags, the
// keys of a recipe file, and the "config" object of a run's training state.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kestrel::tools {

constexpr double kDefaultTestSplit = 0.1;

struct TrainConfig {
  // model and data
  std::string model = "cifar10_200k";
  int64_t num_classes = 0;  // 0: from the data set
  double width_mult = 1.0;
  double depth_mult = 1.0;  // layer-repeat multiplier (EfficientNet compound scaling)
  int64_t image_size = 0;   // train and evaluate at this square size (resized); 0 = the data's own
  std::string stem = "auto";  // auto: the CIFAR stem at 64 px and below; cifar; model (the model's own)
  double dropout = -1.0;    // < 0: the model's default
  double drop_path = -1.0;  // < 0: the model's default
  std::string initial_checkpoint;  // starting weights (tools/lib/initial_weights.h); empty = seeded init
  // Input normalization per channel, "m1,m2,m3"; empty: the float model's (qat),
  // the teachers', the initial checkpoint's or else the data set's. A run
  // records the one it used here.
  std::string mean, std;
  std::string dataset = "fashion-mnist";  // cifar10, cifar100, cifar100-coarse, fashion-mnist, mnist, folder
  std::string data_dir;                   // empty: the dataset's default location
  int64_t limit_train = 0;                // use only the first N training images (0 = all)
  int64_t limit_test = 0;
  // An image folder without train/ and test/: the fraction of each class held
  // out (seeded, the same in every run) as the test split.
  double test_split = kDefaultTestSplit;
  bool skip_bad = false;
  int workers = 2;
  // threads: host workers decode and augment; resident: the images live on
  // the device and batches are built there (data/resident_loader.h); auto:
  // resident on CUDA when the augmentations allow it, else threads.
  std::string loader = "auto";

  // optimisation
  int64_t epochs = 10;
  int64_t batch_size = 128;
  double lr = 0.1;
  double lr_base = 0.0;                 // > 0: --lr from the whole batch instead, as timm's --lr-base
  int64_t lr_base_size = 256;           // the batch lr_base is for
  std::string lr_base_scale = "auto";   // linear, sqrt, or auto: sqrt for adamw, else linear (timm's)
  std::string optimizer = "sgd";  // sgd, adamw, rmsprop
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  double warmup_epochs = 1.0;
  double warmup_lr = -1.0;          // where the warmup starts; < 0: 1% of --lr
  std::string schedule = "cosine";  // cosine, step, onecycle, plateau
  int64_t step_size = 30;           // epochs per step for --schedule step
  std::string milestones;           // "E1,E2,...": --schedule step decays at these epochs instead
  double step_gamma = 0.1;          // the decay factor of --schedule step and plateau
  int64_t plateau_patience = 10;    // --schedule plateau: epochs without improvement before a decay
  double min_lr = 0.0;              // where --schedule cosine ends; plateau's floor
  std::string adam_betas = "0.9,0.999";  // AdamW's beta1, beta2
  double adam_eps = 1e-8;
  double rmsprop_alpha = 0.99;           // RMSprop's smoothing constant (torch's default)
  double rmsprop_eps = 1e-8;
  double label_smoothing = 0.0;
  std::string loss = "ce";  // ce, focal
  double focal_gamma = 2.0;
  double clip_grad = 0.0;   // max global norm; 0 = off
  int64_t grad_accum = 1;
  double ema = 0.0;         // EMA decay; 0 = off
  std::string amp = "off";  // off, fp16, bf16
  int64_t early_stop = 0;   // patience in epochs; 0 = off
  std::string eval_metric = "top1";  // what picks best.safetensors and early stopping: top1, top5, loss
  int64_t checkpoint_hist = 0;       // keep the N best epochs as checkpoint-E.safetensors; 0 = off
  int64_t save_every_steps = 0;  // also save last.safetensors every N optimizer steps, mid-epoch; 0 = off
  int64_t precise_bn = 0;   // training batches that recompute BN statistics before each evaluation; 0 = off

  // knowledge distillation (tools/lib/distill.h)
  std::string teacher;                // comma-separated teacher checkpoints; empty = off
  double distill_alpha = 0.5;         // weight of the teachers' term; the labels get 1 - alpha
  double distill_temperature = 4.0;   // softens both distributions

  // int8 quantization-aware training (tools/lib/qat.h)
  std::string quantize_from;   // the float checkpoint to quantize; empty = a float run
  int64_t calib_batches = 32;  // training batches that calibrate the ranges first (<= 0: all)

  // augmentation
  double mixup = 0.0;   // probability of applying MixUp to a batch
  double cutmix = 0.0;
  double ricap = 0.0;
  double mix_alpha = 1.0;
  // Batch mixing in the first N epochs only, plain batches after (timm's
  // --mixup-off-epoch: the last epochs fit the true labels); 0 = every epoch.
  int64_t mixup_off_epoch = 0;
  bool auto_augment = false;
  std::string randaugment;  // "N,M"
  bool random_crop = true;
  // "MIN,MAX": torchvision's RandomResizedCrop over that fraction of each
  // image's area (aspect 3/4 to 4/3), in place of the resize; empty = off.
  std::string random_resized_crop;
  // Evaluation (validation, eval, predict): below 1, scale each image to cover
  // the size / crop_pct, aspect kept, and take the centre (timm's crop_pct);
  // 1 = the whole image resized to the size.
  double crop_pct = 1.0;
  double hflip = 0.5;       // probability of a mirrored image (timm's --hflip); 0 = off
  double vflip = 0.0;       // probability of an upside-down image (aerial, microscopy); 0 = off
  double cutout = 0.0;      // probability of coarse dropout
  double random_erase = 0.0;  // probability of random erasing (timm's --reprob), after the normalization
  // albumentations / torchvision style, on the host (the threaded loader)
  double rotation = 0.0;             // random rotation within +-degrees, every image; 0 = off
  std::string color_jitter;          // "B,C,S" or "B,C,S,H" as torchvision's ColorJitter; empty = off
  double shift_scale_rotate = 0.0;   // probability of albumentations' ShiftScaleRotate
  std::string ssr_limits = "0.0625,0.1,45";  // its shift (fraction of the size), scale and degree limits
  double brightness_contrast = 0.0;  // probability of a brightness and contrast change (limits 0.2, 0.2)
  double hsv_shift = 0.0;            // probability of an HSV shift (hue 20 degrees, saturation 0.12, value 0.08)

  // run
  uint64_t seed = 0;
  std::string device = "auto";  // auto, cpu, cuda
  std::string out = "runs/default";
  bool resume = false;
  bool overwrite = false;
  bool progress = true;
  int64_t stop_after_steps = 0;  // testing aid: stop (as if killed) after this many optimizer steps
  int64_t interrupt_after_steps = 0;  // testing aid: raise SIGINT after this many optimizer steps
  std::string recipe_file;       // the --config file read (not saved: an input --overwrite must keep)

  nlohmann::json to_json() const;
  // The flag that sets a to_json() key: "--" and the key with '-' for '_'.
  static std::string flag_of(const std::string& key);
  // --lr-base scaled to a step's whole batch (batch size x --grad-accum; the
  // batch is already the total over mpirun's processes).
  double lr_from_base() const;
  bool lr_base_uses_sqrt() const;  // --lr-base-scale sqrt, or auto with adamw
  static TrainConfig from_json(const nlohmann::json& j);
  // Sets the to_json() keys j holds; the rest (and the fields to_json leaves out) stay.
  void update_from_json(const nlohmann::json& j);
  // The list-valued flags, parsed; each throws ValueError naming its flag.
  std::array<int, 2> randaugment_n_m() const;                // --randaugment N,M
  std::array<float, 4> color_jitter_amounts() const;         // brightness, contrast, saturation, hue (0 if left out)
  std::array<double, 3> shift_scale_rotate_limits() const;   // --ssr-limits SHIFT,SCALE,DEGREES
  std::vector<int64_t> milestone_epochs() const;             // --milestones, ascending (empty when not set)
  std::array<double, 2> adam_beta_values() const;            // --adam-betas B1,B2
  std::array<double, 2> random_resized_crop_area() const;    // --random-resized-crop MIN,MAX
  std::vector<float> mean_values() const;                    // --mean (empty when not set)
  std::vector<float> std_values() const;                     // --std (empty when not set)
  // Throws ValueError naming the first bad value.
  void validate() const;
};

}  // namespace kestrel::tools
