#include "engine/nn/graphed_forward.h"

#include <map>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/error.h"

#if defined(KESTREL_HAVE_CUDA)
#include "engine/cuda/graph.h"
#endif

namespace kestrel::nn {

#if defined(KESTREL_HAVE_CUDA)

// One captured pass per input shape and dtype. The caller's stream and the
// graph's are ordered by events both ways: the input copy before a replay,
// the output copy after it, and the next input copy after that.
struct GraphedForward::Graphs {
  struct Pass {
    cuda::Graph graph;  // first: destroyed after the tensors it owns
    Tensor input, output;
    explicit Pass(int device) : graph(device) {}
  };
  std::map<std::pair<Shape, DType>, std::unique_ptr<Pass>> passes;
  cuda::Event caller_ready{false}, graph_done{false};
  int captured = 0;
};

GraphedForward::GraphedForward(Module& model, Device device) : model_(model), device_(device) {
  if (device.is_cuda()) graphs_ = std::make_unique<Graphs>();
}

Tensor GraphedForward::operator()(const Tensor& input) {
  if (graphs_ == nullptr) return model_(input);
  KCHECK(input.device() == device_, ValueError, "GraphedForward on ", device_.str(), " got an input on ",
         input.device().str());
  NoGradGuard no_grad;
  cuda::DeviceGuard on_device(device_.index);  // events and launches go to this device's streams
  Graphs& g = *graphs_;
  auto key = std::make_pair(input.shape(), input.dtype());
  auto it = g.passes.find(key);
  if (it == g.passes.end()) {
    if (static_cast<int>(g.passes.size()) >= kMaxGraphs) g.passes.clear();
    it = g.passes.emplace(key, std::make_unique<Graphs::Pass>(device_.index)).first;
    it->second->input = Tensor::empty(input.shape(), input.dtype(), device_);
  }
  Graphs::Pass& pass = *it->second;
  const cudaStream_t caller = cuda::current_stream(device_.index);
  pass.input.copy_(input);
  g.caller_ready.record(caller);
  g.caller_ready.wait(pass.graph.stream());
  if (!pass.graph.captured()) {
    pass.graph.capture([&] { pass.output = model_(pass.input); });
    ++g.captured;
  }
  pass.graph.replay();
  g.graph_done.record(pass.graph.stream());
  g.graph_done.wait(caller);
  return pass.output.clone();
}

int GraphedForward::captures() const { return graphs_ == nullptr ? 0 : graphs_->captured; }

#else

struct GraphedForward::Graphs {};

GraphedForward::GraphedForward(Module& model, Device device) : model_(model), device_(device) {
  KCHECK(device.is_cpu(), DeviceError, "this build of Kestrel has no CUDA backend");
}

Tensor GraphedForward::operator()(const Tensor& input) { return model_(input); }

int GraphedForward::captures() const { return 0; }

#endif

GraphedForward::~GraphedForward() = default;

}  // namespace kestrel::nn
