#include "models/quantize.h"

#include <map>

#include "engine/autograd.h"
#include "engine/nn/layers.h"
#include "engine/random.h"
#include "engine/trace.h"
#include "models/common.h"

namespace kestrel::models {

namespace {

bool same_view(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && a.storage() == b.storage() && a.offset() == b.offset() &&
         a.shape() == b.shape();
}

struct Layers {
  std::map<const Storage*, std::pair<nn::Conv2d*, std::string>> convs;  // by weight storage, with the module path
  std::map<const Storage*, std::pair<nn::Linear*, std::string>> linears;
  std::map<const Storage*, nn::BatchNorm2d*> norms;  // by running_mean storage
};

Layers find_layers(nn::Module& model) {
  Layers l;
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

}  // namespace

bool is_quantized(const nn::Module& model) {
  bool any = false;
  visit_modules(const_cast<nn::Module&>(model), [&](nn::Module& m, const std::string&) {
    if (auto* c = dynamic_cast<nn::Conv2d*>(&m)) any = any || c->quant.enabled;
    if (auto* f = dynamic_cast<nn::Linear*>(&m)) any = any || f->quant.enabled;
  });
  return any;
}

QuantizationReport prepare_quantization(nn::Module& model, const Shape& input_nhwc) {
  KCHECK(input_nhwc.size() == 4, ShapeError, "quantization: the input must be [N, H, W, C], got ",
         shape_str(input_nhwc));
  KCHECK(!is_quantized(model), ValueError, "quantization: the model is already prepared");
  for (const Tensor& p : model.parameters())
    KCHECK(p.device().is_cpu(), DeviceError, "quantization: prepare the model on the CPU, then move it");
  visit_modules(model, [](nn::Module& m, const std::string&) {
    if (auto* se = dynamic_cast<SqueezeExcite*>(&m)) se->through_modules = true;  // its convs become int8 too
  });
  const Layers layers = find_layers(model);
  const std::vector<TraceEvent> events = trace_eval_forward(model, input_nhwc);

  std::map<const Storage*, int> readers;  // how many ops read each storage
  for (const TraceEvent& e : events)
    for (const Tensor& t : e.inputs)
      if (t.defined()) ++readers[t.storage().get()];

  QuantizationReport report;
  NoGradGuard no_grad;
  for (size_t i = 0; i < events.size(); ++i) {
    const TraceEvent& e = events[i];
    if (e.op != "conv2d" && e.op != "conv2d_act" && e.op != "linear") continue;
    const Storage* w = e.inputs[1].storage().get();
    if (e.op == "linear") {
      auto it = layers.linears.find(w);
      if (it == layers.linears.end() || it->second.second != e.scope || it->second.first->quant.enabled) {
        report.float_layers.push_back(e.scope + " (" + e.op + ")");
        continue;
      }
      it->second.first->enable_quantization(true);
      ++report.linears;
      continue;
    }
    auto it = layers.convs.find(w);
    if (e.op != "conv2d" || it == layers.convs.end() || it->second.second != e.scope ||
        it->second.first->quant.enabled) {
      report.float_layers.push_back(e.scope + " (" + e.op + ")");
      continue;
    }
    nn::Conv2d& conv = *it->second.first;
    // The one reader of the conv's output is a batch norm (in eval mode: its running statistics)?
    nn::BatchNorm2d* bn = nullptr;
    bool with_residual = false;
    if (readers[e.output.storage().get()] == 1) {
      for (size_t j = i + 1; j < events.size() && bn == nullptr; ++j) {
        const TraceEvent& n = events[j];
        if ((n.op != "batch_norm" && n.op != "batch_norm_act") || !same_view(n.inputs[0], e.output)) continue;
        auto b = layers.norms.find(n.inputs[4].defined() ? n.inputs[4].storage().get() : nullptr);
        if (b == layers.norms.end() || !b->second->weight.defined() || b->second->folded) continue;
        bn = b->second;
        with_residual = n.inputs[3].defined();
      }
    }
    if (bn != nullptr) {
      const FoldedConv f = fold_batch_norm(conv, *bn);
      conv.add_bias();
      conv.weight.copy_(f.weight);
      conv.bias.copy_(f.bias);
      bn->fold_away(with_residual);
      ++report.folded_norms;
    }
    conv.enable_quantization(/*quantize_output=*/bn == nullptr);
    ++report.convs;
  }
  KCHECK(report.convs + report.linears > 0, ValueError,
         "quantization: the model calls no Conv2d or Linear layer that can be quantized");
  return report;
}

}  // namespace kestrel::models
