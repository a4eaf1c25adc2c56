// The N best epochs of a run, each kept as checkpoint-E.safetensors (E counted
// from 1) for `kestrel average`, as timm's --checkpoint-hist keeps them. The
// run state lists them; the files follow it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tools/lib/run_state.h"

namespace kestrel::tools {

class CheckpointHistory {
 public:
  explicit CheckpointHistory(int64_t capacity, std::vector<KeptCheckpoint> kept = {});

  struct Decision {
    bool keep = false;          // save this epoch's checkpoint
    int64_t dropped_epoch = 0;  // > 0: the epoch it pushes out, whose file goes
  };
  // An epoch joins while there is room or when it beats the worst kept one
  // (a tie keeps the earlier epoch).
  Decision offer(int64_t epoch, double score);

  const std::vector<KeptCheckpoint>& kept() const { return kept_; }  // best first
  static std::string file_name(int64_t epoch);                       // "checkpoint-7.safetensors"
  static bool is_file_name(const std::string& name);                 // checkpoint-<digits>.safetensors

 private:
  int64_t capacity_;
  std::vector<KeptCheckpoint> kept_;
};

// The kept checkpoints of a run folder, best first, from its state.json: the
// `top` best, or all of them when top is 0; at least two (to average).
std::vector<std::string> kept_checkpoint_paths(const std::string& run_dir, int64_t top);

// Removes the epoch files in run_dir that `kept` does not list: those of a run
// killed after saving an epoch's file but before its state, or after its state
// but before removing the epoch it pushed out. Returns how many went.
int remove_unlisted_epoch_files(const std::string& run_dir, const std::vector<KeptCheckpoint>& kept);

}  // namespace kestrel::tools
