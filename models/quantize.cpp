#include "models/quantize.h"

#include "models/common.h"
#include "models/fuse.h"
#include "models/traced_layers.h"

namespace kestrel::models {

bool is_quantized(const nn::Module& model) {
  bool any = false;
  visit_modules(const_cast<nn::Module&>(model), [&](nn::Module& m, const std::string&) {
    if (auto* c = dynamic_cast<nn::Conv2d*>(&m)) any = any || c->quant.enabled;
    if (auto* f = dynamic_cast<nn::Linear*>(&m)) any = any || f->quant.enabled;
  });
  return any;
}

QuantizationReport prepare_quantization(nn::Module& model, const Shape& input_nhwc) {
  KCHECK(!is_quantized(model), ValueError, "quantization: the model is already prepared");
  KCHECK(!is_fused_for_inference(model), ValueError,
         "quantization: the model is fused for inference; quantize the model as trained");
  visit_modules(model, [](nn::Module& m, const std::string&) {
    if (auto* se = dynamic_cast<SqueezeExcite*>(&m)) se->through_modules = true;  // its convs become int8 too
  });
  QuantizationReport report;
  for (const TracedLayer& l : trace_layers(model, input_nhwc, "quantization")) {
    if (l.linear != nullptr && !l.linear->quant.enabled) {
      l.linear->enable_quantization(true);
      ++report.linears;
    } else if (l.conv != nullptr && !l.conv->quant.enabled) {
      if (l.norm != nullptr) {
        fold_norm_into_conv(*l.conv, *l.norm);
        l.norm->fold_away(l.norm_has_residual);
        ++report.folded_norms;
      }
      l.conv->enable_quantization(/*quantize_output=*/l.norm == nullptr);
      ++report.convs;
    } else {
      report.float_layers.push_back(l.scope + " (" + l.op + ")");
    }
  }
  KCHECK(report.convs + report.linears > 0, ValueError,
         "quantization: the model calls no Conv2d or Linear layer that can be quantized");
  return report;
}

}  // namespace kestrel::models
