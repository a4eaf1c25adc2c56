#include "tools/lib/op_profile.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <utility>

namespace kestrel::tools {

namespace {

std::string attr(const TraceEvent& e, const std::string& key) {
  const auto it = e.attrs.find(key);
  return it == e.attrs.end() ? std::string() : it->second;
}

// "2x2" -> "2", "2x1" stays: how a stride or dilation reads in a kind.
std::string square_or_pair(const std::string& v) {
  const size_t x = v.find('x');
  return x != std::string::npos && v.substr(0, x) == v.substr(x + 1) ? v.substr(0, x) : v;
}

struct Sum {
  int64_t calls = 0;
  double seconds = 0;
  int64_t macs = 0;
};

std::vector<ProfileRow> ranked(const std::map<std::string, Sum>& sums, int64_t passes) {
  const double per = 1.0 / static_cast<double>(passes);
  std::vector<ProfileRow> rows;
  for (const auto& [name, s] : sums)
    rows.push_back({name, static_cast<double>(s.calls) * per, s.seconds * 1e3 * per, static_cast<double>(s.macs) * per});
  std::stable_sort(rows.begin(), rows.end(), [](const ProfileRow& a, const ProfileRow& b) { return a.ms > b.ms; });
  return rows;
}

void add_table(std::string& out, const char* first_column, const std::vector<ProfileRow>& rows, size_t count,
               double total_ms) {
  out += std::string("| ") + first_column + " | calls | ms | share | GMAC/s |\n|---|--:|--:|--:|--:|\n";
  char line[512];
  for (size_t i = 0; i < std::min(count, rows.size()); ++i) {
    const ProfileRow& r = rows[i];
    std::string rate = "-";
    if (r.macs > 0 && r.ms > 0) {
      char b[32];
      std::snprintf(b, sizeof(b), "%.1f", r.macs / (r.ms * 1e6));
      rate = b;
    }
    std::snprintf(line, sizeof(line), "| %s | %g | %.3f | %.1f%% | %s |\n", r.name.c_str(), r.calls, r.ms,
                  total_ms > 0 ? 100.0 * r.ms / total_ms : 0.0, rate.c_str());
    out += line;
  }
}

}  // namespace

std::string op_kind(const TraceEvent& e) {
  const std::string kernel = attr(e, "kernel"), groups = attr(e, "groups");
  if (kernel.empty() || groups.empty()) return e.op;
  std::string kind = e.op + " " + kernel;
  const int64_t g = std::stoll(groups);
  const int64_t channels = !e.input_shapes.empty() && !e.input_shapes[0].empty() ? e.input_shapes[0].back() : 0;
  if (g > 1) kind += g == channels ? " dw" : " g" + groups;
  const std::string stride = square_or_pair(attr(e, "stride")), dilation = square_or_pair(attr(e, "dilation"));
  if (!stride.empty() && stride != "1") kind += " s" + stride;
  if (!dilation.empty() && dilation != "1") kind += " d" + dilation;
  return kind;
}

OpProfile summarize_profile(const std::vector<TraceEvent>& events, int64_t passes) {
  OpProfile p;
  if (passes < 1) return p;
  // Each forward op's kind once; a backward node takes the kind of the
  // forward op it came from (same layer, same op).
  std::vector<std::string> kind_of(events.size());
  std::map<std::pair<std::string, std::string>, std::string> forward_kind;
  for (size_t i = 0; i < events.size(); ++i)
    if (!events[i].backward) {
      kind_of[i] = op_kind(events[i]);
      forward_kind.emplace(std::make_pair(events[i].scope, events[i].op), kind_of[i]);
    }
  for (size_t i = 0; i < events.size(); ++i)
    if (events[i].backward) {
      const auto it = forward_kind.find({events[i].scope, events[i].op});
      kind_of[i] = (it != forward_kind.end() ? it->second : events[i].op) + " backward";
    }
  std::map<std::string, Sum> kinds, layers;
  double total = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    const TraceEvent& e = events[i];
    const std::string& kind = kind_of[i];
    const std::string layer = (e.scope.empty() ? "(model)" : e.scope) + " " + e.op + (e.backward ? " backward" : "") +
                              " " + shape_str(e.output_shape);
    for (Sum* s : {&kinds[kind], &layers[layer]}) {
      ++s->calls;
      s->seconds += e.seconds;
      if (!e.backward) s->macs += e.macs;
    }
    total += e.seconds;
  }
  p.kinds = ranked(kinds, passes);
  p.layers = ranked(layers, passes);
  p.total_ms = total * 1e3 / static_cast<double>(passes);
  return p;
}

std::string profile_markdown(const OpProfile& p, int64_t top) {
  std::string out;
  add_table(out, "op", p.kinds, p.kinds.size(), p.total_ms);
  const size_t layers = top < 0 ? p.layers.size() : static_cast<size_t>(top);
  if (layers > 0) {
    out += "\n";
    add_table(out, "layer", p.layers, layers, p.total_ms);
  }
  return out;
}

}  // namespace kestrel::tools
