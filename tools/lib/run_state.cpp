#include "tools/lib/run_state.h"

namespace kestrel::tools {

nlohmann::json RunState::to_json() const {
  nlohmann::json j = {{"config", config},
                      {"next_epoch", next_epoch},
                      {"global_step", global_step},
                      {"stale_epochs", stale_epochs},
                      {"best_epoch_number", best_epoch + 1},
                      {"best_top1", best_top1},
                      {"best_score", best_score},
                      {"history", history},
                      {"generator_seed", generator_seed},
                      {"generator_offset", generator_offset}};
  for (const KeptCheckpoint& k : kept_checkpoints)  // [{"epoch": 7, "score": 0.91}, ...], best first
    j["kept_checkpoints"].push_back({{"epoch", k.epoch}, {"score", k.score}});
  if (resume_batch > 0) {
    j["resume_batch"] = resume_batch;
    j["epoch_tally"] = {{"loss_sum", epoch_sums.loss_sum},
                        {"loss_seen", epoch_sums.loss_seen},
                        {"seen", epoch_sums.seen},
                        {"correct", epoch_sums.correct}};
    j["epoch_skipped_steps"] = epoch_skipped_steps;
  }
  return j;
}

RunState RunState::from_json(const nlohmann::json& j) {
  RunState s;
  s.config = j.at("config");
  s.next_epoch = j.at("next_epoch").get<int64_t>();
  s.global_step = j.at("global_step").get<int64_t>();
  s.stale_epochs = j.at("stale_epochs").get<int64_t>();
  s.best_epoch = j.contains("best_epoch_number") ? j["best_epoch_number"].get<int64_t>() - 1
                                                 : j.at("best_epoch").get<int64_t>();  // older runs: from 0
  s.best_top1 = j.at("best_top1").get<double>();
  s.best_score = j.value("best_score", s.best_top1);  // runs saved before --eval-metric ranked by top-1
  s.history = j.at("history");
  for (const auto& k : j.value("kept_checkpoints", nlohmann::json::array()))
    s.kept_checkpoints.push_back({k.at("epoch").get<int64_t>(), k.at("score").get<double>()});
  s.generator_seed = j.at("generator_seed").get<uint64_t>();
  s.generator_offset = j.at("generator_offset").get<uint64_t>();
  s.resume_batch = j.value("resume_batch", int64_t{0});
  if (s.resume_batch > 0) {
    const nlohmann::json& t = j.at("epoch_tally");
    s.epoch_sums = {t.at("loss_sum").get<double>(), t.at("loss_seen").get<int64_t>(), t.at("seen").get<int64_t>(),
                    t.at("correct").get<int64_t>()};
    s.epoch_skipped_steps = j.value("epoch_skipped_steps", int64_t{0});
  }
  return s;
}

}  // namespace kestrel::tools
