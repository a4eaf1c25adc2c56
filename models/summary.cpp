#include "models/summary.h"

#include <algorithm>
#include <iomanip>
#include <map>
#include <sstream>

#include "engine/autograd.h"
#include "engine/trace.h"
#include "models/common.h"

namespace kestrel::models {

namespace {

int64_t own_params(const nn::Module& m) {
  int64_t n = m.num_parameters();
  for (auto& [name, child] : m.named_children()) n -= child->num_parameters();
  return n;
}

// "3x3" or "3" -> 3 (square windows only: every model here uses them).
int64_t first_int(const std::map<std::string, std::string>& attrs, const char* key, int64_t fallback) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  return std::stoll(it->second);
}

struct RF {
  int64_t size = 1;  // receptive field in input pixels
  int64_t jump = 1;  // input pixels between neighbouring outputs
};

using StorageKey = std::weak_ptr<Storage>;
using StorageMap = std::map<StorageKey, RF, std::owner_less<StorageKey>>;

bool is_window_op(const TraceEvent& e) { return e.attrs.count("kernel") && e.attrs.count("stride"); }

}  // namespace

ModelSummary summarize(nn::Module& model, const Shape& input_nhwc) {
  KCHECK(input_nhwc.size() == 4, ShapeError, "summary: input must be NHWC [N,H,W,C], got ", shape_str(input_nhwc));
  std::map<std::string, nn::Module*> modules;
  visit_modules(model, [&](nn::Module& m, const std::string& path) { modules[path] = &m; });

  const bool was_training = model.is_training();
  model.eval();
  Tensor x = Tensor::zeros(input_nhwc);
  Tensor y;
  TraceRecorder rec;
  {
    NoGradGuard ng;
    y = model(x);
  }
  model.train(was_training);

  ModelSummary s;
  s.input_shape = input_nhwc;
  s.output_shape = y.shape();
  s.total_params = model.num_parameters();

  std::map<std::string, size_t> row_of;
  StorageMap rf;
  rf[StorageKey(x.storage())] = RF{};
  RF last;
  for (const TraceEvent& e : rec.events()) {
    // The row: the innermost module whose scope the op ran in.
    const std::string name = e.scope.empty() ? "(model)" : e.scope;
    auto it = row_of.find(name);
    if (it == row_of.end()) {
      SummaryRow row;
      row.name = name;
      auto m = modules.find(e.scope);
      if (m != modules.end()) {
        row.type = m->second->named_children().empty() ? m->second->type_name() : e.op;
        row.params = own_params(*m->second);
      } else {
        row.type = e.op;
      }
      it = row_of.emplace(name, s.rows.size()).first;
      s.rows.push_back(row);
    }
    SummaryRow& row = s.rows[it->second];
    row.output_shape = e.output_shape;
    row.macs += e.macs;
    s.total_macs += e.macs;

    // Receptive field: the largest over the op's traced inputs; a window op grows it.
    RF in;
    bool found = false;
    const size_t n_in = is_window_op(e) ? std::min<size_t>(1, e.input_storages.size()) : e.input_storages.size();
    for (size_t i = 0; i < n_in; ++i) {
      auto r = rf.find(e.input_storages[i]);
      if (r == rf.end()) continue;
      if (!found || r->second.size > in.size) in = r->second;
      found = true;
    }
    if (!found) continue;  // weights-only or untraced producers: no spatial input
    RF out = in;
    if (is_window_op(e)) {
      const int64_t k = first_int(e.attrs, "kernel", 1), st = first_int(e.attrs, "stride", 1),
                    d = first_int(e.attrs, "dilation", 1);
      out.size = in.size + (k - 1) * d * in.jump;
      out.jump = in.jump * st;
    }
    auto& slot = rf[e.output_storage];
    if (out.size >= slot.size) slot = out;
    last = slot;
  }
  // A block that runs its children's weights through one op of its own (the
  // fused squeeze-and-excitation) is one row holding all of its parameters.
  for (SummaryRow& row : s.rows) {
    auto m = modules.find(row.name);
    if (m == modules.end() || m->second->named_children().empty()) continue;
    const std::string prefix = row.name + ".";
    const bool has_child_rows = std::any_of(s.rows.begin(), s.rows.end(), [&](const SummaryRow& r) {
      return r.name.compare(0, prefix.size(), prefix) == 0;
    });
    if (has_child_rows) continue;
    row.type = m->second->type_name();
    row.params = m->second->num_parameters();
  }
  auto final_rf = rf.find(StorageKey(y.storage()));
  const RF result = final_rf != rf.end() ? final_rf->second : last;
  s.receptive_field = result.size;
  s.effective_stride = result.jump;
  return s;
}

namespace {
std::string with_commas(int64_t v) {
  std::string d = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) out += ',';
    out += d[i];
  }
  return (v < 0 ? "-" : "") + out;
}
}  // namespace

std::string format_summary(const std::string& model_name, const ModelSummary& s) {
  size_t wn = 5, wt = 4;
  for (const SummaryRow& r : s.rows) {
    wn = std::max(wn, r.name.size());
    wt = std::max(wt, r.type.size());
  }
  std::ostringstream out;
  out << model_name << ": input " << shape_str(s.input_shape) << " (NHWC)\n";
  out << std::left << std::setw(static_cast<int>(wn)) << "layer" << "  " << std::setw(static_cast<int>(wt)) << "type"
      << "  " << std::setw(20) << "output (NHWC)" << std::right << std::setw(14) << "params" << std::setw(18)
      << "mult-adds" << "\n";
  out << std::string(wn + wt + 4 + 20 + 14 + 18, '-') << "\n";
  for (const SummaryRow& r : s.rows) {
    out << std::left << std::setw(static_cast<int>(wn)) << r.name << "  " << std::setw(static_cast<int>(wt)) << r.type
        << "  " << std::setw(20) << shape_str(r.output_shape) << std::right << std::setw(14) << with_commas(r.params)
        << std::setw(18) << with_commas(r.macs) << "\n";
  }
  out << std::string(wn + wt + 4 + 20 + 14 + 18, '-') << "\n";
  out << "output:            " << shape_str(s.output_shape) << "\n";
  out << "parameters:        " << with_commas(s.total_params) << " (" << std::fixed << std::setprecision(2)
      << static_cast<double>(s.total_params) / 1e6 << "M, trainable)\n";
  out << "multiply-adds:     " << with_commas(s.total_macs) << " (" << std::setprecision(3)
      << static_cast<double>(s.total_macs) / 1e9
      << "B; FLOPs counted as multiply-adds as fvcore does: conv/linear/matmul one per weight use, batch norm one "
         "per element, activations/pooling/elementwise zero)\n";
  out << "receptive field:   " << s.receptive_field << " px (analytic, deepest conv/pool path; global pooling, SE "
      << "and coordinate attention not counted), effective stride " << s.effective_stride << "\n";
  return out.str();
}

}  // namespace kestrel::models
