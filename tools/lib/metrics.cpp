#include "tools/lib/metrics.h"

#include <algorithm>
#include <numeric>

#include "engine/dist/process_group.h"

namespace kestrel::tools {

ClassificationMetrics::ClassificationMetrics(int64_t num_classes)
    : num_classes_(num_classes), confusion_(num_classes, std::vector<int64_t>(num_classes, 0)) {
  KCHECK(num_classes > 0, ValueError, "metrics: num_classes must be positive, got ", num_classes);
}

void ClassificationMetrics::update(const Tensor& logits, const Tensor& labels) {
  KCHECK(logits.dim() == 2 && logits.size(1) == num_classes_, ShapeError, "metrics: logits ",
         shape_str(logits.shape()), " do not have ", num_classes_, " classes");
  KCHECK(labels.numel() == logits.size(0), ShapeError, "metrics: ", labels.numel(), " labels for ", logits.size(0),
         " rows of logits");
  const std::vector<float> v = logits.to_vector();
  const std::vector<int64_t> y = labels.to_vector_i64();
  const int64_t c = num_classes_, k = std::min<int64_t>(5, c);
  std::vector<int64_t> order(c);
  for (int64_t i = 0; i < logits.size(0); ++i) {
    const float* row = v.data() + i * c;
    const int64_t label = y[i];
    KCHECK(label >= 0 && label < c, ValueError, "metrics: label ", label, " out of range [0, ", c, ")");
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [row](int64_t a, int64_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    const int64_t pred = order[0];
    top1_hits_ += pred == label;
    top5_hits_ += std::find(order.begin(), order.begin() + k, label) != order.begin() + k;
    ++confusion_[label][pred];
    ++count_;
  }
}

void ClassificationMetrics::add_loss(double loss_sum, int64_t count) {
  loss_sum_ += loss_sum;
  loss_count_ += count;
}

void ClassificationMetrics::sum_over_ranks() {
  // Counts travel as doubles: exact below 2^53.
  std::vector<double> v = {static_cast<double>(count_), static_cast<double>(top1_hits_),
                           static_cast<double>(top5_hits_), static_cast<double>(loss_count_), loss_sum_};
  for (const auto& row : confusion_)
    for (int64_t n : row) v.push_back(static_cast<double>(n));
  v = dist::all_reduce_sum(std::move(v));
  count_ = static_cast<int64_t>(v[0]);
  top1_hits_ = static_cast<int64_t>(v[1]);
  top5_hits_ = static_cast<int64_t>(v[2]);
  loss_count_ = static_cast<int64_t>(v[3]);
  loss_sum_ = v[4];
  size_t i = 5;
  for (auto& row : confusion_)
    for (int64_t& n : row) n = static_cast<int64_t>(v[i++]);
}

double ClassificationMetrics::top1() const { return count_ ? static_cast<double>(top1_hits_) / count_ : 0.0; }
double ClassificationMetrics::top5() const { return count_ ? static_cast<double>(top5_hits_) / count_ : 0.0; }

std::vector<double> ClassificationMetrics::per_class_accuracy() const { return recall(); }

std::vector<double> ClassificationMetrics::precision() const {
  std::vector<double> out(num_classes_, 0.0);
  for (int64_t p = 0; p < num_classes_; ++p) {
    int64_t predicted = 0;
    for (int64_t t = 0; t < num_classes_; ++t) predicted += confusion_[t][p];
    out[p] = predicted ? static_cast<double>(confusion_[p][p]) / predicted : 0.0;
  }
  return out;
}

std::vector<double> ClassificationMetrics::recall() const {
  std::vector<double> out(num_classes_, 0.0);
  for (int64_t t = 0; t < num_classes_; ++t) {
    const int64_t actual = std::accumulate(confusion_[t].begin(), confusion_[t].end(), int64_t{0});
    out[t] = actual ? static_cast<double>(confusion_[t][t]) / actual : 0.0;
  }
  return out;
}

std::vector<double> ClassificationMetrics::f1() const {
  const std::vector<double> p = precision(), r = recall();
  std::vector<double> out(num_classes_, 0.0);
  for (int64_t i = 0; i < num_classes_; ++i) out[i] = p[i] + r[i] > 0 ? 2 * p[i] * r[i] / (p[i] + r[i]) : 0.0;
  return out;
}

std::vector<char> ClassificationMetrics::present() const {
  std::vector<char> out(num_classes_, 0);
  for (int64_t t = 0; t < num_classes_; ++t)
    for (int64_t p = 0; p < num_classes_; ++p)
      if (confusion_[t][p] > 0) out[t] = out[p] = 1;
  return out;
}

double ClassificationMetrics::macro_average(const std::vector<double>& per_class) const {
  const std::vector<char> in = present();
  double sum = 0.0;
  int64_t n = 0;
  for (int64_t k = 0; k < num_classes_; ++k)
    if (in[k]) sum += per_class[k], ++n;
  return n ? sum / static_cast<double>(n) : 0.0;
}

double ClassificationMetrics::macro_precision() const { return macro_average(precision()); }
double ClassificationMetrics::macro_recall() const { return macro_average(recall()); }
double ClassificationMetrics::macro_f1() const { return macro_average(f1()); }

int64_t ClassificationMetrics::macro_class_count() const {
  const std::vector<char> in = present();
  return std::count(in.begin(), in.end(), 1);
}

LatencyStats latency_stats(std::vector<double> samples) {
  LatencyStats s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  s.median = n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
  s.p95 = samples[std::min(n - 1, static_cast<size_t>(0.95 * static_cast<double>(n - 1) + 0.5))];
  s.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(n);
  return s;
}

}  // namespace kestrel::tools
