#include "engine/trace.h"

namespace kestrel {

namespace {
thread_local TraceRecorder* g_active = nullptr;
thread_local std::vector<std::string> g_scope;
}  // namespace

TraceRecorder::TraceRecorder() : previous_(g_active) { g_active = this; }
TraceRecorder::~TraceRecorder() { g_active = previous_; }
TraceRecorder* active_trace() { return g_active; }

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

}  // namespace kestrel
