// The N best epochs of a run, each kept as checkpoint-E.safetensors (E counted
// from 1) for `kestrel average`, as timm's --checkpoint-hist keeps them.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace kestrel::tools {

struct KeptCheckpoint {
  int64_t epoch = 0;   // counted from 1
  double score = 0.0;  // --eval-metric's score, higher is better
};

// As saved in the run state: [{"epoch": 7, "score": 0.91}, ...].
nlohmann::json kept_to_json(const std::vector<KeptCheckpoint>& kept);
std::vector<KeptCheckpoint> kept_from_json(const nlohmann::json& j);

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

 private:
  int64_t capacity_;
  std::vector<KeptCheckpoint> kept_;
};

}  // namespace kestrel::tools
