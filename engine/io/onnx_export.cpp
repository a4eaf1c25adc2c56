#include "engine/io/onnx_export.h"

#include "engine/error.h"

#if defined(KESTREL_HAVE_ONNX)
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <tuple>

#include "engine/autograd.h"
#include "engine/io/atomic_file.h"
#include "engine/random.h"
#include "engine/trace.h"
#endif

namespace kestrel::io {

#if !defined(KESTREL_HAVE_ONNX)

bool onnx_export_available() { return false; }

OnnxExportSummary export_onnx(nn::Module&, const Shape&, const std::string&, const OnnxExportOptions&) {
  throw ValueError("ONNX export is not in this build (tools/setup.sh installs libonnx-dev; then re-run cmake)");
}

#else

bool onnx_export_available() { return true; }

namespace {

// A tensor's identity in the trace: views of one storage differ by offset,
// shape or strides, and nothing is written in place during an eval forward.
struct ViewKey {
  const Storage* storage;
  int64_t offset;
  Shape shape, strides;
  bool operator<(const ViewKey& o) const {
    return std::tie(storage, offset, shape, strides) < std::tie(o.storage, o.offset, o.shape, o.strides);
  }
};
ViewKey key_of(const Tensor& t) { return {t.storage().get(), t.offset(), t.shape(), t.strides()}; }

// Every 4-D tensor is NHWC (or OHWI) in Kestrel and NCHW (OIHW) in ONNX.
const std::vector<int64_t> kToNchw = {0, 3, 1, 2};
const std::vector<int64_t> kToNhwc = {0, 2, 3, 1};
int64_t onnx_axis(int64_t d, int64_t rank) { return rank == 4 ? kToNhwc[d] : d; }
int64_t kestrel_axis(int64_t onnx_d, int64_t rank) { return rank == 4 ? kToNchw[onnx_d] : onnx_d; }
Shape onnx_shape(const Shape& s) { return s.size() == 4 ? Shape{s[0], s[3], s[1], s[2]} : s; }

std::vector<int64_t> parse_ints(const std::string& text) {
  std::vector<int64_t> v;
  size_t p = 0;
  while (p < text.size()) {
    size_t q = p;
    v.push_back(std::stoll(text.substr(p), &q));
    p += q;
    if (p < text.size()) ++p;  // the separator: ',' or 'x'
  }
  return v;
}

void set_ints(onnx::NodeProto& n, const char* name, const std::vector<int64_t>& v) {
  onnx::AttributeProto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}
void set_int(onnx::NodeProto& n, const char* name, int64_t v) {
  onnx::AttributeProto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
void set_float(onnx::NodeProto& n, const char* name, double v) {
  onnx::AttributeProto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(static_cast<float>(v));
}

class GraphWriter {
 public:
  GraphWriter(onnx::GraphProto& graph, std::map<ViewKey, std::string> param_names)
      : graph_(graph), param_names_(std::move(param_names)) {}

  std::string scope;  // the traced module path, for node names

  using Attrs = std::function<void(onnx::NodeProto&)>;
  std::string node(const std::string& type, const std::vector<std::string>& inputs, const Attrs& attrs = {}) {
    onnx::NodeProto* n = graph_.add_node();
    const std::string name = (scope.empty() ? "" : scope + "/") + type + "_" + std::to_string(graph_.node_size());
    n->set_op_type(type);
    n->set_name(name);
    for (const std::string& in : inputs) n->add_input(in);
    const std::string out = name + ":0";
    n->add_output(out);
    if (attrs) attrs(*n);
    ++op_counts[type];
    return out;
  }

  // An initializer from a Kestrel tensor (4-D ones go to ONNX's layout), named
  // after the parameter it is, else numbered; one initializer per tensor.
  std::string constant(const Tensor& t) {
    const ViewKey key = key_of(t);
    if (auto it = constants_.find(key); it != constants_.end()) return it->second;
    auto p = param_names_.find(key);
    const std::string name =
        p != param_names_.end() ? p->second : (scope.empty() ? "" : scope + ".") + "const_" + std::to_string(++n_const_);
    const Tensor v = t.dim() == 4 ? t.permute(kToNchw).contiguous() : t.contiguous();
    add_float_initializer(name, v.to_vector(), v.shape());
    constants_[key] = name;
    return name;
  }
  // An int8 weight quantized per output channel, with its DequantizeLinear:
  // q = clamp(round(w / scale_c), -127, 127) in f32, as fake_quantize_weight.
  std::string quantized_weight(const Tensor& w, const Tensor& scales) {
    const ViewKey key = key_of(w);
    if (auto it = dequantized_.find(key); it != dequantized_.end()) return it->second;
    auto p = param_names_.find(key);
    const std::string base = p != param_names_.end() ? p->second : "const_" + std::to_string(++n_const_);
    const Tensor v = w.dim() == 4 ? w.permute(kToNchw).contiguous() : w.contiguous();
    const std::vector<float> values = v.to_vector(), s = scales.contiguous().to_vector();
    const int64_t per_channel = static_cast<int64_t>(values.size()) / static_cast<int64_t>(s.size());
    std::string q(values.size(), '\0');
    for (size_t i = 0; i < values.size(); ++i) {
      const float level = std::nearbyint(values[i] / s[i / per_channel]);
      q[i] = static_cast<char>(static_cast<int8_t>(std::clamp(level, -127.0f, 127.0f)));
    }
    add_initializer(base + "_quantized", onnx::TensorProto::INT8, v.shape(), q);
    const int64_t channels = static_cast<int64_t>(s.size());
    add_float_initializer(base + "_scale", s, {channels});
    add_initializer(base + "_zero_point", onnx::TensorProto::INT8, {channels}, std::string(s.size(), '\0'));
    const std::string out = node("DequantizeLinear", {base + "_quantized", base + "_scale", base + "_zero_point"},
                                 [](onnx::NodeProto& n) { set_int(n, "axis", 0); });
    dequantized_[key] = out;
    return out;
  }

  // A bias as int32 at scale input_scale * weight_scale_c, the form int8
  // convolutions and GEMMs take it in, with its DequantizeLinear.
  std::string quantized_bias(const Tensor& b, float input_scale, const Tensor& weight_scales) {
    const std::vector<float> values = b.contiguous().to_vector(), ws = weight_scales.contiguous().to_vector();
    std::vector<float> scale(values.size());
    std::vector<int32_t> q(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      scale[i] = input_scale * ws[i];
      // f32 division, as fake_quantize_bias; a bias of an int32 overflow's size is not a real one.
      q[i] = static_cast<int32_t>(std::clamp(std::nearbyint(values[i] / scale[i]), -2.0e9f, 2.0e9f));
    }
    const std::string name = (scope.empty() ? "" : scope + ".") + "bias_quantized_" + std::to_string(++n_const_);
    const Shape shape{static_cast<int64_t>(values.size())};
    add_initializer(name, onnx::TensorProto::INT32, shape,
                    std::string(reinterpret_cast<const char*>(q.data()), q.size() * sizeof(int32_t)));
    const std::string scale_name = floats(scale, shape);
    return node("DequantizeLinear", {name, scale_name}, [](onnx::NodeProto& n) { set_int(n, "axis", 0); });
  }

  std::string floats(const std::vector<float>& values, const Shape& shape) {
    const std::string name = "const_" + std::to_string(++n_const_);
    add_float_initializer(name, values, shape);
    return name;
  }
  std::string scalar(double v) { return floats({static_cast<float>(v)}, {}); }
  std::string uint8_scalar(int64_t v) {
    const std::string name = "const_" + std::to_string(++n_const_);
    add_initializer(name, onnx::TensorProto::UINT8, {}, std::string(1, static_cast<char>(static_cast<uint8_t>(v))));
    return name;
  }
  std::string ints(const std::vector<int64_t>& values) {
    onnx::TensorProto* t = graph_.add_initializer();
    t->set_name("const_" + std::to_string(++n_const_));
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(static_cast<int64_t>(values.size()));
    for (int64_t v : values) t->add_int64_data(v);
    return t->name();
  }

  std::map<std::string, int64_t> op_counts;
  int64_t weight_bytes = 0;

 private:
  void add_initializer(const std::string& name, onnx::TensorProto::DataType type, const Shape& shape,
                       const std::string& raw) {
    onnx::TensorProto* t = graph_.add_initializer();
    t->set_name(name);
    t->set_data_type(type);
    for (int64_t d : shape) t->add_dims(d);
    t->set_raw_data(raw);  // little-endian, as ONNX stores it
    weight_bytes += static_cast<int64_t>(raw.size());
  }
  void add_float_initializer(const std::string& name, const std::vector<float>& values, const Shape& shape) {
    add_initializer(name, onnx::TensorProto::FLOAT, shape,
                    std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  }

  onnx::GraphProto& graph_;
  std::map<ViewKey, std::string> param_names_;
  std::map<ViewKey, std::string> constants_;
  std::map<ViewKey, std::string> dequantized_;
  int64_t n_const_ = 0;
};

// Turns the trace of one forward pass into ONNX nodes, op by op.
class Translator {
 public:
  Translator(GraphWriter& w, bool dynamic_batch) : w_(w), dynamic_batch_(dynamic_batch) {}

  void add_input(const Tensor& x, const std::string& name) { define(x, name); }

  void translate(const TraceEvent& e) {
    if (e.op == "fake_quantize_weight") {  // stored as int8, dequantized where a layer reads it
      quantized_weights_[key_of(e.output)] = {e.inputs[0], e.inputs[1]};
      return;
    }
    const bool dynamic = std::any_of(e.inputs.begin(), e.inputs.end(),
                                     [&](const Tensor& t) { return t.defined() && values_.count(key_of(t)); });
    if (!dynamic) {
      // Arithmetic on weights alone (a batch norm folded into a convolution):
      // its result is read back as a constant wherever it is used.
      for (const Tensor& t : e.inputs) check_not_an_unexplained_view(t, e);
      return;
    }
    w_.scope = e.scope;
    define(e.output, emit(e));
  }

  std::string value_of(const Tensor& t) const {
    auto it = values_.find(key_of(t));
    KCHECK(it != values_.end(), ValueError, "ONNX export: the model's output was not produced by traced ops");
    return it->second;
  }

 private:
  void define(const Tensor& t, const std::string& name) {
    values_[key_of(t)] = name;
    dynamic_storages_.insert(t.storage().get());
  }

  void check_not_an_unexplained_view(const Tensor& t, const TraceEvent& e) const {
    KCHECK(!t.defined() || values_.count(key_of(t)) || !dynamic_storages_.count(t.storage().get()), ValueError,
           "ONNX export: op '", e.op, "' in '", where(e), "' reads a view of an activation (", shape_str(t.shape()),
           ") made by an untraced op");
  }

  static std::string where(const TraceEvent& e) { return e.scope.empty() ? "(model)" : e.scope; }

  [[noreturn]] static void unsupported(const TraceEvent& e, const std::string& why) {
    throw ValueError("ONNX export: op '" + e.op + "' in '" + where(e) + "' " + why);
  }

  // An operand: the ONNX value it is, or an initializer holding it.
  std::string operand(const Tensor& t, const TraceEvent& e) {
    if (auto it = values_.find(key_of(t)); it != values_.end()) return it->second;
    check_not_an_unexplained_view(t, e);
    if (auto q = quantized_weights_.find(key_of(t)); q != quantized_weights_.end())
      return w_.quantized_weight(q->second.first, q->second.second);
    return w_.constant(t);
  }

  // The bias of a conv or GEMM whose input and weight are both quantized is
  // int32 (what int8 runtimes fuse); otherwise float.
  std::string bias_operand(const Tensor& bias, const Tensor& x, const Tensor& weight, const TraceEvent& e) {
    auto s = activation_scales_.find(key_of(x));
    auto w = quantized_weights_.find(key_of(weight));
    if (s == activation_scales_.end() || w == quantized_weights_.end() || values_.count(key_of(bias)))
      return operand(bias, e);
    return w_.quantized_bias(bias, s->second, w->second.second);
  }

  // An elementwise operand broadcast against a 4-D result: a lower-rank
  // constant is first given NHWC's leading ones so it lands on ONNX's axes.
  std::string broadcast_operand(const Tensor& t, int64_t out_rank, const TraceEvent& e) {
    if (out_rank != 4 || t.dim() == 4 || t.dim() == 0 || t.numel() == 1) return operand(t, e);
    KCHECK(!values_.count(key_of(t)), ValueError, "ONNX export: op '", e.op, "' in '", where(e),
           "' broadcasts a ", t.dim(), "-d activation against a 4-d one");
    Shape s(4 - t.dim(), 1);
    s.insert(s.end(), t.shape().begin(), t.shape().end());
    return w_.constant(t.reshape(s));
  }

  std::string activation(const std::string& act, const std::string& x, const TraceEvent& e) {
    if (act == "none") return x;
    if (act == "relu") return w_.node("Relu", {x});
    if (act == "relu6") return w_.node("Clip", {x, w_.scalar(0.0), w_.scalar(6.0)});
    if (act == "sigmoid") return w_.node("Sigmoid", {x});
    if (act == "tanh") return w_.node("Tanh", {x});
    if (act == "silu") return w_.node("Mul", {x, w_.node("Sigmoid", {x})});
    if (act == "hardswish") return w_.node("HardSwish", {x});
    if (act == "hardsigmoid")
      return w_.node("HardSigmoid", {x}, [](onnx::NodeProto& n) {
        set_float(n, "alpha", 1.0 / 6.0);
        set_float(n, "beta", 0.5);
      });
    if (act == "gelu") {  // the exact (erf) form; ONNX's Gelu op needs opset 20
      const std::string cdf =
          w_.node("Add", {w_.node("Erf", {w_.node("Div", {x, w_.scalar(std::sqrt(2.0))})}), w_.scalar(1.0)});
      return w_.node("Mul", {w_.node("Mul", {x, cdf}), w_.scalar(0.5)});
    }
    unsupported(e, "uses activation '" + act + "', which has no ONNX form here");
  }

  static std::string attr(const TraceEvent& e, const char* name) {
    auto it = e.attrs.find(name);
    if (it == e.attrs.end()) unsupported(e, std::string("was traced without its '") + name + "' attribute");
    return it->second;
  }
  static double attr_double(const TraceEvent& e, const char* name) { return std::stod(attr(e, name)); }
  static std::vector<int64_t> pair_attr(const TraceEvent& e, const char* name) {
    std::vector<int64_t> v = parse_ints(attr(e, name));
    return v.size() == 1 ? std::vector<int64_t>{v[0], v[0]} : v;
  }

  // A Reshape target whose batch dim stays free with a dynamic batch (0: "copy the input's").
  std::vector<int64_t> batch_free(Shape s, int64_t batch) const {
    if (dynamic_batch_ && !s.empty() && s[0] == batch) s[0] = 0;
    return s;
  }

  std::string emit(const TraceEvent& e) {
    const std::string& op = e.op;
    const Tensor& x = e.inputs[0];
    static const std::map<std::string, std::string> kBinary = {
        {"add", "Add"}, {"sub", "Sub"}, {"mul", "Mul"}, {"div", "Div"}};
    if (auto b = kBinary.find(op); b != kBinary.end()) {  // operands shaped for broadcasting, not as they are
      const int64_t out_rank = e.output.dim();
      return w_.node(b->second, {broadcast_operand(x, out_rank, e), broadcast_operand(e.inputs[1], out_rank, e)});
    }
    if (op == "coord_gate")  // x * gate_h * gate_w: the two multiplies it fuses
      return w_.node("Mul", {w_.node("Mul", {operand(x, e), operand(e.inputs[1], e)}), operand(e.inputs[2], e)});
    const std::string xin = operand(x, e);
    const int64_t rank = x.dim();
    if (op == "fake_quantize") {
      if (attr(e, "qmin") != "0" || attr(e, "qmax") != "255") unsupported(e, "quantizes to a grid other than uint8");
      const double scale = attr_double(e, "a");
      const std::vector<std::string> grid = {w_.scalar(scale), w_.uint8_scalar(std::stoll(attr(e, "b")))};
      const std::string q = w_.node("QuantizeLinear", {xin, grid[0], grid[1]});
      activation_scales_[key_of(e.output)] = static_cast<float>(scale);
      return w_.node("DequantizeLinear", {q, grid[0], grid[1]});
    }
    if (op == "conv2d" || op == "conv2d_act") {
      std::vector<std::string> ins = {xin, operand(e.inputs[1], e)};
      if (e.inputs[2].defined()) ins.push_back(bias_operand(e.inputs[2], x, e.inputs[1], e));
      const auto k = pair_attr(e, "kernel"), s = pair_attr(e, "stride"), p = pair_attr(e, "padding"),
                 d = pair_attr(e, "dilation");
      const int64_t groups = std::stoll(attr(e, "groups"));
      const std::string y = w_.node("Conv", ins, [&](onnx::NodeProto& n) {
        set_ints(n, "kernel_shape", k);
        set_ints(n, "strides", s);
        set_ints(n, "pads", {p[0], p[1], p[0], p[1]});
        set_ints(n, "dilations", d);
        set_int(n, "group", groups);
      });
      if (op != "conv2d_act") return y;
      const bool residual = e.inputs.size() > 3 && e.inputs[3].defined();  // added before the activation
      return activation(attr(e, "activation"), residual ? w_.node("Add", {y, operand(e.inputs[3], e)}) : y, e);
    }
    if (op == "batch_norm" || op == "batch_norm_act") {
      if (attr(e, "training") != "0") unsupported(e, "ran in training mode");
      if (rank != 4 && rank != 2) unsupported(e, "normalizes a " + std::to_string(rank) + "-d input");
      const int64_t c = x.size(rank - 1);
      auto param = [&](const Tensor& t, float fill) {
        return t.defined() ? operand(t, e) : w_.floats(std::vector<float>(c, fill), {c});
      };
      std::string y = w_.node(
          "BatchNormalization",
          {xin, param(e.inputs[1], 1.0f), param(e.inputs[2], 0.0f), operand(e.inputs[4], e), operand(e.inputs[5], e)},
          [&](onnx::NodeProto& n) { set_float(n, "epsilon", attr_double(e, "eps")); });
      if (e.inputs[3].defined()) y = w_.node("Add", {y, operand(e.inputs[3], e)});
      return activation(attr(e, "act"), y, e);
    }
    if (op == "linear") {
      if (rank == 4) unsupported(e, "applies a linear layer to a 4-d activation");
      const Tensor& weight = e.inputs[1];
      if (rank == 2) {
        std::vector<std::string> ins = {xin, operand(weight, e)};
        if (e.inputs[2].defined()) ins.push_back(bias_operand(e.inputs[2], x, weight, e));
        return w_.node("Gemm", ins, [](onnx::NodeProto& n) { set_int(n, "transB", 1); });
      }
      const std::string y = w_.node("MatMul", {xin, w_.constant(weight.transpose(0, 1).contiguous())});
      return e.inputs[2].defined() ? w_.node("Add", {y, operand(e.inputs[2], e)}) : y;
    }
    if (op == "matmul") {
      if (rank == 4 || e.inputs[1].dim() == 4) unsupported(e, "multiplies 4-d tensors");
      return w_.node("MatMul", {xin, operand(e.inputs[1], e)});
    }
    if (const std::string y = unary(e, xin); !y.empty()) return y;
    if (op == "max_pool2d" || op == "avg_pool2d") {
      const int64_t k = std::stoll(attr(e, "kernel")), s = std::stoll(attr(e, "stride")),
                    p = std::stoll(attr(e, "padding"));
      const bool avg = op == "avg_pool2d";
      const bool include_pad = avg && attr(e, "count_include_pad") == "true";
      return w_.node(avg ? "AveragePool" : "MaxPool", {xin}, [&](onnx::NodeProto& n) {
        set_ints(n, "kernel_shape", {k, k});
        set_ints(n, "strides", {s, s});
        set_ints(n, "pads", {p, p, p, p});
        if (avg) set_int(n, "count_include_pad", include_pad ? 1 : 0);
      });
    }
    if (op == "global_avg_pool" || op == "adaptive_avg_pool2d") {
      const int64_t h = x.size(1), w = x.size(2), oh = e.output.size(1), ow = e.output.size(2);
      if (oh == 1 && ow == 1) return w_.node("GlobalAveragePool", {xin});
      if (h % oh != 0 || w % ow != 0)
        unsupported(e, "pools " + std::to_string(h) + "x" + std::to_string(w) + " to " + std::to_string(oh) + "x" +
                           std::to_string(ow) + ", which is not a whole number of equal windows");
      return w_.node("AveragePool", {xin}, [&](onnx::NodeProto& n) {
        set_ints(n, "kernel_shape", {h / oh, w / ow});
        set_ints(n, "strides", {h / oh, w / ow});
      });
    }
    if (op == "concat") {
      std::vector<std::string> ins;
      for (const Tensor& t : e.inputs) ins.push_back(operand(t, e));
      const int64_t axis = onnx_axis(std::stoll(attr(e, "dim")), rank);
      return w_.node("Concat", ins, [&](onnx::NodeProto& n) { set_int(n, "axis", axis); });
    }
    if (op == "pad2d") {
      const auto p = parse_ints(attr(e, "pads"));  // top, bottom, left, right
      return w_.node("Pad", {xin, w_.ints({0, 0, p[0], p[2], 0, 0, p[1], p[3]}), w_.scalar(attr_double(e, "value"))});
    }
    if (op == "softmax" || op == "log_softmax") {
      const int64_t axis = onnx_axis(std::stoll(attr(e, "dim")), rank);
      return w_.node(op == "softmax" ? "Softmax" : "LogSoftmax", {xin},
                     [&](onnx::NodeProto& n) { set_int(n, "axis", axis); });
    }
    if (op == "clone" || op == "cast") {
      if (e.output.dtype() != DType::F32) unsupported(e, "casts to " + std::string(dtype_name(e.output.dtype())));
      return xin;
    }
    if (op == "reshape") return reshape(e, xin);
    if (op == "permute") {
      const std::vector<int64_t> dims = parse_ints(attr(e, "dims"));
      std::vector<int64_t> perm(rank);
      for (int64_t i = 0; i < rank; ++i) perm[i] = onnx_axis(dims[kestrel_axis(i, rank)], rank);
      return w_.node("Transpose", {xin}, [&](onnx::NodeProto& n) { set_ints(n, "perm", perm); });
    }
    if (op == "narrow") {
      const int64_t d = std::stoll(attr(e, "dim")), start = std::stoll(attr(e, "start")),
                    length = std::stoll(attr(e, "length"));
      return w_.node("Slice", {xin, w_.ints({start}), w_.ints({start + length}), w_.ints({onnx_axis(d, rank)})});
    }
    if (op == "expand") {
      if (e.output.dim() != rank) unsupported(e, "adds dims");
      Shape target = onnx_shape(e.output.shape()), have = onnx_shape(x.shape());
      for (int64_t i = 0; i < rank; ++i)
        if (target[i] == have[i]) target[i] = 1;  // broadcasting keeps it, and a free batch stays free
      return w_.node("Expand", {xin, w_.ints(target)});
    }
    unsupported(e, "has no ONNX form yet");
  }

  // Elementwise ops of one operand; "" when `e` is not one.
  std::string unary(const TraceEvent& e, const std::string& x) {
    static const std::map<std::string, std::string> kSimple = {
        {"neg", "Neg"}, {"exp", "Exp"}, {"log", "Log"}, {"sqrt", "Sqrt"}, {"abs", "Abs"}};
    if (auto s = kSimple.find(e.op); s != kSimple.end()) return w_.node(s->second, {x});
    static const std::set<std::string> kActivations = {"relu",      "relu6",       "sigmoid", "tanh",
                                                       "silu",      "hardswish",   "hardsigmoid", "gelu"};
    if (kActivations.count(e.op)) return activation(e.op, x, e);
    if (e.op == "square") return w_.node("Mul", {x, x});
    if (e.op == "add_scalar") return w_.node("Add", {x, w_.scalar(attr_double(e, "a"))});
    if (e.op == "mul_scalar") return w_.node("Mul", {x, w_.scalar(attr_double(e, "a"))});
    if (e.op == "pow") return w_.node("Pow", {x, w_.scalar(attr_double(e, "a"))});
    if (e.op == "clamp") return w_.node("Clip", {x, w_.scalar(attr_double(e, "a")), w_.scalar(attr_double(e, "b"))});
    return "";
  }

  // Reshape acts on Kestrel's element order, NHWC for a 4-d tensor: unless H
  // and W are both 1 (then NHWC and NCHW order agree), go through NHWC.
  std::string reshape(const TraceEvent& e, const std::string& x) {
    const Shape in = e.inputs[0].shape(), out = e.output.shape();
    const int64_t batch = in.empty() ? 0 : in[0];
    auto spatial_ones = [](const Shape& s) { return s.size() == 4 && s[1] == 1 && s[2] == 1; };
    std::string v = x;
    if (in.size() == 4 && !spatial_ones(in))
      v = w_.node("Transpose", {v}, [](onnx::NodeProto& n) { set_ints(n, "perm", kToNhwc); });
    if (out.size() != 4 || spatial_ones(out)) return w_.node("Reshape", {v, w_.ints(batch_free(onnx_shape(out), batch))});
    v = w_.node("Reshape", {v, w_.ints(batch_free(out, batch))});
    return w_.node("Transpose", {v}, [](onnx::NodeProto& n) { set_ints(n, "perm", kToNchw); });
  }

  GraphWriter& w_;
  bool dynamic_batch_;
  std::map<ViewKey, std::string> values_;
  std::set<const Storage*> dynamic_storages_;
  std::map<ViewKey, std::pair<Tensor, Tensor>> quantized_weights_;  // fake-quantized weight -> (weight, scales)
  std::map<ViewKey, float> activation_scales_;                       // dequantized activation -> its scale
};

void set_tensor_type(onnx::ValueInfoProto& v, const std::string& name, const Shape& shape, bool dynamic_batch) {
  v.set_name(name);
  onnx::TypeProto_Tensor* t = v.mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  for (size_t i = 0; i < shape.size(); ++i) {
    onnx::TensorShapeProto_Dimension* d = t->mutable_shape()->add_dim();
    if (i == 0 && dynamic_batch)
      d->set_dim_param("batch");
    else
      d->set_dim_value(shape[i]);
  }
}

}  // namespace

OnnxExportSummary export_onnx(nn::Module& model, const Shape& input_nhwc, const std::string& path,
                              const OnnxExportOptions& options) {
  KCHECK(input_nhwc.size() == 4, ShapeError, "ONNX export: the input must be [N, H, W, C], got ",
         shape_str(input_nhwc));
  KCHECK(options.batch >= 1, ValueError, "ONNX export: batch must be >= 1, got ", options.batch);
  // A traced batch of 2 tells the batch dim apart from the many dims of size 1.
  const int64_t batch = options.dynamic_batch ? 2 : options.batch;
  Generator gen(0);
  const Tensor x = Tensor::randn({batch, input_nhwc[1], input_nhwc[2], input_nhwc[3]}, gen);

  const bool was_training = model.is_training();
  model.eval();
  Tensor y;
  std::vector<TraceEvent> events;
  try {
    // The recorder ends before translation, whose own tensor ops are not the model's.
    TraceRecorder trace(/*keep_tensors=*/true);
    NoGradGuard no_grad;
    y = model(x);
    events = trace.events();
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);

  std::map<ViewKey, std::string> param_names;
  for (const auto& [name, t] : model.named_parameters()) param_names[key_of(t)] = name;
  for (const auto& [name, t] : model.named_buffers()) param_names[key_of(t)] = name;

  onnx::ModelProto m;
  m.set_ir_version(8);  // the IR of opset 17
  m.set_producer_name("kestrel");
  m.set_producer_version("0.1");
  m.mutable_opset_import()->Add()->set_version(kOnnxOpset);
  for (const auto& [k, v] : options.metadata) {
    onnx::StringStringEntryProto* p = m.add_metadata_props();
    p->set_key(k);
    p->set_value(v);
  }
  onnx::GraphProto& g = *m.mutable_graph();
  g.set_name(model.type_name());
  GraphWriter writer(g, std::move(param_names));
  Translator tr(writer, options.dynamic_batch);
  tr.add_input(x, options.input_name);
  for (const TraceEvent& e : events) tr.translate(e);
  writer.scope.clear();
  writer.node("Identity", {tr.value_of(y)});
  g.mutable_node(g.node_size() - 1)->set_output(0, options.output_name);
  set_tensor_type(*g.add_input(), options.input_name, onnx_shape(x.shape()), options.dynamic_batch);
  set_tensor_type(*g.add_output(), options.output_name, onnx_shape(y.shape()), options.dynamic_batch);

  try {
    onnx::checker::check_model(m);
  } catch (const std::exception& e) {
    throw ValueError(std::string("ONNX export: the graph fails ONNX's checker (a Kestrel bug): ") + e.what());
  }
  std::string bytes;
  KCHECK(m.SerializeToString(&bytes), ValueError, "ONNX export: the model does not serialize (over 2 GiB?)");
  write_file_atomically(path, {{bytes.data(), bytes.size()}}, "onnx");

  OnnxExportSummary s;
  s.nodes = g.node_size();
  s.initializers = g.initializer_size();
  s.weight_bytes = writer.weight_bytes;
  s.file_bytes = static_cast<int64_t>(bytes.size());
  s.op_counts = writer.op_counts;
  return s;
}

#endif

}  // namespace kestrel::io
