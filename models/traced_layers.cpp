#include "models/traced_layers.h"

#include <map>

#include "engine/autograd.h"
#include "engine/random.h"
#include "engine/trace.h"
#include "models/common.h"

namespace kestrel::models {

namespace {

bool same_view(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && a.storage() == b.storage() && a.offset() == b.offset() &&
         a.shape() == b.shape();
}

struct Modules {
  std::map<const Storage*, std::pair<nn::Conv2d*, std::string>> convs;  // by weight storage, with the module path
  std::map<const Storage*, std::pair<nn::Linear*, std::string>> linears;
  std::map<const Storage*, nn::BatchNorm2d*> norms;  // by running_mean storage
};

Modules find_modules(nn::Module& model) {
  Modules l;
  visit_modules(model, [&](nn::Module& m, const std::string& path) {
    if (auto* c = dynamic_cast<nn::Conv2d*>(&m)) l.convs[c->weight.storage().get()] = {c, path};
    if (auto* f = dynamic_cast<nn::Linear*>(&m)) l.linears[f->weight.storage().get()] = {f, path};
    if (auto* b = dynamic_cast<nn::BatchNorm2d*>(&m); b && !b->folded) l.norms[b->running_mean.storage().get()] = b;
  });
  return l;
}

std::vector<TraceEvent> trace_eval_forward(nn::Module& model, const Shape& input_nhwc) {
  Generator gen(0);
  const Tensor x = Tensor::randn({2, input_nhwc[1], input_nhwc[2], input_nhwc[3]}, gen);
  const bool was_training = model.is_training();
  model.eval();
  std::vector<TraceEvent> events;
  try {
    TraceRecorder trace(/*keep_tensors=*/true);
    NoGradGuard no_grad;
    model(x);
    events = trace.events();
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  return events;
}

bool is_norm(const TraceEvent& e) { return e.op == "batch_norm" || e.op == "batch_norm_act"; }

const Storage* storage_of(const Tensor& t) { return t.defined() ? t.storage().get() : nullptr; }

}  // namespace

std::vector<TracedLayer> trace_layers(nn::Module& model, const Shape& input_nhwc, const char* what) {
  KCHECK(input_nhwc.size() == 4, ShapeError, what, ": the input must be [N, H, W, C], got ", shape_str(input_nhwc));
  for (const Tensor& p : model.parameters())
    KCHECK(p.device().is_cpu(), DeviceError, what, ": prepare the model on the CPU, then move it");
  const Modules modules = find_modules(model);
  const std::vector<TraceEvent> events = trace_eval_forward(model, input_nhwc);

  std::map<const Storage*, int> readers, uses;  // ops reading each storage; calls per conv weight / norm
  for (const TraceEvent& e : events) {
    for (const Tensor& t : e.inputs)
      if (t.defined()) ++readers[t.storage().get()];
    if (e.op == "conv2d" || e.op == "conv2d_act") ++uses[storage_of(e.inputs[1])];
    if (is_norm(e)) ++uses[storage_of(e.inputs[4])];
  }

  std::vector<TracedLayer> layers;
  for (size_t i = 0; i < events.size(); ++i) {
    const TraceEvent& e = events[i];
    if (e.op != "conv2d" && e.op != "conv2d_act" && e.op != "linear") continue;
    TracedLayer l;
    l.op = e.op;
    l.scope = e.scope;
    const Storage* w = storage_of(e.inputs[1]);
    if (e.op == "linear") {
      auto it = modules.linears.find(w);
      if (it != modules.linears.end() && it->second.second == e.scope) l.linear = it->second.first;
      layers.push_back(l);
      continue;
    }
    auto it = modules.convs.find(w);
    if (e.op == "conv2d" && it != modules.convs.end() && it->second.second == e.scope) l.conv = it->second.first;
    if (l.conv != nullptr && uses[w] == 1 && readers[e.output.storage().get()] == 1) {
      for (size_t j = i + 1; j < events.size() && l.norm == nullptr; ++j) {
        const TraceEvent& n = events[j];
        if (!is_norm(n) || !same_view(n.inputs[0], e.output)) continue;
        auto b = modules.norms.find(storage_of(n.inputs[4]));
        if (b == modules.norms.end() || !b->second->weight.defined() || uses[b->first] != 1) continue;
        l.norm = b->second;
        l.norm_has_residual = n.inputs[3].defined();
        l.norm_act = activation_from_name(n.attrs.at("act"));
      }
    }
    layers.push_back(l);
  }
  return layers;
}

void fold_norm_into_conv(nn::Conv2d& conv, const nn::BatchNorm2d& norm) {
  NoGradGuard no_grad;
  const FoldedConv f = fold_batch_norm(conv, norm);
  conv.add_bias();
  conv.weight.copy_(f.weight);
  conv.bias.copy_(f.bias);
}

}  // namespace kestrel::models
