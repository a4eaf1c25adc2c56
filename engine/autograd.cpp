#include "engine/autograd.h"

#include <optional>
#include <unordered_map>

#include "engine/autocast.h"
#include "engine/ops/elementwise.h"
#include "engine/trace.h"

namespace kestrel {

namespace {
thread_local bool g_grad_enabled = true;

// A timed trace's event for one node's backward, timed to its last kernel.
void add_backward_event(TraceRecorder& r, const Node& node, const std::vector<Tensor>& grads) {
  Device device = Device::cpu();
  for (const Tensor& g : grads)
    if (g.defined()) device = g.device();
  TraceEvent e;
  e.op = node.op;
  e.scope = node.scope;
  e.output_shape = node.output_shape;
  e.backward = true;
  e.seconds = r.lap(device);
  r.add(std::move(e));
}
}  // namespace

bool GradMode::enabled() { return g_grad_enabled; }
void GradMode::set_enabled(bool on) { g_grad_enabled = on; }

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!GradMode::enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Tensor& record(Tensor& output, const char* op, const std::vector<Tensor>& inputs, BackwardFn backward) {
  if (!needs_grad(inputs)) return output;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->output_shape = output.shape();
  node->output_dtype = output.dtype();
  node->edges.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined() && t.requires_grad()) {
      if (t.grad_fn())
        e.node = t.grad_fn();
      else
        e.leaf = t.impl_ptr();
    }
    node->edges.push_back(std::move(e));
  }
  node->backward = std::move(backward);
  if (const TraceRecorder* r = active_trace(); r != nullptr && r->timed()) node->scope = current_trace_scope();
  output.impl().grad_fn = std::move(node);
  output.impl().requires_grad = true;
  return output;
}

namespace {

// True when nothing else can see t's memory: the only handle on its TensorImpl,
// the only user of its Storage, and covering exactly that storage.
bool sole_owner(const Tensor& t) {
  return t.impl_ptr().use_count() == 1 && t.storage().use_count() == 1 && t.offset() == 0 && t.is_contiguous() &&
         !t.requires_grad() && t.storage()->nbytes() == static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
}

void accumulate_leaf(TensorImpl& leaf, Tensor grad) {
  if (grad.dtype() != leaf.dtype) grad = grad.to(leaf.dtype);
  if (!leaf.grad) {
    // Own the buffer: a gradient may alias another tensor (views, identity ops),
    // so it is copied unless this is the last handle on a fresh buffer.
    leaf.grad = sole_owner(grad) ? grad.impl_ptr() : grad.contiguous().clone().impl_ptr();
  } else {
    Tensor existing(leaf.grad);
    add_(existing, grad);
  }
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_root) {
  KCHECK(root.requires_grad(), AutogradError,
         "backward: tensor does not require grad (no parameter or input with requires_grad reached it)");
  Tensor seed = grad_root;
  if (!seed.defined()) {
    KCHECK(root.numel() == 1, AutogradError, "backward: output has shape ", shape_str(root.shape()),
           "; a gradient must be given for a non-scalar output");
    seed = Tensor::ones(root.shape(), root.dtype(), root.device());
  }
  KCHECK(seed.shape() == root.shape(), ShapeError, "backward: gradient shape ", shape_str(seed.shape()),
         " does not match output shape ", shape_str(root.shape()));
  NoGradGuard no_grad;
  // Closures call engine ops (add, mul, ...): a backward() inside an autocast
  // scope must not cast their operands, so the scope is off for the whole pass.
  AutocastGuard no_autocast(DType::F32);
  // Under a timed trace (the op profile) each node's backward is one event,
  // and the ops it runs are not traced as forward ops.
  TraceRecorder* timed = active_trace() != nullptr && active_trace()->timed() ? active_trace() : nullptr;
  std::optional<TracePause> hide_ops;
  if (timed != nullptr) hide_ops.emplace();
  if (!root.grad_fn()) {  // a leaf: its gradient is the seed
    accumulate_leaf(root.impl(), std::move(seed));
    for (auto& hook : root.impl().grad_ready_hooks) {
      Tensor t(root.impl_ptr());
      hook(t);
    }
    return;
  }

  // Count consumers of every node and leaf reachable from the root.
  std::unordered_map<Node*, int> pending;
  std::unordered_map<TensorImpl*, int> leaf_pending;
  std::vector<Node*> stack{root.grad_fn().get()};
  pending[root.grad_fn().get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    KCHECK(n->backward != nullptr, AutogradError, "backward: the graph through '", n->op,
           "' was already freed by an earlier backward()");
    for (const Edge& e : n->edges) {
      if (e.node) {
        auto it = pending.find(e.node.get());
        if (it == pending.end()) {
          pending[e.node.get()] = 1;
          stack.push_back(e.node.get());
        } else {
          ++it->second;
        }
      } else if (e.leaf) {
        ++leaf_pending[e.leaf.get()];
      }
    }
  }

  std::unordered_map<Node*, Tensor> grads;
  grads[root.grad_fn().get()] = seed;
  std::vector<std::shared_ptr<Node>> ready{root.grad_fn()};
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.back();
    ready.pop_back();
    Tensor g = grads[node.get()];
    grads.erase(node.get());
    for (const auto& hook : node->gradient_hooks) hook(g);
    std::vector<bool> needs;
    needs.reserve(node->edges.size());
    for (const Edge& e : node->edges) needs.push_back(e.active());
    std::vector<Tensor> input_grads = node->backward(g, needs);
    node->backward = nullptr;
    if (timed != nullptr) add_backward_event(*timed, *node, input_grads);
    KCHECK(input_grads.size() == node->edges.size(), AutogradError, "backward of '", node->op, "' returned ",
           input_grads.size(), " gradients for ", node->edges.size(), " inputs");
    for (size_t i = 0; i < node->edges.size(); ++i) {
      const Edge& e = node->edges[i];
      if (!e.active()) continue;
      Tensor& gi = input_grads[i];
      if (e.node) {
        if (gi.defined()) {
          auto it = grads.find(e.node.get());
          if (it == grads.end())
            grads.emplace(e.node.get(), gi);
          else
            it->second = it->second + gi;
        }
        if (--pending[e.node.get()] == 0) {
          if (grads.find(e.node.get()) == grads.end()) {
            // No gradient flowed along any path: nothing to propagate further,
            // but release its consumers' counts.
            grads.emplace(e.node.get(), Tensor::zeros(e.node->output_shape, e.node->output_dtype, g.device()));
          }
          ready.push_back(e.node);
        }
      } else {
        if (gi.defined()) {
          KCHECK(gi.shape() == e.leaf->shape, AutogradError, "backward of '", node->op,
                 "' produced a gradient of shape ", shape_str(gi.shape()), " for an input of shape ",
                 shape_str(e.leaf->shape));
          accumulate_leaf(*e.leaf, std::move(gi));
        }
        if (--leaf_pending[e.leaf.get()] == 0) {
          Tensor t(e.leaf);
          for (auto& hook : e.leaf->grad_ready_hooks) hook(t);
        }
      }
    }
  }
}

void on_gradient(const Tensor& t, std::function<void(const Tensor&)> hook) {
  KCHECK(t.defined() && t.grad_fn() != nullptr, AutogradError,
         "on_gradient: the tensor is not the output of a recorded op (a leaf, or made without grad)");
  t.grad_fn()->gradient_hooks.push_back(std::move(hook));
}

void Tensor::backward(const Tensor& grad) const { run_backward(*this, grad); }

}  // namespace kestrel
