#include "tools/lib/checkpoint_history.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

#include "engine/error.h"

namespace kestrel::tools {

namespace fs = std::filesystem;

CheckpointHistory::CheckpointHistory(int64_t capacity, std::vector<KeptCheckpoint> kept)
    : capacity_(capacity), kept_(std::move(kept)) {
  KCHECK(capacity_ >= 0, ValueError, "CheckpointHistory: capacity must be >= 0, got ", capacity_);
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

std::string CheckpointHistory::file_name(int64_t epoch) {
  return "checkpoint-" + std::to_string(epoch) + ".safetensors";
}

bool CheckpointHistory::is_file_name(const std::string& name) {
  const std::string prefix = "checkpoint-", suffix = ".safetensors";
  if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  const std::string number = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  return number.find_first_not_of("0123456789") == std::string::npos;
}

std::vector<std::string> kept_checkpoint_paths(const std::string& run_dir, int64_t top) {
  const fs::path state_file = fs::path(run_dir) / "state.json";
  std::ifstream in(state_file);
  KCHECK(in.good(), IOError, "average: ", run_dir, " has no state.json (not a kestrel train run folder)");
  RunState run;
  try {
    run = RunState::from_json(nlohmann::json::parse(in));
  } catch (const nlohmann::json::exception& e) {
    throw IOError(detail::concat("average: ", state_file.string(), " is malformed (", e.what(), ")"));
  }
  const auto& kept = run.kept_checkpoints;
  KCHECK(!kept.empty(), ValueError, "average: ", run_dir, " kept no epoch checkpoints (train with --checkpoint-hist "
         "N keeps the N best); or name the checkpoints to average");
  KCHECK(kept.size() >= 2, ValueError, "average: ", run_dir, " kept one epoch (--checkpoint-hist 1), the same "
         "weights as its best.safetensors; averaging needs two or more");
  KCHECK(top == 0 || (top >= 2 && top <= static_cast<int64_t>(kept.size())), ValueError, "average: --top must be "
         "from 2 to the ", kept.size(), " checkpoints ", run_dir, " kept (0: all), got ", top);
  std::vector<std::string> paths;
  const size_t n = top == 0 ? kept.size() : static_cast<size_t>(top);
  for (size_t i = 0; i < n; ++i) paths.push_back((fs::path(run_dir) / CheckpointHistory::file_name(kept[i].epoch)).string());
  return paths;
}

int remove_unlisted_epoch_files(const std::string& run_dir, const std::vector<KeptCheckpoint>& kept) {
  int removed = 0;
  for (const auto& entry : fs::directory_iterator(run_dir)) {
    const std::string name = entry.path().filename().string();
    if (!CheckpointHistory::is_file_name(name)) continue;
    const bool listed = std::any_of(kept.begin(), kept.end(), [&](const KeptCheckpoint& k) {
      return name == CheckpointHistory::file_name(k.epoch);
    });
    if (!listed && fs::remove(entry.path())) ++removed;
  }
  return removed;
}

}  // namespace kestrel::tools
