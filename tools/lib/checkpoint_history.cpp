#include "tools/lib/checkpoint_history.h"

#include <algorithm>
#include <utility>

#include "engine/error.h"

namespace kestrel::tools {

CheckpointHistory::CheckpointHistory(int64_t capacity, std::vector<KeptCheckpoint> kept)
    : capacity_(capacity), kept_(std::move(kept)) {
  KCHECK(capacity_ >= 0, ValueError, "--checkpoint-hist must be >= 0 (0: off), got ", capacity_);
}

CheckpointHistory::Decision CheckpointHistory::offer(int64_t epoch, double score) {
  Decision d;
  if (capacity_ == 0) return d;
  const bool full = static_cast<int64_t>(kept_.size()) >= capacity_;
  if (full && !(score > kept_.back().score)) return d;
  if (full) {
    d.dropped_epoch = kept_.back().epoch;
    kept_.pop_back();
  }
  // After every kept epoch scoring at least as well: ties stay in epoch order.
  const auto at = std::find_if(kept_.begin(), kept_.end(), [&](const KeptCheckpoint& k) { return score > k.score; });
  kept_.insert(at, {epoch, score});
  d.keep = true;
  return d;
}

nlohmann::json kept_to_json(const std::vector<KeptCheckpoint>& kept) {
  nlohmann::json j = nlohmann::json::array();
  for (const KeptCheckpoint& k : kept) j.push_back({{"epoch", k.epoch}, {"score", k.score}});
  return j;
}

std::vector<KeptCheckpoint> kept_from_json(const nlohmann::json& j) {
  std::vector<KeptCheckpoint> kept;
  for (const auto& k : j) kept.push_back({k.at("epoch").get<int64_t>(), k.at("score").get<double>()});
  return kept;
}

std::string CheckpointHistory::file_name(int64_t epoch) {
  return "checkpoint-" + std::to_string(epoch) + ".safetensors";
}

}  // namespace kestrel::tools
