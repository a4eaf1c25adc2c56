// The op trace: while a TraceRecorder is active, every op appends what it ran.
// FLOP counting, the model summary and ONNX export read this one record.
// A recorder that keeps tensors (ONNX export) also records views and copies
// (reshape, permute, narrow, expand, clone, cast) and holds every input and
// output, so the whole data flow and every constant's value can be rebuilt.
// A timed recorder (the op profile, tools/lib/op_profile.h) also times each
// op, and each autograd node's backward.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace kestrel {

using TraceAttrs = std::map<std::string, std::string>;

struct TraceEvent {
  std::string op;
  std::string scope;  // dotted module path active when the op ran ("features.3.conv")
  std::vector<Shape> input_shapes;
  Shape output_shape;
  int64_t macs = 0;  // multiply-accumulates, fvcore's convention (one per weight use)
  std::map<std::string, std::string> attrs;
  // Which storages the op read and wrote (views share their base's), so a reader
  // can follow the data flow, e.g. the receptive field along every path.
  std::vector<std::weak_ptr<Storage>> input_storages;
  std::weak_ptr<Storage> output_storage;
  // Only when the recorder keeps tensors: the op's operands and result.
  std::vector<Tensor> inputs;
  Tensor output;
  // Only when the recorder is timed: the time since the previous event ended
  // (so an untraced op's time goes to the next traced one), and whether this
  // is an autograd node's backward rather than a forward op.
  double seconds = 0;
  bool backward = false;
};

class TraceRecorder {
 public:
  explicit TraceRecorder(bool keep_tensors = false, bool timed = false);
  ~TraceRecorder();
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;
  const std::vector<TraceEvent>& events() const { return events_; }
  void add(TraceEvent e) { events_.push_back(std::move(e)); }
  bool keeps_tensors() const { return keep_tensors_; }
  bool timed() const { return timed_; }
  // Seconds since the previous lap (or the start, or restart_clock), once the
  // work queued on `device` is done: a CUDA op is timed to its last kernel.
  double lap(Device device);
  // Starts the next lap now: the time since the last event is not an op's.
  void restart_clock(Device device);

 private:
  std::vector<TraceEvent> events_;
  bool keep_tensors_;
  bool timed_;
  double lap_start_ = 0;
  TraceRecorder* previous_;
};

TraceRecorder* active_trace();
// Whether a trace records each layer by name (summary, ONNX export, int8
// preparation): fused paths that run several layers as one op step aside.
// A timed trace (a profile) takes the fused op as it is.
inline bool layers_are_traced() {
  const TraceRecorder* r = active_trace();
  return r != nullptr && !r->timed();
}

// Hides the ops run in its scope from the active recorder, so an op that
// computes itself with other ops is traced once, as itself.
class TracePause {
 public:
  TracePause();
  ~TracePause();
  TracePause(const TracePause&) = delete;
  TracePause& operator=(const TracePause&) = delete;

 private:
  TraceRecorder* paused_;
};

// Pushes a name onto the module scope for its lifetime.
class TraceScope {
 public:
  explicit TraceScope(const std::string& name);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;
};
std::string current_trace_scope();

// Ops call this; it does nothing unless a recorder is active.
inline void trace_op(const char* op, const std::vector<Tensor>& inputs, const Tensor& output, int64_t macs = 0,
                     std::map<std::string, std::string> attrs = {}) {
  TraceRecorder* r = active_trace();
  if (r == nullptr) return;
  TraceEvent e;
  e.op = op;
  e.scope = current_trace_scope();
  for (const Tensor& t : inputs) {
    e.input_shapes.push_back(t.defined() ? t.shape() : Shape{});
    e.input_storages.push_back(t.defined() ? std::weak_ptr<Storage>(t.storage()) : std::weak_ptr<Storage>());
  }
  e.output_shape = output.shape();
  e.output_storage = output.storage();
  e.macs = macs;
  e.attrs = std::move(attrs);
  if (r->keeps_tensors()) {
    e.inputs = inputs;
    e.output = output;
  }
  if (r->timed()) e.seconds = r->lap(output.defined() ? output.device() : Device::cpu());
  r->add(std::move(e));
}

// A timed recorder's event for work that runs no traced op (an optimizer's
// fused update): call it when the work has been queued.
void trace_region(const char* name, Device device);

// Views and copies: recorded only by a recorder that keeps tensors, so FLOP
// counts and summaries see the same ops as before. `make_attrs` runs only
// then: views are hot, and their attributes are strings.
template <typename MakeAttrs>
void trace_view(const char* op, const Tensor& input, const Tensor& output, MakeAttrs&& make_attrs) {
  TraceRecorder* r = active_trace();
  if (r == nullptr || !r->keeps_tensors()) return;
  trace_op(op, {input}, output, 0, make_attrs());
}
inline void trace_view(const char* op, const Tensor& input, const Tensor& output) {
  trace_view(op, input, output, [] { return TraceAttrs{}; });
}

// Attribute text: "1,2,3"; a double that reads back exactly.
std::string join_ints(const std::vector<int64_t>& v);
std::string exact_str(double v);

}  // namespace kestrel
