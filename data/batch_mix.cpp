#include "data/batch_mix.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "data/transforms.h"
#include "engine/cpu/assemble_batch.h"
#include "engine/error.h"

namespace kestrel::data {

double sample_beta(double a, double b, Generator& gen) {
  KCHECK(a > 0 && b > 0, ValueError, "sample_beta: parameters must be > 0, got ", a, ", ", b);
  // Gamma(k, 1) by Marsaglia and Tsang (2000); k < 1 through Gamma(k + 1) * U^(1/k).
  auto gamma = [&gen](double k) {
    double boost = 1.0;
    if (k < 1.0) {
      boost = std::pow(std::max(gen.uniform(), 1e-300), 1.0 / k);
      k += 1.0;
    }
    const double d = k - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      const double x = gen.normal();
      double v = 1.0 + c * x;
      if (v <= 0) continue;
      v = v * v * v;
      const double u = gen.uniform();
      if (u < 1.0 - 0.0331 * x * x * x * x || std::log(std::max(u, 1e-300)) < 0.5 * x * x + d * (1.0 - v + std::log(v)))
        return d * v * boost;
    }
  };
  const double x = gamma(a), y = gamma(b);
  return x + y > 0 ? x / (x + y) : 0.5;
}

Tensor one_hot(const Tensor& labels, int64_t num_classes, float smoothing) {
  KCHECK(num_classes > 0, ValueError, "one_hot: num_classes must be > 0");
  const std::vector<int64_t> y = labels.to_vector_i64();
  const auto n = static_cast<int64_t>(y.size());
  Tensor t = Tensor::empty({n, num_classes});
  float* p = t.data<float>();
  const float off = smoothing / static_cast<float>(num_classes), on = 1.0f - smoothing + off;
  for (int64_t i = 0; i < n; ++i) {
    KCHECK(y[i] >= 0 && y[i] < num_classes, ValueError, "one_hot: label ", y[i], " out of range for ", num_classes,
           " classes");
    for (int64_t k = 0; k < num_classes; ++k) p[i * num_classes + k] = off;
    p[i * num_classes + y[i]] = on;
  }
  return t;
}

std::vector<int64_t> random_permutation(int64_t n, Generator& gen) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[gen.randint(0, i + 1)]);
  return perm;
}

// ------------------------------------------------------------------ drawing

BatchMix mix_rows(const std::vector<int64_t>& perm, double lambda) {
  const auto l = static_cast<float>(lambda);
  BatchMix mix;
  for (size_t i = 0; i < perm.size(); ++i) {
    RowMix r;
    r.base = static_cast<int64_t>(i);
    r.blend = perm[i];
    r.weight = l;
    r.target_terms = {{r.base, l}, {perm[i], 1 - l}};
    mix.rows.push_back(std::move(r));
  }
  return mix;
}

BatchMix paste_box_rows(const std::vector<int64_t>& perm, int top, int left, int bh, int bw, int h, int w) {
  const double kept = 1.0 - static_cast<double>(bh) * bw / static_cast<double>(h * w);
  const auto l = static_cast<float>(kept);
  BatchMix mix;
  for (size_t i = 0; i < perm.size(); ++i) {
    RowMix r;
    r.base = static_cast<int64_t>(i);
    r.tiles = {MixTile{perm[i], top, left, bh, bw, top, left}};
    r.target_terms = {{r.base, l}, {perm[i], 1 - l}};
    mix.rows.push_back(std::move(r));
  }
  return mix;
}

BatchMixer mixup_mixer(double alpha, double p) {
  KCHECK(alpha > 0, ValueError, "mixup: alpha must be > 0, got ", alpha);
  return [=](int64_t n, int, int, Generator& gen) {
    if (!coin(gen, p)) return BatchMix{};
    const double lambda = sample_beta(alpha, alpha, gen);
    return mix_rows(random_permutation(n, gen), lambda);
  };
}

BatchMixer cutmix_mixer(double alpha, double p) {
  KCHECK(alpha > 0, ValueError, "cutmix: alpha must be > 0, got ", alpha);
  return [=](int64_t n, int H, int W, Generator& gen) {
    if (!coin(gen, p)) return BatchMix{};
    const double lambda = sample_beta(alpha, alpha, gen);
    const double r = std::sqrt(1.0 - lambda);
    const int ch = static_cast<int>(gen.randint(0, H)), cw = static_cast<int>(gen.randint(0, W));
    const int bh = static_cast<int>(H * r), bw = static_cast<int>(W * r);
    const int y0 = std::max(0, ch - bh / 2), y1 = std::min(H, ch + bh / 2);
    const int x0 = std::max(0, cw - bw / 2), x1 = std::min(W, cw + bw / 2);
    return paste_box_rows(random_permutation(n, gen), y0, x0, y1 - y0, x1 - x0, H, W);
  };
}

BatchMixer ricap_mixer(double beta, double p) {
  KCHECK(beta > 0, ValueError, "ricap: beta must be > 0, got ", beta);
  return [=](int64_t n, int H, int W, Generator& gen) {
    if (!coin(gen, p)) return BatchMix{};
    const auto w = static_cast<int>(std::lround(W * sample_beta(beta, beta, gen)));
    const auto h = static_cast<int>(std::lround(H * sample_beta(beta, beta, gen)));
    const int ws[4] = {w, W - w, w, W - w}, hs[4] = {h, h, H - h, H - h};
    const int ox[4] = {0, w, 0, w}, oy[4] = {0, 0, h, h};
    BatchMix mix;
    mix.rows.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) mix.rows[i].base = i;
    for (int k = 0; k < 4; ++k) {
      const std::vector<int64_t> perm = random_permutation(n, gen);
      const float area = static_cast<float>(ws[k] * hs[k]) / static_cast<float>(W * H);
      for (int64_t i = 0; i < n; ++i) {
        // A random ws x hs crop of image perm[i], placed in quadrant k of image i.
        const auto sx = static_cast<int>(gen.randint(0, W - ws[k] + 1));
        const auto sy = static_cast<int>(gen.randint(0, H - hs[k] + 1));
        mix.rows[i].tiles.push_back(MixTile{perm[i], oy[k], ox[k], hs[k], ws[k], sy, sx});
        mix.rows[i].target_terms.emplace_back(perm[i], area);
      }
    }
    return mix;
  };
}

BatchMixer choose_mixer(std::vector<std::pair<double, BatchMixer>> choices) {
  double total = 0;
  for (const auto& c : choices) {
    KCHECK(c.first >= 0, ValueError, "batch mixing: a probability is negative (", c.first, ")");
    total += c.first;
  }
  KCHECK(total <= 1.0 + 1e-9, ValueError, "batch mixing: the probabilities sum to ", total,
         "; they are exclusive per batch, so the sum must be at most 1");
  return [choices = std::move(choices)](int64_t n, int h, int w, Generator& gen) {
    const double u = gen.uniform();
    double edge = 0;
    for (const auto& c : choices) {
      edge += c.first;
      if (u < edge) return c.second(n, h, w, gen);
    }
    return BatchMix{};
  };
}

// ------------------------------------------------------------------ applying

namespace {

void check_row_count(const BatchMix& mix, int64_t n) {
  KCHECK(mix.identity() || static_cast<int64_t>(mix.rows.size()) == n, ShapeError, "batch mixing: ",
         mix.rows.size(), " row mixes for a batch of ", n);
}

void ensure_targets(Batch& b, int64_t num_classes) {
  if (!b.targets.defined()) b.targets = one_hot(b.labels, num_classes);
  KCHECK(b.targets.dim() == 2 && b.targets.size(1) == num_classes, ShapeError, "batch mixing: targets ",
         shape_str(b.targets.shape()), " do not have ", num_classes, " classes");
  b.images = b.images.contiguous();
  b.targets = b.targets.contiguous();
}

}  // namespace

Tensor mix_targets(const Tensor& targets, const BatchMix& mix) {
  if (mix.identity()) return targets;
  const Tensor t0 = targets.contiguous();
  const int64_t n = t0.size(0), K = t0.size(1);
  check_row_count(mix, n);
  for (const RowMix& r : mix.rows)
    for (const auto& term : r.target_terms)
      KCHECK(term.first >= 0 && term.first < n, ShapeError, "batch mixing: a target names row ", term.first,
             " outside a batch of ", n);
  Tensor out = Tensor::zeros({n, K});
  const float* ts = t0.data<float>();
  float* t = out.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (const auto& [src, weight] : mix.rows[i].target_terms)
      for (int64_t k = 0; k < K; ++k) t[i * K + k] += weight * ts[src * K + k];
  return out;
}

void apply_mix(Batch& b, const BatchMix& mix, int64_t num_classes) {
  ensure_targets(b, num_classes);
  if (mix.identity()) return;
  const int64_t n = b.images.size(0), H = b.images.size(1), W = b.images.size(2), C = b.images.size(3);
  check_row_count(mix, n);
  for (const RowMix& r : mix.rows) check_row_plan("batch mixing", r, n, H, W);
  const Tensor x0 = b.images.clone();
  float* x = b.images.data<float>();
  for (int64_t i = 0; i < n; ++i) cpu::compose_row(x0.data<float>(), H, W, C, mix.rows[i], x + i * H * W * C);
  b.targets = mix_targets(b.targets, mix);
}

BatchTransform mixing_transform(BatchMixer mixer, int64_t num_classes) {
  KCHECK(num_classes > 0, ValueError, "batch mixing: num_classes must be > 0, got ", num_classes);
  return [mixer = std::move(mixer), num_classes](Batch& b, Generator& gen) {
    const int64_t n = b.size();
    const auto h = static_cast<int>(b.images.size(1)), w = static_cast<int>(b.images.size(2));
    apply_mix(b, mixer(n, h, w, gen), num_classes);
  };
}

BatchTransform mixup(double alpha, int64_t num_classes, double p) {
  return mixing_transform(mixup_mixer(alpha, p), num_classes);
}

BatchTransform cutmix(double alpha, int64_t num_classes, double p) {
  return mixing_transform(cutmix_mixer(alpha, p), num_classes);
}

BatchTransform ricap(double beta, int64_t num_classes, double p) {
  return mixing_transform(ricap_mixer(beta, p), num_classes);
}

BatchTransform mixup_or_cutmix(double mixup_alpha, double cutmix_alpha, int64_t num_classes, double switch_prob) {
  return mixing_transform(
      choose_mixer({{switch_prob, cutmix_mixer(cutmix_alpha)}, {1.0 - switch_prob, mixup_mixer(mixup_alpha)}}),
      num_classes);
}

void mix_batch(Batch& batch, const std::vector<int64_t>& perm, double lambda, int64_t num_classes) {
  apply_mix(batch, mix_rows(perm, lambda), num_classes);
}

void paste_box(Batch& batch, const std::vector<int64_t>& perm, int top, int left, int bh, int bw, int64_t num_classes) {
  const auto h = static_cast<int>(batch.images.size(1)), w = static_cast<int>(batch.images.size(2));
  apply_mix(batch, paste_box_rows(perm, top, left, bh, bw, h, w), num_classes);
}

}  // namespace kestrel::data
