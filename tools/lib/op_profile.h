// Where a model's time goes, like torch.profiler's key_averages(): the events
// of a timed trace (engine/trace.h) summed by kind of op (a 3x3 depthwise
// convolution, a batch norm's backward) and by layer. Each event's time runs
// from the previous event's end, so an op the trace does not name is counted
// in the next one it does. On CUDA every op waits for its kernels, so the
// times are the GPU's, with no launch overlapped: the profiled total exceeds
// an unprofiled pass.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/trace.h"

namespace kestrel::tools {

struct ProfileRow {
  std::string name;   // a kind ("conv2d 3x3 dw s2", "batch_norm backward") or a layer and its output ("layer1.0.conv1 conv2d [8,56,56,64]")
  double calls = 0;   // per pass
  double ms = 0;      // per pass
  double macs = 0;    // forward multiply-adds per pass (0 for backward rows)
};

struct OpProfile {
  std::vector<ProfileRow> kinds;   // slowest first
  std::vector<ProfileRow> layers;  // slowest first
  double total_ms = 0;             // per pass
};

// The kind of a forward op: its name, and for a convolution its window,
// "dw" when depthwise (or "gN" when grouped), stride and dilation.
std::string op_kind(const TraceEvent& e);

// events: `passes` runs of the same work under one timed recorder.
OpProfile summarize_profile(const std::vector<TraceEvent>& events, int64_t passes);

// Markdown: the kinds, then the `top` slowest layers (all with top < 0).
std::string profile_markdown(const OpProfile& p, int64_t top);

}  // namespace kestrel::tools
