#include "tools/lib/trainer.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>

#include "data/pinned_batch.h"
#include "data/readers.h"
#include "data/transforms.h"
#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/dist/data_parallel.h"
#include "engine/dist/process_group.h"
#include "engine/io/atomic_file.h"
#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/ops/loss.h"
#include "engine/ops/reduce.h"
#include "engine/optim/adamw.h"
#include "engine/optim/rmsprop.h"
#include "engine/optim/clip.h"
#include "engine/optim/ema.h"
#include "engine/optim/grad_scaler.h"
#include "engine/optim/plateau.h"
#include "engine/optim/schedule.h"
#include "engine/optim/sgd.h"
#include "engine/text.h"
#include "models/common.h"
#include "models/registry.h"
#include "tools/lib/checkpoint.h"
#include "tools/lib/checkpoint_history.h"
#include "tools/lib/datasets.h"
#include "tools/lib/device_select.h"
#include "tools/lib/distill.h"
#include "tools/lib/initial_weights.h"
#include "tools/lib/interrupt.h"
#include "tools/lib/plot.h"
#include "tools/lib/precise_bn.h"
#include "tools/lib/predictor.h"
#include "tools/lib/progress.h"
#include "tools/lib/qat.h"
#include "tools/lib/run_state.h"
#include "tools/lib/tb_writer.h"

namespace fs = std::filesystem;

namespace kestrel::tools {

namespace {

// What a resumed run takes from the command instead of its saved recipe:
// what runs this process, not what the run computes (the loaders give the
// same batches, checkpoints move between devices, data may move; data_dir
// only when given).
const std::string kTakenFromTheCommand[] = {"out", "device", "loader", "workers", "data_dir"};

Tensor training_loss(const TrainConfig& c, const Tensor& logits, const data::DeviceBatch& b, int64_t classes) {
  if (b.targets.defined()) {
    Tensor t = b.targets;
    if (c.label_smoothing > 0) t = add_scalar(mul_scalar(t, 1.0 - c.label_smoothing), c.label_smoothing / classes);
    return cross_entropy_soft(logits, t);
  }
  if (c.loss == "focal") return focal_loss(logits, b.labels, c.focal_gamma);
  return cross_entropy(logits, b.labels, c.label_smoothing);
}

// What --eval-metric ranks epochs by, higher is better (timm's eval_metric).
// A diverged epoch (val loss nan or inf) ranks below any other but above
// none, so a run always has a best checkpoint.
double eval_score(const TrainConfig& c, const EvalResult& r) {
  const double score = c.eval_metric == "loss"   ? -r.loss
                       : c.eval_metric == "top5" ? r.metrics.top5()
                                                 : r.metrics.top1();
  constexpr double kDiverged = -1e299;  // above RunState's "no best yet", -1e300
  return std::isfinite(score) ? score : kDiverged;
}

// The run recipe an older Kestrel saved, read as it ran: keys added since
// take the value that reproduces it.
void apply_legacy_defaults(TrainConfig& c, const nlohmann::json& saved_config) {
  // Before --warmup-lr, a step schedule's warmup started at 0.
  if (!saved_config.contains("warmup_lr") && c.schedule == "step") c.warmup_lr = 0.0;
}

// The warmup a run gets: --warmup-epochs, but at most half the run (a recipe's
// 5-epoch warmup on a 2-epoch quick pass would otherwise only ever ramp up).
double effective_warmup_epochs(const TrainConfig& c) {
  if (c.schedule == "onecycle") return 0.0;  // it ramps up by itself
  return std::min(c.warmup_epochs, static_cast<double>(c.epochs) / 2.0);
}

std::unique_ptr<optim::LrSchedule> make_schedule(const TrainConfig& c, int64_t steps_per_epoch) {
  const int64_t total = std::max<int64_t>(1, c.epochs * steps_per_epoch);
  const int64_t warmup = static_cast<int64_t>(effective_warmup_epochs(c) * static_cast<double>(steps_per_epoch));
  const double warmup_start = c.warmup_lr >= 0 ? c.warmup_lr : c.lr * 0.01;
  if (c.schedule == "step") {  // at --milestones, else every --step-size epochs
    std::vector<int64_t> milestones;
    for (int64_t epoch : c.milestone_epochs()) milestones.push_back(epoch * steps_per_epoch);
    auto decay = milestones.empty()
                     ? std::make_unique<optim::StepDecay>(c.lr, c.step_size * steps_per_epoch, c.step_gamma)
                     : std::make_unique<optim::StepDecay>(c.lr, milestones, c.step_gamma);
    return std::make_unique<optim::LinearWarmup>(std::move(decay), warmup, warmup_start);
  }
  if (c.schedule == "onecycle") {
    // Its rising phase ends 30% of the way in, after at least one step.
    KCHECK(total >= 4, ValueError, "--schedule onecycle needs at least 4 optimizer steps, this run has ", total,
           " (epochs x batches per epoch / --grad-accum); train longer or use --schedule cosine");
    return std::make_unique<optim::OneCycle>(c.lr, total);
  }
  if (c.schedule == "plateau") {  // --lr after the warmup; the trainer caps it at what ReduceOnPlateau says
    auto constant = std::make_unique<optim::StepDecay>(c.lr, std::vector<int64_t>{}, 1.0);
    return std::make_unique<optim::LinearWarmup>(std::move(constant), warmup, warmup_start);
  }
  return std::make_unique<optim::WarmupCosine>(c.lr, total, std::min(warmup, total), c.min_lr, warmup_start);
}

// --schedule plateau's decay, fed each epoch's --eval-metric number.
std::optional<optim::ReduceOnPlateau> make_plateau(const TrainConfig& c) {
  if (c.schedule != "plateau") return std::nullopt;
  optim::PlateauOptions o;
  o.factor = c.step_gamma;
  o.patience = c.plateau_patience;
  o.min_lr = c.min_lr;
  o.higher_is_better = c.eval_metric != "loss";
  return optim::ReduceOnPlateau(c.lr, o);
}

// Feeds --schedule plateau one finished epoch's metrics row: the --eval-metric
// number (a diverged loss, saved as null, is nan: no improvement, as inf is).
// Epochs that end inside the warmup are not its to judge (timm skips them too).
// Returns whether it lowered the rate.
bool observe_plateau(optim::ReduceOnPlateau& plateau, const TrainConfig& c, const nlohmann::json& row) {
  if (row.at("epoch").get<double>() < effective_warmup_epochs(c)) return false;
  const nlohmann::json& v = row.at(c.eval_metric == "loss" ? "val_loss" : "val_" + c.eval_metric);
  return plateau.observe(v.is_number() ? v.get<double>() : std::nan(""));
}

std::unique_ptr<optim::Optimizer> make_optimizer(const TrainConfig& c, const nn::Module& model) {
  auto groups = optim::decay_groups(model.named_parameters(), c.weight_decay);
  if (c.optimizer == "adamw") {
    optim::AdamWOptions o;
    o.lr = c.lr;
    o.weight_decay = c.weight_decay;
    const std::array<double, 2> betas = c.adam_beta_values();
    o.beta1 = betas[0];
    o.beta2 = betas[1];
    o.eps = c.adam_eps;
    return std::make_unique<optim::AdamW>(groups, o);
  }
  if (c.optimizer == "rmsprop") {
    optim::RMSpropOptions o;
    o.lr = c.lr;
    o.alpha = c.rmsprop_alpha;
    o.eps = c.rmsprop_eps;
    o.momentum = c.momentum;
    o.weight_decay = c.weight_decay;
    return std::make_unique<optim::RMSprop>(groups, o);
  }
  optim::SGDOptions o;
  o.lr = c.lr;
  o.momentum = c.momentum;
  o.nesterov = c.nesterov && c.momentum > 0;
  o.weight_decay = c.weight_decay;
  return std::make_unique<optim::SGD>(groups, o);
}

// An evaluation loss this far above the training loss, and twice that of
// guessing, is rarely the weights: most often it is the batch norms' momentum
// statistics lagging weights that move fast (docs/results.md, "Batch-norm statistics").
bool batch_norm_lag_likely(double val_loss, double train_loss, int64_t classes) {
  return val_loss > 4.0 * train_loss && val_loss > 2.0 * std::log(static_cast<double>(classes));
}

// Dropout and drop-path draw from the init generator. Each rank gets its own
// stream so masks differ across ranks; rank 0 keeps the run's (the one a
// checkpoint stores). All ranks draw alike, so they share the offset.
uint64_t rank_seed(uint64_t seed, int rank) {
  constexpr uint64_t kRankTag = 0x52414E4BULL;  // "RANK"
  return rank == 0 ? seed : data::derive_seed(seed, kRankTag, static_cast<uint64_t>(rank));
}

// What a run's config needs of this process: a CUDA device for --amp, and a
// batch that splits evenly over the processes of a data-parallel job.
void check_config_fits_process(const TrainConfig& c, const Device& device) {
  KCHECK(c.amp == "off" || device.is_cuda(), ValueError, "--amp ", c.amp, ": mixed precision needs a CUDA device (",
         device.str(), " selected by --device ", c.device, "); use --amp off on the CPU");
  KCHECK(c.batch_size % dist::world_size() == 0, ValueError, "--batch-size ", c.batch_size,
         " does not split evenly over ", dist::world_size(),
         " processes (it is the whole batch of one step, shared among them)");
}

// Half logits (autocast) become f32 through a recorded cast, so losses and metrics run in f32.
Tensor logits_f32(const Tensor& logits) { return logits.dtype() == DType::F32 ? logits : logits.to(DType::F32); }

std::string fmt_pct(double v) {
  char b[16];
  std::snprintf(b, sizeof(b), "%.2f%%", 100.0 * v);
  return b;
}

void write_metric_files(const std::string& dir, const nlohmann::json& history) {
  // With --ema the val columns are the averaged weights'; the plain weights' follow.
  const bool ema =
      std::any_of(history.begin(), history.end(), [](const auto& h) { return h.contains("val_top1_plain"); });
  std::string jsonl, csv = "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,epoch_seconds,images_per_sec";
  csv += ema ? ",val_loss_plain,val_top1_plain\n" : "\n";
  for (const auto& h : history) {
    jsonl += h.dump() + "\n";
    char line[512];
    std::snprintf(line, sizeof(line), "%lld,%.6g,%.6f,%.6f,%.6f,%.6f,%.6f,%.3f,%.1f",
                  static_cast<long long>(h["epoch"].get<int64_t>()), h["lr"].get<double>(),
                  h["train_loss"].get<double>(), h["train_top1"].get<double>(), h["val_loss"].get<double>(),
                  h["val_top1"].get<double>(), h["val_top5"].get<double>(), h["epoch_seconds"].get<double>(),
                  h["images_per_sec"].get<double>());
    csv += line;
    if (ema && h.contains("val_top1_plain")) {
      std::snprintf(line, sizeof(line), ",%.6f,%.6f", h["val_loss_plain"].get<double>(),
                    h["val_top1_plain"].get<double>());
      csv += line;
    } else if (ema) {
      csv += ",,";  // an epoch from before the plain weights were measured
    }
    csv += "\n";
  }
  io::write_text_atomically(dir + "/metrics.jsonl", jsonl, "train");
  io::write_text_atomically(dir + "/metrics.csv", csv, "train");
  Series tl{"train", {}, {}}, vl{"val", {}, {}}, ta{"train", {}, {}}, va{"val", {}, {}}, lr{"lr", {}, {}};
  for (const auto& h : history) {
    const double e = static_cast<double>(h["epoch"].get<int64_t>());
    tl.x.push_back(e), tl.y.push_back(h["train_loss"].get<double>());
    vl.x.push_back(e), vl.y.push_back(h["val_loss"].get<double>());
    ta.x.push_back(e), ta.y.push_back(100 * h["train_top1"].get<double>());
    va.x.push_back(e), va.y.push_back(100 * h["val_top1"].get<double>());
    lr.x.push_back(e), lr.y.push_back(h["lr"].get<double>());
  }
  write_line_chart(dir + "/curves.png", {{"loss", {tl, vl}}, {"top-1 accuracy (%)", {ta, va}}, {"learning rate", {lr}}});
}

// The input normalization: --mean/--std when given; else that of the weights
// the run starts from or learns from (qat's float model, the first teacher,
// the initial checkpoint: each was trained on inputs normalized so, as timm
// takes a pretrained model's); else the data set's. `checkpoint` names the
// checkpoint it came from, and is left empty otherwise.
Normalization run_normalization(const TrainConfig& c, const data::Dataset& train_set, int64_t channels,
                                std::string& checkpoint) {
  if (!c.mean.empty()) {
    Normalization n{c.mean_values(), c.std_values()};
    KCHECK(static_cast<int64_t>(n.mean.size()) == channels, ValueError, "--mean and --std give ", n.mean.size(),
           n.mean.size() == 1 ? " value" : " values", ", but the images have ", channels, " channel",
           channels == 1 ? "" : "s");
    return n;
  }
  const std::vector<std::string> teachers = split_paths(c.teacher);
  const std::string first_teacher = teachers.empty() ? std::string() : teachers[0];
  for (const std::string& ref : {c.quantize_from, first_teacher, c.initial_checkpoint}) {
    if (ref.empty() || !fs::exists(ref)) continue;
    const io::Metadata m = io::load_safetensors_metadata(ref);
    if (m.count("kestrel.model_info") == 0) continue;  // a plain state_dict names no normalization
    const ModelInfo r = ModelInfo::from_metadata(m, ref);
    if (static_cast<int64_t>(r.mean.size()) != channels || r.std.size() != r.mean.size()) continue;
    checkpoint = ref;
    return {r.mean, r.std};
  }
  return normalization_for(c.dataset, train_set);
}

// "0.485,0.456,0.406" with every float's digits, so a resumed run reads back the same values.
std::string float_list(const std::vector<float>& v) {
  return join(v, ",", [](float x) {
    char b[32];
    std::snprintf(b, sizeof(b), "%.9g", static_cast<double>(x));
    return std::string(b);
  });
}

// Without --image-size the model takes the first image's size and every
// other image is resized to it: a folder of mixed sizes would be stretched
// without a word. Evenly spaced samples stand for the whole set.
void check_one_image_size(const data::Dataset& train_set, const data::Example& first, const std::string& data_dir) {
  const int64_t n = train_set.size(), samples = std::min<int64_t>(n, 32);
  for (int64_t s = 1; s < samples; ++s) {
    const int64_t i = s * n / samples;
    const data::Image& img = train_set.get(i).image;
    KCHECK(img.h == first.image.h && img.w == first.image.w, ValueError, "the training images in ", data_dir,
           " differ in size (the first is ", first.image.w, "x", first.image.h, ", number ", i + 1, " is ", img.w,
           "x", img.h, "); pass --image-size N to train on them all resized to N x N");
  }
}

// Whether `path` is `folder` or lies inside it.
bool lies_in(const std::string& path, const std::string& folder) {
  const fs::path rel = fs::weakly_canonical(path).lexically_relative(fs::weakly_canonical(folder));
  return !rel.empty() && *rel.begin() != "..";
}

// Whether a Kestrel run wrote `dir` (it holds a run's config.json).
bool is_run_folder(const std::string& dir) {
  try {
    std::ifstream in(dir + "/config.json");
    return in.good() && nlohmann::json::parse(in).contains("model");
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

// An --overwrite run deletes what runs write in its folder: never the inputs
// it was given (the float checkpoint qat starts from, a teacher). A folder no
// run wrote is refused before this (check_out_dir).
void check_overwrite_is_safe(const TrainConfig& c) {
  const std::string data_dir = data_dir_or_default(c.dataset, c.data_dir);
  std::vector<std::pair<std::string, std::string>> inputs = {{"--checkpoint", c.quantize_from},
                                                              {"--initial-checkpoint", c.initial_checkpoint},
                                                              {"--data-dir", data_dir},
                                                              {"--config", c.recipe_file}};
  for (const std::string& t : split_paths(c.teacher)) inputs.push_back({"--teacher", t});
  for (const auto& [flag, path] : inputs)
    KCHECK(path.empty() || !lies_in(path, c.out), IOError, "--overwrite would delete ", flag, " ", path,
           ": it lies in the run folder ", c.out, "; give another --out");
}

// Checks the run folder before anything is read or written; returns true
// when resuming from its last.safetensors. Every rank checks (they need the
// folder on a shared file system to resume); only rank 0 clears and writes it.
bool check_out_dir(const TrainConfig& c) {
  const std::string last = c.out + "/last.safetensors";
  KCHECK(!fs::exists(c.out) || fs::is_directory(c.out), IOError, "--out ", c.out, " is a file, not a folder");
  KCHECK(c.dataset != "folder" || c.data_dir.empty() || !lies_in(c.out, c.data_dir), IOError, "--out ", c.out,
         " lies inside --data-dir ", c.data_dir, ", where it would be read as a class folder; give another --out");
  KCHECK(!(c.resume && c.overwrite), ValueError, "--resume continues the run in ", c.out,
         " and --overwrite starts it afresh: pass one of them");
  if (c.resume) {
    KCHECK(fs::exists(c.out), IOError, "--resume: run folder ", c.out, " does not exist; nothing to resume");
    KCHECK(fs::exists(last), IOError, "--resume: no checkpoint at ", last,
           dist::is_main() ? " (a run that stopped before its first epoch ended starts again with --overwrite)"
                           : " (the run folder must be on a file system every rank shares)");
    return true;
  }
  if (dist::is_main() && fs::exists(c.out) && !fs::is_empty(c.out)) {
    KCHECK(is_run_folder(c.out), IOError, "--out ", c.out, " holds files no Kestrel run wrote (it has no run's "
           "config.json); give an empty or new --out");
    KCHECK(c.overwrite, IOError, "run folder ", c.out,
           fs::exists(last) ? " already exists; pass --resume to continue it or --overwrite to replace it"
                            : " already exists, with no checkpoint (stopped before its first epoch ended?); "
                              "pass --overwrite to start it again");
    check_overwrite_is_safe(c);
  }
  return false;
}

// What a run and the commands run on its checkpoints write into its folder:
// --overwrite removes these (they describe the run it replaces) and keeps the rest.
bool written_for_a_run(const fs::path& entry) {
  static const std::set<std::string> names = {
      "config.json", "state.json", "last.safetensors", "best.safetensors", "ptq.safetensors", "metrics.jsonl",
      "metrics.csv", "curves.png", "tb",               "best.onnx",        "last.onnx",       "ptq.onnx",
      "average.safetensors"};
  const std::string name = entry.filename().string();
  const bool eval_report = fs::is_directory(entry) && (name == "eval" || name.rfind("eval-", 0) == 0);
  return names.count(name) > 0 || eval_report || CheckpointHistory::is_file_name(name);
}

// Rank 0 empties (--overwrite) or creates the folder of a new run, once the
// data, model and every checkpoint it reads have loaded; the others wait.
void start_out_dir(const TrainConfig& c) {
  if (dist::is_main()) {
    std::vector<std::string> kept;
    if (fs::exists(c.out))
      for (const auto& e : fs::directory_iterator(c.out)) {
        if (written_for_a_run(e.path()))
          fs::remove_all(e.path());
        else
          kept.push_back(e.path().filename().string());
      }
    std::sort(kept.begin(), kept.end());
    if (!kept.empty()) std::cerr << "--overwrite kept what no run writes in " << c.out << ": " << join(kept, ", ") << "\n";
    fs::create_directories(c.out);
  }
  dist::barrier();
}

}  // namespace

namespace {

// An epoch's training loss and accuracy. On the CPU each step is read at
// once. On CUDA the steps' losses and logits stay on the device and are read
// in groups (after half a second or 64 steps), so the host is not made to
// wait for the device every step and can queue the next step's work. A
// non-finite loss stops the run, naming its batch, unless a loss scaler is on:
// with fp16 loss scaling an inf/nan loss is not fatal, as in PyTorch (its
// gradients are non-finite, so the scaler skips the step and backs off).
class EpochTally {
 public:
  EpochTally(bool scaled, int64_t epoch, Device device) : scaled_(scaled), epoch_(epoch), device_(device) {}

  void add(const Tensor& loss, const Tensor& logits, const data::Batch& b) {
    pending_.push_back({loss.detach(), logits.detach(), b.labels.to_vector_i64(), b.index});
    const bool due = device_.is_cpu() || pending_.size() >= kMaxPending ||
                     std::chrono::duration<double>(Clock::now() - last_read_).count() >= kReadSeconds;
    if (due) flush();
  }

  // Reads every pending step (one wait for the device).
  void flush() {
    for (const Step& s : pending_) {
      const double loss_value = s.loss.item();
      const bool loss_finite = std::isfinite(loss_value);
      KCHECK(loss_finite || scaled_, ValueError, "training diverged: loss is ", loss_value, " at epoch ", epoch_ + 1,
             " batch ", s.batch, " (try a lower --lr or --clip-grad)");
      const Tensor host_logits = s.logits.device().is_cpu() ? s.logits : s.logits.cpu();
      const std::vector<int64_t> pred = argmax(host_logits, 1).to_vector_i64();
      for (size_t i = 0; i < s.labels.size(); ++i) sums_.correct += pred[i] == s.labels[i];
      const auto n = static_cast<int64_t>(s.labels.size());
      if (loss_finite) {
        sums_.loss_sum += loss_value * static_cast<double>(n);
        sums_.loss_seen += n;
      }
      sums_.seen += n;
    }
    pending_.clear();
    last_read_ = Clock::now();
  }

  void sum_over_ranks() { sums_ = summed_over_ranks(); }

  // Every rank's sums together (a collective; this rank's own with one rank),
  // this rank's left as they are.
  EpochSums summed_over_ranks() {
    flush();
    const std::vector<double> all =
        dist::all_reduce_sum({sums_.loss_sum, static_cast<double>(sums_.loss_seen), static_cast<double>(sums_.seen),
                              static_cast<double>(sums_.correct)});
    return {all[0], static_cast<int64_t>(all[1]), static_cast<int64_t>(all[2]), static_cast<int64_t>(all[3])};
  }

  double mean_loss() const { return sums_.loss_sum / static_cast<double>(std::max<int64_t>(sums_.loss_seen, 1)); }
  double accuracy() const {
    return static_cast<double>(sums_.correct) / static_cast<double>(std::max<int64_t>(sums_.seen, 1));
  }
  int64_t seen() const { return sums_.seen; }

  // Sums saved mid-epoch (summed_over_ranks), back for a resumed epoch.
  void restore(const EpochSums& sums) { sums_ = sums; }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr size_t kMaxPending = 64;
  static constexpr double kReadSeconds = 0.5;
  struct Step {
    Tensor loss, logits;
    std::vector<int64_t> labels;
    int64_t batch;
  };
  bool scaled_;
  int64_t epoch_;
  Device device_;
  std::vector<Step> pending_;
  Clock::time_point last_read_ = Clock::now();
  EpochSums sums_;
};

}  // namespace

EvalResult evaluate(nn::Module& model, data::BatchLoader& loader, int64_t num_classes, bool progress,
                    const std::string& label, const std::optional<data::TTAOptions>& tta) {
  EvalResult r(num_classes);
  const Device device = module_device(model);
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  ProgressBar bar(label, loader.num_batches(), progress);
  loader.start_epoch(0);
  data::Batch b;
  int64_t done = 0;
  while (loader.next(b)) {
    Tensor logits = tta ? mean_view_logits(model, b.images, *tta, device)
                        : logits_f32(model(data::copy_batch_to_device(b, device).images));
    if (!logits.device().is_cpu()) logits = logits.cpu();  // metrics and loss on the host, one copy
    r.metrics.update(logits, b.labels);
    r.metrics.add_loss(cross_entropy(logits, b.labels).item() * static_cast<double>(b.size()), b.size());
    bar.update(++done);
  }
  r.seconds = bar.elapsed_seconds();
  bar.finish();
  if (loader.options().shard_count > 1) r.metrics.sum_over_ranks();  // each rank saw its share
  r.loss = r.metrics.loss();
  model.train(was_training);
  return r;
}

std::vector<std::string> resume_conflicts(const std::string& out, const nlohmann::json& requested) {
  const std::string last = out + "/last.safetensors";
  if (!fs::exists(last)) return {};
  const io::Metadata meta = io::load_safetensors_metadata(last);
  const auto it = meta.find(kRunStateKey);
  if (it == meta.end()) return {};
  const nlohmann::json saved_config = nlohmann::json::parse(it->second)["config"];
  TrainConfig as_run = TrainConfig::from_json(saved_config);
  apply_legacy_defaults(as_run, saved_config);
  const nlohmann::json saved = as_run.to_json();
  std::vector<std::string> conflicts;
  for (const auto& [key, value] : requested.items()) {
    const bool from_command = std::find(std::begin(kTakenFromTheCommand), std::end(kTakenFromTheCommand), key) !=
                              std::end(kTakenFromTheCommand);
    if (from_command || !saved.contains(key) || saved[key] == value) continue;
    conflicts.push_back(TrainConfig::flag_of(key) + " " + value.dump() + " (the run's: " + saved[key].dump() + ")");
  }
  return conflicts;
}

TrainSummary train(TrainConfig c) {
  // (A resumed run's saved recipe holds the same rate.) Nonsense inputs are
  // left for validate() to name.
  const bool lr_base_usable = std::isfinite(c.lr_base) && c.lr_base > 0 && c.lr_base_size >= 1 && c.grad_accum >= 1;
  if (lr_base_usable) c.lr = c.lr_from_base();
  c.validate();
  dist::init();
  // Data parallel: one process per device, each on its share of every batch;
  // rank 0 writes the run folder and prints.
  const int world = dist::world_size();
  const bool main_rank = dist::is_main();
  if (!main_rank) c.progress = false;
  // Ctrl-C or SIGTERM: save mid-epoch and stop. A data-parallel job keeps the
  // default (mpirun ends every rank; it resumes from its last save).
  std::optional<InterruptGuard> interrupt_guard;
  if (world == 1) interrupt_guard.emplace();
  // Both before the run folder is touched.
  const Device device = resolve_device(c.device);
  check_config_fits_process(c, device);
  KCHECK(c.drop_path <= 0 || models::has_stochastic_depth(c.model), ValueError, "--drop-path: ", c.model,
         " has no stochastic depth (the emn_* and efficientnet_* models have)");
  const bool resuming = check_out_dir(c);
  io::SafetensorsContents resume_ckpt;
  RunState run;  // as saved, when resuming
  if (resuming) {
    resume_ckpt = io::load_safetensors(c.out + "/last.safetensors");
    auto it = resume_ckpt.metadata.find(kRunStateKey);
    KCHECK(it != resume_ckpt.metadata.end(), IOError, c.out, "/last.safetensors has no training state");
    run = RunState::from_json(nlohmann::json::parse(it->second));
    // The recipe of the run wins; only what controls this process may differ.
    nlohmann::json recipe = run.config;
    const nlohmann::json mine = c.to_json();
    for (const std::string& key : kTakenFromTheCommand)
      if (key != "data_dir" || !c.data_dir.empty()) recipe[key] = mine[key];
    TrainConfig saved = TrainConfig::from_json(recipe);
    saved.resume = true;
    saved.progress = c.progress;
    saved.stop_after_steps = c.stop_after_steps;
    saved.interrupt_after_steps = c.interrupt_after_steps;
    c = saved;
    apply_legacy_defaults(c, run.config);
    check_config_fits_process(c, device);  // the run's own --amp and batch, on this process
  }

  // Saved absolute, so eval and --resume find the data from any working folder
  // (the default CIFAR folder, datasets/, is relative).
  c.data_dir = data_dir_or_default(c.dataset, c.data_dir);
  if (!c.data_dir.empty()) c.data_dir = fs::absolute(c.data_dir).lexically_normal().string();

  // Data.
  KCHECK(c.test_split == kDefaultTestSplit || !data::image_folder_has_split(c.data_dir), ValueError,
         "--test-split splits an image folder, and ", c.data_dir, " has its own train/ and test/ (or val/)");
  auto train_set = open_dataset(c.dataset, c.data_dir, data::Split::Train, c.skip_bad, c.limit_train, c.test_split);
  auto test_set = open_dataset(c.dataset, c.data_dir, data::Split::Test, c.skip_bad, c.limit_test, c.test_split);
  const data::Example probe = train_set->get(0);
  if (c.image_size == 0) check_one_image_size(*train_set, probe, c.data_dir);
  KCHECK(c.num_classes == 0 || c.num_classes >= train_set->num_classes(), ValueError, "--num-classes ",
         c.num_classes, " is fewer than the data set's ", train_set->num_classes(),
         " classes (leave it out to take the data set's)");
  const int64_t classes = c.num_classes > 0 ? c.num_classes : train_set->num_classes();
  KCHECK(c.eval_metric != "top5" || classes > 5, ValueError, "--eval-metric top5 ranks nothing with ", classes,
         " classes (every epoch's top-5 is 100%); use top1 or loss");
  std::string norm_checkpoint;  // the checkpoint whose normalization the run takes, if any
  Normalization norm;
  if (resuming && c.mean.empty()) {
    // A run saved before runs recorded their normalization: the one its
    // checkpoint holds, which it trained with.
    const ModelInfo saved = ModelInfo::from_metadata(resume_ckpt.metadata, c.out + "/last.safetensors");
    norm = {saved.mean, saved.std};
  }
  if (norm.mean.empty()) norm = run_normalization(c, *train_set, probe.image.c, norm_checkpoint);
  if (c.mean.empty()) {  // recorded in config.json, so a resume needs none of the sources
    c.mean = float_list(norm.mean);
    c.std = float_list(norm.std);
  }

  // Model: seeded init, reproducible.
  manual_seed(c.seed);
  ModelInfo info;
  info.model = c.model;
  info.num_classes = classes;
  info.in_channels = probe.image.c;
  info.height = c.image_size > 0 ? c.image_size : probe.image.h;
  info.width = c.image_size > 0 ? c.image_size : probe.image.w;
  info.cifar_stem = c.stem == "auto" ? models::cifar_stem_for_resolution(info.height) : c.stem == "cifar";
  info.width_mult = c.width_mult;
  info.depth_mult = c.depth_mult;
  info.dataset = c.dataset;
  info.classes = train_set->classes();
  info.mean = norm.mean;
  info.std = norm.std;
  info.crop_fraction = c.crop_pct;
  nn::ModulePtr model = build_from_info(info, c.dropout, c.drop_path);
  const bool quantizing = !c.quantize_from.empty();
  std::optional<LoadedModel> float_model;  // a fresh qat run's starting point, measured before calibration
  if (quantizing) {  // on the CPU, before the weights of a resumed run are loaded
    if (resuming) {
      models::prepare_quantization(*model, {1, info.height, info.width, info.in_channels});
    } else {
      float_model = load_checkpoint(c.quantize_from);
      load_for_quantization(*model, info, *float_model, c.quantize_from, main_rank);
    }
    info.quantized = true;
  }
  if (!resuming && !c.initial_checkpoint.empty()) {  // a resumed run's weights come from its own checkpoint
    const std::vector<std::string> fresh = load_initial_weights(c.initial_checkpoint, *model, info);
    if (main_rank) {
      std::cerr << "initial weights from " << c.initial_checkpoint
                << (fresh.empty() ? "" : "; kept fresh: " + join(fresh, ", ")) << "\n";
      const auto differs = [&] {
        const Normalization own = normalization_for(c.dataset, *train_set);
        return own.mean != norm.mean || own.std != norm.std;
      };
      if (norm_checkpoint == c.initial_checkpoint && differs())
        std::cerr << "input normalization from " << c.initial_checkpoint << " (mean " << c.mean << ", std " << c.std
                  << "), not the data set's; --mean and --std choose another\n";
    }
  }
  model->train();
  if (!device.is_cpu()) model->to(device);  // before the optimizer and EMA take their state
  dist::broadcast_module(*model);           // seeded alike, but rank 0's is the one
  dist::GradientAverager grad_sync(model->parameters());
  std::unique_ptr<TeacherEnsemble> teachers;
  if (!c.teacher.empty()) {
    teachers = std::make_unique<TeacherEnsemble>(split_paths(c.teacher), info, device);
  }

  data::LoaderOptions lo;
  lo.batch_size = c.batch_size;
  lo.seed = c.seed;
  lo.num_workers = c.workers;
  lo.drop_last = true;
  lo.pin_memory = device.is_cuda();
  lo.shard_rank = dist::rank();
  lo.shard_count = world;
  if (c.mixup_off_epoch > 0) lo.mix_until_epoch = c.mixup_off_epoch;
  LoaderChoice train_choice = make_loader(c, train_set, lo, true, info.height, info.width, norm, classes, device);
  data::LoaderOptions eo = lo;
  eo.shuffle = false;
  eo.drop_last = false;
  eo.batch_size = std::max<int64_t>(c.batch_size, 256);
  LoaderChoice test_choice = make_loader(c, test_set, eo, false, info.height, info.width, norm, classes, device);
  // --precise-bn reads training images as the evaluation does (no augmentation),
  // in an order of its own, so the training loader's is untouched.
  std::unique_ptr<data::DataLoader> precise_bn_loader;
  if (c.precise_bn > 0) {
    data::LoaderOptions po = lo;
    constexpr uint64_t kPreciseBnTag = 0x50424EULL;  // "PBN"
    po.seed = data::derive_seed(c.seed, kPreciseBnTag);
    precise_bn_loader =
        std::make_unique<data::DataLoader>(train_set, po, eval_transform(info.height, info.width, norm, c.crop_pct));
  }
  data::BatchLoader& train_loader = *train_choice.loader;
  data::BatchLoader& test_loader = *test_choice.loader;

  KCHECK(train_loader.num_batches() > 0, ValueError, "--batch-size ", c.batch_size, " is larger than the ",
         train_set->size(), " training images (the last partial batch is dropped)");
  KCHECK(train_loader.num_batches() >= c.grad_accum, ValueError, "--grad-accum ", c.grad_accum, " exceeds the ",
         train_loader.num_batches(), " batches per epoch");
  const int64_t steps_per_epoch = std::max<int64_t>(1, train_loader.num_batches() / c.grad_accum);
  auto optimizer = make_optimizer(c, *model);
  auto schedule = make_schedule(c, steps_per_epoch);
  // Said when the cut warmup was asked for; the default's cut on a short run is documented.
  if (main_rank && c.schedule != "onecycle" && effective_warmup_epochs(c) < c.warmup_epochs &&
      c.warmup_epochs != TrainConfig{}.warmup_epochs)
    std::cerr << "warning: --warmup-epochs " << c.warmup_epochs << " cut to " << effective_warmup_epochs(c)
              << ", half of this " << c.epochs << "-epoch run\n";
  if (main_rank && c.schedule == "step" && static_cast<double>(c.step_size) <= effective_warmup_epochs(c))
    std::cerr << "warning: --step-size " << c.step_size << " decays the rate inside the "
              << effective_warmup_epochs(c) << "-epoch warmup, which then peaks below --lr " << c.lr << "\n";
  std::unique_ptr<optim::ModelEma> ema;
  if (c.ema > 0) ema = std::make_unique<optim::ModelEma>(*model, optim::EmaOptions{c.ema, true});
  // Mixed precision: forward passes under autocast; f16 also scales the loss (bf16 needs no scaler).
  const DType autocast = amp_dtype(c.amp);
  std::unique_ptr<optim::GradScaler> scaler;
  if (c.amp == "fp16") scaler = std::make_unique<optim::GradScaler>();

  int64_t start_epoch = 0, resume_batch = 0, global_step = 0, stale_epochs = 0, best_epoch = -1;
  bool had_stopped_early = false;
  double best_top1 = -1.0, best_score = RunState().best_score;
  nlohmann::json history = nlohmann::json::array();
  CheckpointHistory best_epochs(c.checkpoint_hist, resuming ? run.kept_checkpoints : std::vector<KeptCheckpoint>{});
  std::optional<optim::ReduceOnPlateau> plateau = make_plateau(c);
  if (resuming) {
    load_weights(resume_ckpt, *model, c.out + "/last.safetensors");
    optimizer->load_state(optim::OptimizerState::from_named_tensors(resume_ckpt.tensors, "__optim__."));
    if (ema) ema->load_state(optim::OptimizerState::from_named_tensors(resume_ckpt.tensors, "__ema__."));
    if (scaler) scaler->load_state(optim::OptimizerState::from_named_tensors(resume_ckpt.tensors, "__scaler__."));
    start_epoch = run.next_epoch;
    resume_batch = run.resume_batch;  // saved mid-epoch
    global_step = run.global_step;
    stale_epochs = run.stale_epochs;
    best_epoch = run.best_epoch;
    best_top1 = run.best_top1;
    best_score = run.best_score;
    history = run.history;
    if (main_rank) remove_unlisted_epoch_files(c.out, run.kept_checkpoints);  // killed between file and state
    if (plateau)  // where the decays stood: the saved epochs' numbers again
      for (const nlohmann::json& row : history) observe_plateau(*plateau, c, row);
    nn::init_generator().set_state(run.generator_seed, run.generator_offset);
    had_stopped_early = c.early_stop > 0 && stale_epochs >= c.early_stop;
    if (had_stopped_early) start_epoch = c.epochs;
    if (main_rank && start_epoch < c.epochs)
      std::cerr << "resuming " << c.out << " at epoch " << start_epoch + 1
                << (resume_batch > 0 ? ", batch " + std::to_string(resume_batch + 1) : "") << " (step " << global_step
                << ")\n";
  }
  Generator& init_gen = nn::init_generator();
  init_gen.set_state(rank_seed(init_gen.seed(), dist::rank()), init_gen.offset());
  if (!resuming) start_out_dir(c);
  std::unique_ptr<TensorBoardWriter> tb;
  if (main_rank) {
    io::write_text_atomically(c.out + "/config.json", c.to_json().dump(2) + "\n", "train");
    tb = std::make_unique<TensorBoardWriter>(c.out + "/tb");
    if (resuming && start_epoch < c.epochs) tb->restart_at(start_epoch + 1);  // epochs are logged from 1
  }

  if (main_rank)
    std::cerr << "training " << c.model << " (" << model->num_parameters() << " parameters) on " << c.dataset << ": "
            << train_set->size() << " train / " << test_set->size() << " test images, " << classes
            << " classes, device " << device.str()
            << (world > 1 ? " x " + std::to_string(world) + " processes (" + dist::backend_name() + ")" : "")
            << (c.amp == "off" ? "" : ", amp " + c.amp) << ", " << c.epochs << (c.epochs == 1 ? " epoch, " : " epochs, ")
            << (train_choice.resident ? "resident loader" : "threaded loader")
            << (train_choice.why_threads.empty() ? "" : " (" + train_choice.why_threads + ")") << "\n"
            << "augmentation: " << augmentation_summary(c, info.height, info.width) << "\n";
  if (main_rank && c.lr_base > 0)
    std::cerr << "lr " << c.lr << " = --lr-base " << c.lr_base << " x (batch " << c.batch_size * c.grad_accum
              << " / " << c.lr_base_size << ")" << (c.lr_base_uses_sqrt() ? " ^ 0.5" : "") << "\n";

  TrainSummary summary;
  summary.out_dir = c.out;
  summary.epochs = c.epochs;
  summary.early_stopped = had_stopped_early;
  if (teachers) {
    // What the student is taught from: the averaged teachers' accuracy.
    AutocastGuard autocast_scope(autocast);
    summary.teacher_top1 = evaluate(*teachers, test_loader, classes, c.progress, "  teachers").metrics.top1();
    if (main_rank) {
      const size_t n = teachers->names().size();
      std::cerr << "distilling from " << n << (n == 1 ? " teacher" : " teachers, logits averaged") << " (alpha "
                << c.distill_alpha << ", T " << c.distill_temperature << "): " << join(teachers->names(), ", ")
                << "; ensemble top-1 " << fmt_pct(summary.teacher_top1) << "\n";
    }
  }
  const auto run_start = std::chrono::steady_clock::now();
  if (quantizing && !resuming) {
    // Post-training quantization first: the float model's accuracy, then the
    // calibrated int8 model's, saved as ptq.safetensors.
    if (!device.is_cpu()) float_model->model->to(device);
    summary.float_top1 = evaluate(*float_model->model, test_loader, classes, c.progress, "  float").metrics.top1();
    float_model.reset();
    data::LoaderOptions co = lo;  // training images, shuffled, without augmentation
    data::DataLoader calib_loader(train_set, co, eval_transform(info.height, info.width, norm, c.crop_pct));
    calibrate_ranges(*model, calib_loader, c.calib_batches, device, c.progress);
    dist::broadcast_buffers(*model);  // rank 0's ranges
    const EvalResult calibrated = evaluate(*model, test_loader, classes, c.progress, "  int8");
    summary.calibrated_top1 = calibrated.metrics.top1();
    best_top1 = summary.calibrated_top1;  // fine-tuning must beat it to replace best.safetensors
    best_score = eval_score(c, calibrated);
    if (main_rank) {
      save_checkpoint(c.out + "/ptq.safetensors", *model, info);
      save_checkpoint(c.out + "/best.safetensors", *model, info, {}, {{"epoch", "0"}});
      std::cerr << "float top-1 " << fmt_pct(summary.float_top1) << "; int8 after calibration (post-training) "
                << fmt_pct(summary.calibrated_top1) << "\n";
    }
    summary.final_top1 = summary.calibrated_top1;
  }
  // Checkpoint: model weights + optimizer + EMA + state, one atomic file;
  // `mid_epoch` (resume_batch > 0) says where in next_epoch the run stands.
  auto save_last = [&](int64_t next_epoch, const RunState& mid_epoch) {
    RunState st = mid_epoch;
    st.config = c.to_json();
    st.next_epoch = next_epoch;
    st.global_step = global_step;
    st.stale_epochs = stale_epochs;
    st.best_epoch = best_epoch;
    st.best_top1 = best_top1;
    st.best_score = best_score;
    st.history = history;
    st.kept_checkpoints = best_epochs.kept();
    st.generator_seed = nn::init_generator().seed();
    st.generator_offset = nn::init_generator().offset();
    const nlohmann::json state = st.to_json();
    nn::NamedTensors extra = optimizer->state().to_named_tensors("__optim__.");
    if (ema) {
      nn::NamedTensors e = ema->state().to_named_tensors("__ema__.");
      extra.insert(extra.end(), e.begin(), e.end());
    }
    if (scaler) {
      nn::NamedTensors sc = scaler->state().to_named_tensors("__scaler__.");
      extra.insert(extra.end(), sc.begin(), sc.end());
    }
    save_checkpoint(c.out + "/last.safetensors", *model, info, extra, {{kRunStateKey, state.dump()}});
    io::write_text_atomically(c.out + "/state.json", state.dump(2) + "\n", "train");
  };
  // Where in its epoch a run saved mid-epoch stands: the batch to start from and
  // the epoch's sums so far over every rank (a collective when there are many).
  auto mid_epoch_state = [&](EpochTally& tally, int64_t batches, int64_t skipped_steps) {
    RunState mid;
    mid.resume_batch = batches;
    mid.epoch_sums = tally.summed_over_ranks();
    mid.epoch_skipped_steps = skipped_steps;
    return mid;
  };
  // After a Ctrl-C or SIGTERM, once last.safetensors holds the run: says so and stops.
  auto stop_for_signal = [&](const std::string& where) {
    const int sig = interrupt_signal();
    clear_interrupt();
    std::cerr << "interrupted (" << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ") " << where << ": saved " << c.out
              << "/last.safetensors; the same command with --resume continues from there\n";
    summary.interrupted_by = sig;
    summary.global_step = global_step;
    return summary;
  };
  const std::vector<Tensor> params = model->parameters();
  bool lag_noted = false;
  for (int64_t epoch = start_epoch; epoch < c.epochs; ++epoch) {
    model->train();
    const int64_t first_batch = epoch == start_epoch ? resume_batch : 0;
    train_loader.start_epoch(epoch, first_batch);
    char label[32];
    std::snprintf(label, sizeof(label), "epoch %lld/%lld", static_cast<long long>(epoch + 1),
                  static_cast<long long>(c.epochs));
    ProgressBar bar(label, train_loader.num_batches(), c.progress, first_batch);
    data::Batch b;
    EpochTally tally(scaler != nullptr, epoch, device);
    int64_t seen = 0, micro = 0, batches = first_batch, skipped_steps = 0;
    if (first_batch > 0) {
      if (main_rank) tally.restore(run.epoch_sums);  // the sums over every rank, counted once
      skipped_steps = run.epoch_skipped_steps;
    }
    const int64_t resumed_seen = tally.seen();  // images of this epoch trained before a resume
    while (train_loader.next(b)) {
      const data::DeviceBatch on_device = data::copy_batch_to_device(b, device);
      Tensor logits, teacher_logits;
      {
        AutocastGuard autocast_scope(autocast);  // forward only: backward never consults the scope
        logits = (*model)(on_device.images);
        if (teachers) teacher_logits = (*teachers)(on_device.images);  // the same (mixed) images
      }
      logits = logits_f32(logits);
      Tensor loss = training_loss(c, logits, on_device, classes);
      if (teachers) loss = distillation_loss(logits, teacher_logits, loss, c.distill_alpha, c.distill_temperature);
      Tensor objective = c.grad_accum > 1 ? mul_scalar(loss, 1.0 / static_cast<double>(c.grad_accum)) : loss;
      if (micro + 1 == c.grad_accum) grad_sync.prepare_for_backward();  // all-reduces overlap this backward
      (scaler ? scaler->scale(objective) : objective).backward();
      tally.add(loss, logits, b);  // before the step: a diverged loss stops the run with the weights unchanged (CPU)
      seen += b.size();
      ++batches;
      if (++micro == c.grad_accum) {
        micro = 0;
        grad_sync.average();  // every rank now holds the whole batch's gradient
        // With a scaler: unscaled (and clipped) gradients, or an inf/nan that skips the step and halves the
        // scale; its finiteness check is the step's one host wait. Without one, clipping never waits for the GPU.
        const bool finite = scaler ? scaler->unscale_(*optimizer, c.clip_grad) : true;
        if (!scaler && c.clip_grad > 0) optim::clip_grad_norm_no_sync_(params, c.clip_grad);
        optimizer->set_lr(plateau ? std::min(schedule->lr(global_step), plateau->lr()) : schedule->lr(global_step));
        if (finite) optimizer->step();
        if (scaler) scaler->update();
        optimizer->zero_grad();
        if (ema && finite) ema->update(*model);
        skipped_steps += finite ? 0 : 1;
        ++global_step;
        if (c.stop_after_steps > 0 && global_step >= c.stop_after_steps) {
          bar.finish("stopped (--stop-after-steps)");
          summary.global_step = global_step;
          return summary;  // as if killed: nothing more is written
        }
        if (c.interrupt_after_steps > 0 && global_step == c.interrupt_after_steps) std::raise(SIGINT);
        if (interrupt_guard && interrupt_signal() != 0) {
          save_last(epoch, mid_epoch_state(tally, batches, skipped_steps));
          bar.finish("interrupted", batches);
          return stop_for_signal("at epoch " + std::to_string(epoch + 1) + "/" + std::to_string(c.epochs) +
                                 ", batch " + std::to_string(batches) + "/" +
                                 std::to_string(train_loader.num_batches()));
        }
        if (c.save_every_steps > 0 && global_step % c.save_every_steps == 0) {
          const RunState progress = mid_epoch_state(tally, batches, skipped_steps);  // every rank
          if (main_rank) save_last(epoch, progress);
        }
      }
      const double secs = bar.elapsed_seconds();
      char extra[160];
      std::snprintf(extra, sizeof(extra), "loss %.4f acc %s lr %.4g %.0f img/s", tally.mean_loss(),
                    fmt_pct(tally.accuracy()).c_str(), optimizer->lr(),
                    secs > 0 ? static_cast<double>(seen) * world / secs : 0.0);
      bar.update(batches, extra);
    }
    // Micro-batches left over when the batch count is not a multiple of
    // --grad-accum are dropped, so no gradient crosses an epoch (or a resume).
    if (micro != 0) optimizer->zero_grad();
    tally.flush();
    const double train_secs = bar.elapsed_seconds();
    bar.finish();
    if (world > 1) tally.sum_over_ranks();

    // Batch-norm statistics differ by rank (each saw its share): rank 0's
    // are evaluated and saved, as in PyTorch's DDP.
    dist::broadcast_buffers(*model);
    // With EMA the averaged weights are evaluated and kept as best; the plain
    // ones are measured too, since early on the average lags far behind them.
    std::optional<EvalResult> plain;
    if (ema) {
      {
        AutocastGuard autocast_scope(autocast);
        plain = evaluate(*model, test_loader, classes, c.progress, "  eval (plain weights)");
      }
      ema->swap_with(*model);
      dist::broadcast_buffers(*model);
    }
    double precise_bn_secs = 0.0;
    if (precise_bn_loader) {
      const auto t0 = std::chrono::steady_clock::now();
      AutocastGuard autocast_scope(autocast);
      recompute_batch_norm_statistics(*model, *precise_bn_loader, epoch, c.precise_bn);
      dist::broadcast_buffers(*model);
      precise_bn_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    EvalResult val = [&] {
      AutocastGuard autocast_scope(autocast);
      return evaluate(*model, test_loader, classes, c.progress, "  eval");
    }();
    const double top1 = val.metrics.top1();
    const double score = eval_score(c, val);
    const bool improved = score > best_score;
    if (improved) {
      best_score = score;
      best_top1 = top1;
      best_epoch = epoch;
      stale_epochs = 0;
      if (main_rank)
        save_checkpoint(c.out + "/best.safetensors", *model, info, {}, {{"epoch", std::to_string(epoch + 1)}});
    } else {
      ++stale_epochs;
    }
    // A diverged epoch (val loss nan or inf) would spoil any average.
    const CheckpointHistory::Decision kept_now =
        std::isfinite(val.loss) ? best_epochs.offer(epoch + 1, score) : CheckpointHistory::Decision{};
    if (kept_now.keep && main_rank)
      save_checkpoint(c.out + "/" + CheckpointHistory::file_name(epoch + 1), *model, info, {},
                      {{"epoch", std::to_string(epoch + 1)}});
    if (ema) ema->swap_with(*model);

    nlohmann::json rec;
    rec["epoch"] = epoch + 1;
    rec["lr"] = optimizer->lr();
    rec["train_loss"] = tally.mean_loss();
    rec["train_top1"] = tally.accuracy();
    rec["val_loss"] = val.loss;
    rec["val_top1"] = top1;
    rec["val_top5"] = val.metrics.top5();
    rec["epoch_seconds"] = train_secs + precise_bn_secs + val.seconds + (plain ? plain->seconds : 0.0);
    if (plain) {
      rec["val_loss_plain"] = plain->loss;
      rec["val_top1_plain"] = plain->metrics.top1();
    }
    rec["images_per_sec"] = train_secs > 0 ? static_cast<double>(tally.seen() - resumed_seen) / train_secs : 0.0;
    if (scaler) {
      rec["loss_scale"] = scaler->current_scale();
      rec["skipped_steps"] = skipped_steps;
    }
    history.push_back(rec);
    const double lr_before = plateau ? plateau->lr() : 0.0;
    const bool plateau_decayed = plateau && observe_plateau(*plateau, c, rec);
    const bool stop_early = c.early_stop > 0 && stale_epochs >= c.early_stop;
    summary.final_top1 = top1;
    summary.epochs_run = epoch + 1;
    if (!main_rank) {
      if (stop_early) break;
      continue;
    }
    const std::pair<const char*, const char*> tags[] = {{"train/loss", "train_loss"}, {"train/top1", "train_top1"},
                                                        {"val/loss", "val_loss"},     {"val/top1", "val_top1"},
                                                        {"val/top5", "val_top5"},     {"lr", "lr"}};
    for (const auto& [tag, key] : tags) tb->add_scalar(tag, rec[key].get<double>(), epoch + 1);
    if (plain) {
      tb->add_scalar("val/loss_plain", plain->loss, epoch + 1);
      tb->add_scalar("val/top1_plain", plain->metrics.top1(), epoch + 1);
    }
    if (scaler) tb->add_scalar("amp/loss_scale", scaler->current_scale(), epoch + 1);
    tb->flush();

    save_last(epoch + 1, RunState());
    // Only once the saved state no longer lists it: a run killed in between
    // resumes with every file its state names.
    if (kept_now.dropped_epoch > 0) fs::remove(c.out + "/" + CheckpointHistory::file_name(kept_now.dropped_epoch));
    write_metric_files(c.out, history);
    const bool last_epoch = epoch + 1 == c.epochs || stop_early;

    char amp_note[96] = "";
    if (scaler)
      std::snprintf(amp_note, sizeof(amp_note), "  loss scale %.6g (%lld skipped)", scaler->current_scale(),
                    static_cast<long long>(skipped_steps));
    const std::string plain_note = plain ? " (EMA; plain weights " + fmt_pct(plain->metrics.top1()) + ")" : "";
    std::fprintf(stderr,
                 "epoch %lld/%lld  train loss %.4f acc %s  val loss %.4f acc %s top5 %s%s  lr %.4g  %.0f img/s%s  %s\n",
                 static_cast<long long>(epoch + 1), static_cast<long long>(c.epochs), rec["train_loss"].get<double>(),
                 fmt_pct(rec["train_top1"].get<double>()).c_str(), val.loss, fmt_pct(top1).c_str(),
                 fmt_pct(val.metrics.top5()).c_str(), plain_note.c_str(), optimizer->lr(),
                 rec["images_per_sec"].get<double>(), amp_note, improved ? "(best)" : "");
    if (plateau_decayed)
      std::fprintf(stderr, "plateau: val %s not better for %lld epoch%s; lr %.4g -> %.4g\n", c.eval_metric.c_str(),
                   static_cast<long long>(c.plateau_patience + 1), c.plateau_patience == 0 ? "" : "s", lr_before,
                   plateau->lr());
    const bool may_precise_bn = c.precise_bn == 0 && c.quantize_from.empty();  // qat's norms are folded
    if (!lag_noted && may_precise_bn && batch_norm_lag_likely(val.loss, rec["train_loss"].get<double>(), classes)) {
      std::fprintf(stderr,
                   "note: val loss %.4g is far above the train loss %.4g; batch-norm running statistics lag weights "
                   "that move fast (high lr, few steps an epoch): --precise-bn 100 recomputes them before each "
                   "evaluation\n",
                   val.loss, rec["train_loss"].get<double>());
      lag_noted = true;
    }
    if (interrupt_guard && interrupt_signal() != 0 && !last_epoch) {  // came during the evaluation: stop here
      summary.epochs_run = epoch + 1;
      return stop_for_signal("after epoch " + std::to_string(epoch + 1) + "/" + std::to_string(c.epochs));
    }
    if (stop_early) {
      std::cerr << "early stop: no improvement for " << stale_epochs << " epochs\n";
      summary.early_stopped = true;
      break;
    }
  }
  summary.completed = true;
  summary.global_step = global_step;
  summary.best_top1 = best_top1;
  summary.best_score = best_score;
  summary.eval_metric = c.eval_metric;
  summary.best_epoch = best_epoch + 1;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  return summary;
}

}  // namespace kestrel::tools
