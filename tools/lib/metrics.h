// Classification metrics from logits and labels, accumulated over batches.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace kestrel::tools {

class ClassificationMetrics {
 public:
  explicit ClassificationMetrics(int64_t num_classes);
  // logits [N, C] (any float dtype/device), labels i64 [N].
  void update(const Tensor& logits, const Tensor& labels);
  void add_loss(double loss_sum, int64_t count);
  // Data parallel: every rank's counts summed into every rank's metrics (each
  // rank calls it once, having seen its own share of the data).
  void sum_over_ranks();

  int64_t count() const { return count_; }
  double top1() const;
  double top5() const;  // top-min(5, C)
  double loss() const { return count_ ? loss_sum_ / static_cast<double>(loss_count_ ? loss_count_ : count_) : 0.0; }
  std::vector<double> per_class_accuracy() const;
  std::vector<double> precision() const;
  std::vector<double> recall() const;
  std::vector<double> f1() const;
  // Means over the classes present in the labels or the predictions
  // (scikit-learn's default), so classes a --limit left out do not count as 0.
  double macro_precision() const;
  double macro_recall() const;
  double macro_f1() const;
  int64_t macro_class_count() const;  // how many classes those means run over
  // confusion[true][predicted]
  const std::vector<std::vector<int64_t>>& confusion() const { return confusion_; }
  int64_t num_classes() const { return num_classes_; }

 private:
  std::vector<char> present() const;  // per class: in the labels or the predictions
  double macro_average(const std::vector<double>& per_class) const;

  int64_t num_classes_;
  int64_t count_ = 0, top1_hits_ = 0, top5_hits_ = 0, loss_count_ = 0;
  double loss_sum_ = 0.0;
  std::vector<std::vector<int64_t>> confusion_;
};

// Median and 95th percentile of a sample (milliseconds, say).
struct LatencyStats {
  double median = 0, p95 = 0, mean = 0;
};
LatencyStats latency_stats(std::vector<double> samples);

}  // namespace kestrel::tools
