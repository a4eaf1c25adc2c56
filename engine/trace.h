// The op trace: while a TraceRecorder is active, every op appends what it ran.
// FLOP counting, the model summary and ONNX export read this one record.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace kestrel {

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
};

class TraceRecorder {
 public:
  TraceRecorder();
  ~TraceRecorder();
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;
  const std::vector<TraceEvent>& events() const { return events_; }
  void add(TraceEvent e) { events_.push_back(std::move(e)); }

 private:
  std::vector<TraceEvent> events_;
  TraceRecorder* previous_;
};

TraceRecorder* active_trace();

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
  r->add(std::move(e));
}

}  // namespace kestrel
