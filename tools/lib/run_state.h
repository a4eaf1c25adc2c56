// The training state kept in last.safetensors' metadata (and as state.json):
// where a run stands and what it has measured, all that --resume needs besides
// the tensors. Saved mid-epoch (Ctrl-C, --save-every-steps), it also says
// which batch to start from and holds that epoch's sums so far.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <vector>

namespace kestrel::tools {

// The metadata key of the state in last.safetensors.
inline constexpr const char* kRunStateKey = "kestrel.train_state";

// An epoch's training batches so far: the loss summed over finite losses, hits.
struct EpochSums {
  double loss_sum = 0.0;
  int64_t loss_seen = 0, seen = 0, correct = 0;
};

// An epoch whose weights train --checkpoint-hist keeps (tools/lib/checkpoint_history.h).
struct KeptCheckpoint {
  int64_t epoch = 0;   // counted from 1
  double score = 0.0;  // --eval-metric's score, higher is better
};

struct RunState {
  nlohmann::json config;  // the run's recipe (TrainConfig::to_json)
  int64_t next_epoch = 0;
  int64_t resume_batch = 0;  // > 0: saved mid-epoch; next_epoch starts at this batch
  EpochSums epoch_sums;      // mid-epoch: next_epoch's sums so far, over every rank
  int64_t epoch_skipped_steps = 0;
  int64_t global_step = 0;
  int64_t stale_epochs = 0;
  int64_t best_epoch = -1;  // counted from 0 (saved from 1, as printed)
  double best_top1 = -1.0;     // the best epoch's top-1
  double best_score = -1e300;  // what --eval-metric ranks by (higher is better); older runs: best_top1
  nlohmann::json history = nlohmann::json::array();  // one metrics row per finished epoch
  std::vector<KeptCheckpoint> kept_checkpoints;      // --checkpoint-hist: the best epochs' files, best first
  uint64_t generator_seed = 0, generator_offset = 0;

  nlohmann::json to_json() const;
  static RunState from_json(const nlohmann::json& j);  // older runs' files too
};

}  // namespace kestrel::tools
