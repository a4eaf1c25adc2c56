#include "engine/trace.h"

#include <chrono>
#include <cstdio>

#include "engine/device_sync.h"
#include "engine/text.h"

namespace kestrel {

namespace {
thread_local TraceRecorder* g_active = nullptr;
thread_local std::vector<std::string> g_scope;

double clock_seconds(Device device) {
  synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

TraceRecorder::TraceRecorder(bool keep_tensors, bool timed)
    : keep_tensors_(keep_tensors), timed_(timed), previous_(g_active) {
  if (timed_) lap_start_ = clock_seconds(Device::cpu());
  g_active = this;
}
TraceRecorder::~TraceRecorder() { g_active = previous_; }
TraceRecorder* active_trace() { return g_active; }

double TraceRecorder::lap(Device device) {
  const double now = clock_seconds(device);
  const double s = now - lap_start_;
  lap_start_ = now;
  return s;
}

void TraceRecorder::restart_clock(Device device) { lap_start_ = clock_seconds(device); }

void trace_region(const char* name, Device device) {
  TraceRecorder* r = active_trace();
  if (r == nullptr || !r->timed()) return;
  TraceEvent e;
  e.op = name;
  e.scope = current_trace_scope();
  e.seconds = r->lap(device);
  r->add(std::move(e));
}

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
  return join(v, ",", [](int64_t x) { return std::to_string(x); });
}

std::string exact_str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

}  // namespace kestrel
