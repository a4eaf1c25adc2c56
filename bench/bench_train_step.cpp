// One CPU training step of the 150,690-parameter depthwise-separable CIFAR net
// (models::build_model("cifar10_200k"), cifar stem), batch 128, SGD with
// momentum: forward, cross-entropy, backward, optimizer step, zero_grad.
// bench/torch_train_step.py times the same network and step in PyTorch, and
// tools/bench_cpu.sh runs both with the same thread count and writes the ratio
// into docs/performance.md.
//
// Counters: img_per_s (batch / wall time per step) and, as a rough breakdown,
// the share of each step spent in forward+loss, backward and the SGD update
// (fwd_pct, bwd_pct, opt_pct). Threads: OMP_NUM_THREADS (default: all cores).
//
//   build-perf/bench/bench_train_step --benchmark_min_time=3 --benchmark_repetitions=3
#include <benchmark/benchmark.h>
#include <omp.h>

#include <chrono>
#include <vector>

#include "engine/ops/loss.h"
#include "engine/optim/sgd.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "models/registry.h"

namespace {

using namespace kestrel;
using Clock = std::chrono::steady_clock;

constexpr int64_t kBatch = 128;
constexpr int64_t kClasses = 10;

// Same hyper-parameters as bench/torch_train_step.py.
optim::SGDOptions sgd_options() {
  optim::SGDOptions o;
  o.lr = 0.05;
  o.momentum = 0.9;
  o.weight_decay = 5e-4;
  return o;
}

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

void BM_TrainStep(benchmark::State& state) {
  const int64_t channels = state.range(0);
  const int64_t side = state.range(1);
  models::ModelOptions mo;
  mo.num_classes = kClasses;
  mo.in_channels = channels;
  mo.cifar_stem = true;
  manual_seed(0);
  nn::ModulePtr model = models::build_model("cifar10_200k", mo);
  model->train();
  optim::SGD opt(model->parameters(), sgd_options());

  Generator gen(1234);
  const Tensor images = Tensor::randn({kBatch, side, side, channels}, gen);  // NHWC
  std::vector<int64_t> y(kBatch);
  for (int64_t i = 0; i < kBatch; ++i) y[static_cast<size_t>(i)] = gen.randint(0, kClasses);
  const Tensor labels = Tensor::from_vector_i64(y, {kBatch});

  auto step = [&](double* t_fwd, double* t_bwd, double* t_opt) {
    const auto t0 = Clock::now();
    Tensor loss = cross_entropy((*model)(images), labels);
    const auto t1 = Clock::now();
    loss.backward();
    const auto t2 = Clock::now();
    opt.step();
    opt.zero_grad();
    const auto t3 = Clock::now();
    *t_fwd += seconds(t0, t1);
    *t_bwd += seconds(t1, t2);
    *t_opt += seconds(t2, t3);
  };

  double fwd = 0, bwd = 0, upd = 0;
  for (int i = 0; i < 2; ++i) step(&fwd, &bwd, &upd);  // warm-up: first-touch pages, momentum buffers
  fwd = bwd = upd = 0;
  for (auto _ : state) step(&fwd, &bwd, &upd);

  const double total = fwd + bwd + upd;
  state.counters["img_per_s"] =
      benchmark::Counter(static_cast<double>(kBatch) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["fwd_pct"] = 100.0 * fwd / total;
  state.counters["bwd_pct"] = 100.0 * bwd / total;
  state.counters["opt_pct"] = 100.0 * upd / total;
  state.counters["threads"] = omp_get_max_threads();
  state.SetLabel("cifar10_200k " + std::to_string(channels) + "x" + std::to_string(side) + "x" +
                 std::to_string(side) + " batch " + std::to_string(kBatch));
}

BENCHMARK(BM_TrainStep)
    ->ArgNames({"C", "HW"})
    ->Args({1, 28})
    ->Args({3, 32})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
