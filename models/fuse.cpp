#include "models/fuse.h"

#include "models/common.h"
#include "models/quantize.h"
#include "models/traced_layers.h"

namespace kestrel::models {

bool is_fused_for_inference(const nn::Module& model) {
  bool any = false;
  visit_modules(const_cast<nn::Module&>(model), [&](nn::Module& m, const std::string&) {
    if (auto* b = dynamic_cast<nn::BatchNorm2d*>(&m)) any = any || b->folded_for_inference();
  });
  return any;
}

InferenceFusion fuse_for_inference(nn::Module& model, const Shape& input_nhwc) {
  KCHECK(!is_quantized(model), ValueError, "inference fusion: the model is quantized (its norms are folded already)");
  KCHECK(!is_fused_for_inference(model), ValueError, "inference fusion: the model is fused already");
  InferenceFusion report;
  for (const TracedLayer& l : trace_layers(model, input_nhwc, "inference fusion")) {
    // A norm that adds a residual folds when the block hands that residual to
    // the conv (models::conv_bn_forward): the add joins the conv's epilogue.
    // Otherwise it stays, its one pass (normalize, add, activate) costing what
    // the add and the activation alone would.
    if (l.norm == nullptr || (l.norm_has_residual && !l.conv->takes_residual)) continue;
    fold_norm_into_conv(*l.conv, *l.norm);
    l.conv->fused_act = l.norm_act;
    l.norm->fold_for_inference();
    ++report.folded_norms;
    report.fused_activations += l.norm_act != Activation::None ? 1 : 0;
  }
  model.eval();
  // Nothing trains or loads into a fused model: its weights' derived forms
  // (packed convolution weights) can be built once and kept.
  for (const Tensor& p : model.parameters()) p.storage()->freeze();
  return report;
}

}  // namespace kestrel::models
