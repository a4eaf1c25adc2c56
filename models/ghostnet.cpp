#include "models/ghostnet.h"

#include <cmath>

#include "engine/ops/conv.h"
#include "engine/ops/dropout.h"
#include "engine/ops/ghost.h"
#include "engine/ops/ghost_norms.h"
#include "engine/ops/pool.h"
#include "engine/ops/shape_ops.h"
#include "engine/trace.h"

namespace kestrel::models {

GhostModule::GhostModule(int64_t in, int64_t out, Activation act, int64_t ratio, int64_t dw_kernel, BNConfig bn)
    : out_(out) {
  const int64_t init = (out + ratio - 1) / ratio;
  const int64_t cheap = init * (ratio - 1);
  primary_ = register_module("primary_conv", std::make_shared<ConvBNAct>(in, init, 1, ConvSpec{}, act, bn));
  cheap_ = register_module("cheap_operation",
                           std::make_shared<ConvBNAct>(init, cheap, dw_kernel, ConvSpec{1, init}, act, bn));
}

// The fused op folds both BNs into their convs, exact only with running
// statistics: eval mode on CUDA. Training takes forward_ghost_norms (both
// devices), the CPU's inference ghost_in_place.
// Ratio 2 only: then cheap channel j reads primary channel j, which is what
// kernels/ghost.h computes.
bool GhostModule::can_fuse(const Tensor& x) const {
  const nn::Conv2d& cheap = *cheap_->conv;
  const int64_t init = primary_->conv->out_channels;
  const DType t = x.dtype();
  return x.device().is_cuda() && !primary_->bn->folded && !cheap_->bn->folded && !primary_->bn->is_training() &&
         !cheap_->bn->is_training() &&
         (t == DType::F32 || t == DType::F16 || t == DType::BF16) && primary_->conv->weight.dtype() == t &&
         cheap.weight.dtype() == t && primary_->bn->weight.dtype() == t && cheap_->bn->weight.dtype() == t &&
         cheap.out_channels == init && out_ > init && cheap.kernel_size <= 7 && primary_->act == cheap_->act;
}

// A model fused for inference (models/fuse.h) on the CPU: both norms are
// already in the convs, whose outputs ghost_in_place (engine/ops/conv.h) then
// writes into one tensor. Undefined where that does not apply.
Tensor GhostModule::forward_in_place(const Tensor& x) const {
  const nn::Conv2d &p = *primary_->conv, &c = *cheap_->conv;
  const int64_t used = out_ - p.out_channels;
  if (!x.device().is_cpu() || is_training() || !folded_without_quantization(*primary_) ||
      !folded_without_quantization(*cheap_) || c.out_channels != p.out_channels || used < 2 ||
      p.fused_act != c.fused_act)
    return Tensor();
  const Tensor wc = c.weight.narrow(0, 0, used), bc = c.bias.defined() ? c.bias.narrow(0, 0, used) : Tensor();
  if (!ghost_in_place_applies(x, p.weight, p.bias, wc, bc)) return Tensor();
  return ghost_in_place(x, p.weight, p.bias, wc, bc, p.fused_act);
}

// Training: the primary conv, then both norms and the cheap conv as one op
// that writes the two halves straight into the output (ghost_norms).
// Undefined where that does not apply: ratio 2, a bias-free "same" depthwise
// cheap conv, no int8 fake quantization, norms not folded; on CUDA the
// depthwise kernels' dtypes and sizes.
Tensor GhostModule::forward_ghost_norms(const Tensor& x) {
  nn::Conv2d &p = *primary_->conv, &c = *cheap_->conv;
  nn::BatchNorm2d &pn = *primary_->bn, &cn = *cheap_->bn;
  const Conv2dParams& cp = c.params;
  const int64_t k = c.kernel_size;
  const DType t = x.dtype();
  const bool kernels = x.device().is_cpu() ? (t == DType::F32 || t == DType::F64)
                                           : (t == DType::F32 || t == DType::F16 || t == DType::BF16);
  if (!kernels || layers_are_traced() || !pn.is_training() || !cn.is_training() || pn.folded || cn.folded ||
      p.quant.enabled || c.quant.enabled || c.bias.defined() || primary_->act != cheap_->act ||
      c.out_channels != p.out_channels || cp.groups != c.in_channels || cp.stride_h != 1 || cp.stride_w != 1 ||
      cp.dilation_h != 1 || cp.dilation_w != 1 || cp.pad_h != k / 2 || cp.pad_w != k / 2)
    return Tensor();
  Tensor z;
  {
    TraceScope scope("primary_conv");
    z = p(x);
  }
  GhostNorm primary{pn.weight, pn.bias, pn.running_mean, pn.running_var, {}};
  GhostNorm cheap{cn.weight, cn.bias, cn.running_mean, cn.running_var, {}};
  Tensor y;
  if (ghost_norms_apply(z, primary, c.weight, cheap)) {
    primary.params = pn.pass_params();  // counts the batch: only on the path that runs the norms here
    cheap.params = cn.pass_params();
    y = ghost_norms(z, primary, c.weight, cheap, primary_->act);
  } else {  // e.g. a cheap kernel over 7 on CUDA: the composition, from z
    Tensor a;
    {
      TraceScope scope("primary_conv");
      TraceScope norm("1");
      a = pn.forward_fused(z, primary_->act);
    }
    y = concat({a, (*cheap_)(a)}, 3);
  }
  return y.size(3) == out_ ? y : y.narrow(3, 0, out_);
}

Tensor GhostModule::forward(const Tensor& x) {
  if (Tensor y = forward_ghost_norms(x); y.defined()) return y;
  if (can_fuse(x)) {
    const int64_t used = out_ - primary_->conv->out_channels;  // cheap channels kept after the cut to out_
    const FoldedConv p = fold_batch_norm(*primary_->conv, *primary_->bn);
    const FoldedConv c = fold_batch_norm(*cheap_->conv, *cheap_->bn);
    return ghost_module(x, p.weight, p.bias, c.weight.narrow(0, 0, used), c.bias.narrow(0, 0, used), primary_->act);
  }
  if (Tensor y = forward_in_place(x); y.defined()) return y;
  Tensor a = (*primary_)(x);
  Tensor b = (*cheap_)(a);
  Tensor y = concat({a, b}, 3);
  return y.size(3) == out_ ? y : y.narrow(3, 0, out_);
}

namespace {

// Paper Table 1, grouped into timm's stages: kernel, expansion size, output, SE, stride.
struct GhostBlock {
  int64_t kernel, expanded, out;
  bool se;
  int64_t stride;
};
const std::vector<std::vector<GhostBlock>>& ghost_stages() {
  static const std::vector<std::vector<GhostBlock>> stages = {
      {{3, 16, 16, false, 1}},
      {{3, 48, 24, false, 2}},
      {{3, 72, 24, false, 1}},
      {{5, 72, 40, true, 2}},
      {{5, 120, 40, true, 1}},
      {{3, 240, 80, false, 2}},
      {{3, 200, 80, false, 1},
       {3, 184, 80, false, 1},
       {3, 184, 80, false, 1},
       {3, 480, 112, true, 1},
       {3, 672, 112, true, 1}},
      {{5, 672, 160, true, 2}},
      {{5, 960, 160, false, 1}, {5, 960, 160, true, 1}, {5, 960, 160, false, 1}, {5, 960, 160, true, 1}},
  };
  return stages;
}
constexpr int64_t kStem = 16, kHead = 1280;

// ghost (ReLU) -> [depthwise kxk/2 + BN when strided] -> [SE] -> ghost (linear),
// plus the input, through a depthwise + pointwise shortcut when the shape changes.
class GhostBottleneck : public Module {
 public:
  GhostBottleneck(int64_t in, int64_t mid, int64_t out, int64_t kernel, int64_t stride, bool se) {
    ghost1_ = register_module("ghost1", std::make_shared<GhostModule>(in, mid, Activation::ReLU));
    if (stride > 1) {
      nn::Conv2dOptions dw;
      dw.stride = stride;
      dw.padding = (kernel - 1) / 2;
      dw.groups = mid;
      dw.bias = false;
      conv_dw_ = register_module("conv_dw", std::make_shared<nn::Conv2d>(mid, mid, kernel, dw));
      bn_dw_ = register_module("bn_dw", std::make_shared<nn::BatchNorm2d>(mid));
    }
    if (se)
      se_ = register_module("se", std::make_shared<SqueezeExcite>(mid, make_divisible(mid * 0.25, 4), Activation::ReLU,
                                                                  Activation::HardSigmoid,
                                                                  SENames{"conv_reduce", "conv_expand"}));
    ghost2_ = register_module("ghost2", std::make_shared<GhostModule>(mid, out, Activation::None));
    shortcut_ = register_module("shortcut", std::make_shared<nn::Sequential>());
    if (in != out || stride != 1) {
      nn::Conv2dOptions dw;
      dw.stride = stride;
      dw.padding = (kernel - 1) / 2;
      dw.groups = in;
      dw.bias = false;
      nn::Conv2dOptions pw;
      pw.bias = false;
      shortcut_->push_back(std::make_shared<nn::Conv2d>(in, in, kernel, dw));
      shortcut_->push_back(std::make_shared<nn::BatchNorm2d>(in));
      shortcut_->push_back(std::make_shared<nn::Conv2d>(in, out, 1, pw));
      shortcut_->push_back(std::make_shared<nn::BatchNorm2d>(out));
    }
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*ghost1_)(x);
    if (conv_dw_) h = (*bn_dw_)((*conv_dw_)(h));
    if (se_) h = (*se_)(h);
    h = (*ghost2_)(h);
    return add(h, (*shortcut_)(x));
  }
  std::string type_name() const override { return "GhostBottleneck"; }

 private:
  std::shared_ptr<GhostModule> ghost1_, ghost2_;
  std::shared_ptr<nn::Conv2d> conv_dw_;
  std::shared_ptr<nn::BatchNorm2d> bn_dw_;
  std::shared_ptr<SqueezeExcite> se_;
  std::shared_ptr<nn::Sequential> shortcut_;
};

class GhostNet : public Module {
 public:
  explicit GhostNet(const ModelOptions& o) {
    const double w = o.width_mult;
    auto ch = [&](int64_t c) { return make_divisible(static_cast<double>(c) * w, 4); };
    const int64_t stem = ch(kStem);
    nn::Conv2dOptions so;
    so.stride = o.cifar_stem ? 1 : 2;
    so.padding = 1;
    so.bias = false;
    conv_stem_ = register_module("conv_stem", std::make_shared<nn::Conv2d>(o.in_channels, stem, 3, so));
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(stem));
    blocks_ = register_module("blocks", std::make_shared<nn::Sequential>());
    int64_t in = stem, last_expanded = 0;
    bool first_downsample = true;
    for (const auto& stage : ghost_stages()) {
      auto seq = std::make_shared<nn::Sequential>();
      for (const GhostBlock& b : stage) {
        int64_t stride = b.stride;
        if (stride == 2 && first_downsample) {
          first_downsample = false;
          if (o.cifar_stem) stride = 1;
        }
        seq->push_back(std::make_shared<GhostBottleneck>(in, ch(b.expanded), ch(b.out), b.kernel, stride, b.se));
        in = ch(b.out);
        last_expanded = b.expanded;
      }
      blocks_->push_back(seq);
    }
    auto last = std::make_shared<nn::Sequential>();
    last->push_back(std::make_shared<ConvBNAct>(in, ch(last_expanded), 1, ConvSpec{}, Activation::ReLU, BNConfig{},
                                                "conv", "bn1"));
    blocks_->push_back(last);
    nn::Conv2dOptions ho;
    ho.bias = true;
    conv_head_ = register_module("conv_head", std::make_shared<nn::Conv2d>(ch(last_expanded), kHead, 1, ho));
    dropout_ = o.dropout_or(0.2);
    classifier_ = register_module("classifier", std::make_shared<nn::Linear>(kHead, o.classes_or(1000)));
    init_weights(*this, LinearInit::Default, true);
  }
  Tensor forward(const Tensor& x) override {
    Tensor c = (*conv_stem_)(x);
    Tensor h;
    {
      TraceScope s("bn1");
      h = bn1_->forward_fused(c, Activation::ReLU);
    }
    h = (*blocks_)(h);
    h = relu((*conv_head_)(global_avg_pool(h)));
    h = h.reshape({h.size(0), h.size(3)});
    if (dropout_ > 0.0) h = dropout(h, dropout_, is_training(), nn::init_generator());
    return (*classifier_)(h);
  }
  std::string type_name() const override { return "GhostNet"; }

 private:
  std::shared_ptr<nn::Conv2d> conv_stem_, conv_head_;
  std::shared_ptr<nn::BatchNorm2d> bn1_;
  std::shared_ptr<nn::Sequential> blocks_;
  std::shared_ptr<nn::Linear> classifier_;
  double dropout_ = 0.2;
};

}  // namespace

ModulePtr build_ghostnet(const ModelOptions& o) {
  KCHECK(o.depth_mult == 1.0, ValueError,
         "ghostnet_100: depth_mult is not supported (the paper's table lists every block; got ", o.depth_mult, ")");
  return std::make_shared<GhostNet>(o);
}

}  // namespace kestrel::models
