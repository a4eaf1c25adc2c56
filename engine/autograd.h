// Define-by-run tape. Each differentiable op calls record(); backward() walks
// the recorded nodes once in reverse topological order.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace kestrel {

// grads[i] is the gradient for inputs[i]; an undefined tensor means "none".
// needs[i] tells whether inputs[i] wants a gradient, so work can be skipped.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<bool>& needs)>;

struct Edge {
  std::shared_ptr<Node> node;        // input produced by another op
  std::shared_ptr<TensorImpl> leaf;  // input is a leaf that requires grad
  bool active() const { return node != nullptr || leaf != nullptr; }
};

struct Node {
  std::string op;
  std::vector<Edge> edges;  // one per input
  BackwardFn backward;      // released after it runs, freeing saved tensors
  Shape output_shape;
  DType output_dtype = DType::F32;
  // Called with the gradient of the node's output when backward reaches it
  // (on_gradient: Grad-CAM reads a feature map's gradient this way).
  std::vector<std::function<void(const Tensor&)>> gradient_hooks;
  // The module scope the op ran in, kept only under a timed trace (the op
  // profile times each node's backward under it).
  std::string scope;
};

class GradMode {
 public:
  static bool enabled();
  static void set_enabled(bool on);
};

// Disables recording in its scope (inference, optimizer updates, backward itself).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(GradMode::enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

bool needs_grad(const std::vector<Tensor>& inputs);

// Attaches a node computing `output` from `inputs` when grad mode is on and
// some input requires grad. Returns output for chaining.
Tensor& record(Tensor& output, const char* op, const std::vector<Tensor>& inputs, BackwardFn backward);

void run_backward(const Tensor& root, const Tensor& grad_root);

// Calls `hook` with d(root)/d(t) during the next backward that reaches `t`,
// an op's output (not a leaf). Throws AutogradError when t has no history.
void on_gradient(const Tensor& t, std::function<void(const Tensor&)> hook);

}  // namespace kestrel
