#include "tools/lib/model_bench.h"

#include <memory>
#include <vector>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/nn/graphed_forward.h"
#include "engine/ops/loss.h"
#include "engine/optim/grad_scaler.h"
#include "engine/optim/sgd.h"
#include "engine/random.h"
#include "engine/trace.h"
#include "models/common.h"
#include "models/fuse.h"
#include "models/registry.h"
#include "models/summary.h"
#include "tools/lib/device_select.h"
#include "tools/lib/metrics.h"
#include "tools/lib/progress.h"

namespace kestrel::tools {

namespace {

// Median milliseconds of `iters` calls after `warmup`.
template <typename F>
double median_ms(const BenchOptions& o, F&& step) {
  return latency_stats(timed_calls_ms(o.device, o.warmup, o.iters, step)).median;
}

// `iters` more calls under a timed trace, summed per call.
template <typename F>
OpProfile profile_calls(const BenchOptions& o, F&& step) {
  TraceRecorder trace(/*keep_tensors=*/false, /*timed=*/true);
  for (int64_t i = 0; i < o.iters; ++i) {
    trace.restart_clock(o.device);  // the gap between calls is no op's
    step();
  }
  return summarize_profile(trace.events(), o.iters);
}

models::ModelOptions model_options(const BenchOptions& o) {
  models::ModelOptions mo;
  mo.num_classes = o.num_classes > 0 ? o.num_classes : models::find_model(o.model).default_classes;
  mo.in_channels = o.channels;
  mo.width_mult = o.width_mult;
  mo.cifar_stem = models::cifar_stem_for_resolution(o.height);
  return mo;
}

}  // namespace

void check_bench_options(const BenchOptions& o) {
  KCHECK(o.batch >= 1, ValueError, "bench: --batch-size must be >= 1, got ", o.batch);
  KCHECK(o.iters >= 1, ValueError, "bench: --iters must be >= 1, got ", o.iters);
  KCHECK(o.warmup >= 0, ValueError, "bench: --warmup must be >= 0, got ", o.warmup);
  const DType autocast = amp_dtype(o.amp);
  KCHECK(autocast == DType::F32 || o.device.is_cuda(), ValueError, "bench: --amp ", o.amp,
         " needs a CUDA device (it is ", o.device.str(), ")");
  KCHECK(!o.cuda_graph || o.device.is_cuda(), ValueError, "bench: --cuda-graph needs a CUDA device (it is ",
         o.device.str(), ")");
  KCHECK(!o.cuda_graph || !o.profile, ValueError,
         "bench: --cuda-graph and --profile do not go together (a replayed graph runs no ops to time one by one)");
  models::check_common_options(o.model, model_options(o));
}

BenchResult bench_model(const BenchOptions& o) {
  check_bench_options(o);
  const DType autocast = amp_dtype(o.amp);
  const models::ModelOptions mo = model_options(o);
  const int64_t classes = *mo.num_classes;
  manual_seed(0);
  nn::ModulePtr model = models::build_model(o.model, mo);
  BenchResult r;
  r.params = model->num_parameters();
  r.macs = models::summarize(*model, {1, o.height, o.width, o.channels}).total_macs;
  if (!o.device.is_cpu()) model->to(o.device);

  Generator gen(1);
  const Tensor images = Tensor::randn({o.batch, o.height, o.width, o.channels}, gen).to(o.device);
  std::vector<int64_t> y(static_cast<size_t>(o.batch));
  for (int64_t& v : y) v = gen.randint(0, classes);
  const Tensor labels = Tensor::from_vector_i64(y, {o.batch}).to(o.device);

  // Inference as kestrel eval and predict run it: on the CPU with its batch
  // norms folded, in a second copy when training steps are timed after it.
  nn::ModulePtr inference = model;
  if (o.fuse && o.device.is_cpu()) {
    if (o.train) {
      manual_seed(0);
      inference = models::build_model(o.model, mo);
    }
    models::fuse_for_inference(*inference, {1, o.height, o.width, o.channels});
  }
  inference->eval();
  const int64_t passes_each = o.warmup + o.iters + (o.profile ? o.iters : 0);
  ProgressBar bar("bench " + o.model, passes_each * (o.train ? 2 : 1), o.progress);
  int64_t passes = 0;
  std::unique_ptr<nn::GraphedForward> graphed;
  if (o.cuda_graph) graphed = std::make_unique<nn::GraphedForward>(*inference, o.device);
  auto infer = [&] {
    {
      NoGradGuard no_grad;
      AutocastGuard scope(autocast);
      if (graphed != nullptr)
        (*graphed)(images);
      else
        (*inference)(images);
    }
    bar.update(++passes, "inference");
  };
  r.infer_ms = median_ms(o, infer);
  if (o.profile) r.infer_profile = profile_calls(o, infer);
  graphed.reset();
  inference.reset();
  r.infer_img_s = 1000.0 * static_cast<double>(o.batch) / r.infer_ms;
  if (!o.train) {
    bar.finish();
    return r;
  }

  model->train();
  optim::SGDOptions so;
  so.lr = 1e-3;  // small: the weights should stay sane over the timed steps
  so.momentum = 0.9;
  optim::SGD opt(model->parameters(), so);
  optim::GradScaler scaler;
  const bool scaled = o.amp == "fp16";
  auto train_step = [&] {
    Tensor logits;
    {
      AutocastGuard scope(autocast);
      logits = (*model)(images);
    }
    if (logits.dtype() != DType::F32) logits = logits.to(DType::F32);
    const Tensor loss = cross_entropy(logits, labels);
    if (scaled) {
      scaler.scale(loss).backward();
      scaler.step(opt);
      scaler.update();
    } else {
      loss.backward();
      opt.step();
    }
    opt.zero_grad();
    trace_region("optimizer step", o.device);
    bar.update(++passes, "training steps");
  };
  r.train_ms = median_ms(o, train_step);
  if (o.profile) r.train_profile = profile_calls(o, train_step);
  r.train_img_s = 1000.0 * static_cast<double>(o.batch) / r.train_ms;
  bar.finish();
  return r;
}

}  // namespace kestrel::tools
