// Batch-level label mixing (MixUp, CutMix, RICAP), split in two steps: a
// mixer draws a BatchMix (which rows each output row is made of, with what
// weights) and apply_mix moves the pixels. The host loader does both on the
// CPU; the resident loader (data/resident_loader.h) draws the same BatchMix
// from the same generator and builds the mixed batch on the device, so both
// loaders produce the same batches.
#pragma once
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "data/batch.h"
#include "engine/ops/assemble_batch.h"
#include "engine/random.h"

namespace kestrel::data {

// A rectangle of an output row copied from a rectangle of equal size of row
// `src` (of the unmixed batch) whose corner is (src_top, src_left).
using MixTile = AssembleTile;

// Output row = row `base`, then each tile pasted over it in order; then, when
// blend >= 0, weight * that + (1 - weight) * row blend (MixUp). The pixel part
// is a RowPlan, which assemble_batch builds on the device. Soft target = sum
// over target_terms, in order, of weight * that row's target.
struct RowMix : RowPlan {
  std::vector<std::pair<int64_t, float>> target_terms;
};

// One RowMix per row, or none: the batch is left as it is (targets still become
// one-hot, so every batch of a mixing run carries targets).
struct BatchMix {
  std::vector<RowMix> rows;
  bool identity() const { return rows.empty(); }
};

// Draws the mix of a batch of n images of h x w pixels.
using BatchMixer = std::function<BatchMix(int64_t n, int h, int w, Generator& gen)>;

// MixUp (Zhang et al. 2018): lambda ~ Beta(alpha, alpha), x = lambda x + (1 - lambda) x[perm].
BatchMixer mixup_mixer(double alpha, double p = 1.0);
// CutMix (Yun et al. 2019): a box of area (1 - lambda) from x[perm]; lambda re-set to the exact area kept.
BatchMixer cutmix_mixer(double alpha, double p = 1.0);
// RICAP (Takahashi et al. 2018): four random crops tiled around a boundary point
// drawn from Beta(beta, beta); targets weighted by the area of each crop.
BatchMixer ricap_mixer(double beta, double p = 1.0);
// One of several mixers per batch, by probability (u < p0: the first, u < p0 + p1:
// the second, ...; no mix past the sum).
BatchMixer choose_mixer(std::vector<std::pair<double, BatchMixer>> choices);

// The deterministic cores: mix rows with perm by lambda / paste a box from perm.
BatchMix mix_rows(const std::vector<int64_t>& perm, double lambda);
BatchMix paste_box_rows(const std::vector<int64_t>& perm, int top, int left, int bh, int bw, int h, int w);

// Applies a mix to a host batch: images [N, H, W, C] f32, targets set from
// labels (one-hot) when undefined.
void apply_mix(Batch& batch, const BatchMix& mix, int64_t num_classes);
// The soft targets a mix gives, from [N, K] f32 host targets.
Tensor mix_targets(const Tensor& targets, const BatchMix& mix);
// A loader batch transform: draw, then apply.
using BatchTransform = std::function<void(Batch&, Generator&)>;
BatchTransform mixing_transform(BatchMixer mixer, int64_t num_classes);

BatchTransform mixup(double alpha, int64_t num_classes, double p = 1.0);
BatchTransform cutmix(double alpha, int64_t num_classes, double p = 1.0);
BatchTransform ricap(double beta, int64_t num_classes, double p = 1.0);
// Either MixUp or CutMix per batch (switch_prob chooses CutMix).
BatchTransform mixup_or_cutmix(double mixup_alpha, double cutmix_alpha, int64_t num_classes, double switch_prob = 0.5);
void mix_batch(Batch& batch, const std::vector<int64_t>& perm, double lambda, int64_t num_classes);
void paste_box(Batch& batch, const std::vector<int64_t>& perm, int top, int left, int bh, int bw, int64_t num_classes);

// Soft targets [N, num_classes] from labels, with optional label smoothing.
Tensor one_hot(const Tensor& labels, int64_t num_classes, float smoothing = 0.0f);
double sample_beta(double a, double b, Generator& gen);
std::vector<int64_t> random_permutation(int64_t n, Generator& gen);

}  // namespace kestrel::data
