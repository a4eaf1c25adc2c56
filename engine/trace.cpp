#include "engine/trace.h"

#include <cstdio>

namespace kestrel {

namespace {
thread_local TraceRecorder* g_active = nullptr;
thread_local std::vector<std::string> g_scope;
}  // namespace

TraceRecorder::TraceRecorder(bool keep_tensors) : keep_tensors_(keep_tensors), previous_(g_active) { g_active = this; }
TraceRecorder::~TraceRecorder() { g_active = previous_; }
TraceRecorder* active_trace() { return g_active; }

TracePause::TracePause() : paused_(g_active) { g_active = nullptr; }
TracePause::~TracePause() { g_active = paused_; }

TraceScope::TraceScope(const std::string& name) { g_scope.push_back(name); }
TraceScope::~TraceScope() { g_scope.pop_back(); }

std::string current_trace_scope() {
  std::string s;
  for (const std::string& part : g_scope) {
    if (part.empty()) continue;
    if (!s.empty()) s += ".";
    s += part;
  }
  return s;
}

std::string join_ints(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::string exact_str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

}  // namespace kestrel
