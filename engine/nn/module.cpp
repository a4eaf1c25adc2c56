#include "engine/nn/module.h"

#include <set>
#include <sstream>

#include "engine/autograd.h"
#include "engine/trace.h"

namespace kestrel::nn {

Tensor Module::operator()(const Tensor& x) {
  TraceScope scope(scope_name_);
  return forward(x);
}

Tensor& Module::register_parameter(const std::string& name, Tensor t, bool conv_weight) {
  t.set_requires_grad(true);
  params_.push_back({name, t, conv_weight});
  return params_.back().tensor;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.push_back({name, t, false});
  return buffers_.back().tensor;
}

Tensor& Module::param(const std::string& name) {
  for (Slot& s : params_)
    if (s.name == name) return s.tensor;
  throw ValueError(type_name() + ": no parameter named '" + name + "'");
}

Tensor& Module::buffer(const std::string& name) {
  for (Slot& s : buffers_)
    if (s.name == name) return s.tensor;
  throw ValueError(type_name() + ": no buffer named '" + name + "'");
}

void Module::clear_tensors() {
  params_.clear();
  buffers_.clear();
}

void Module::collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Slot*>>& out) const {
  auto& slots = const_cast<std::vector<Slot>&>(params ? params_ : buffers_);
  for (Slot& s : slots) out.emplace_back(prefix + s.name, &s);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

NamedTensors Module::named_parameters(const std::string& prefix) const {
  std::vector<std::pair<std::string, Slot*>> slots;
  collect(prefix.empty() ? "" : prefix + ".", true, slots);
  NamedTensors out;
  for (auto& [n, s] : slots) out.emplace_back(n, s->tensor);
  return out;
}

NamedTensors Module::named_buffers(const std::string& prefix) const {
  std::vector<std::pair<std::string, Slot*>> slots;
  collect(prefix.empty() ? "" : prefix + ".", false, slots);
  NamedTensors out;
  for (auto& [n, s] : slots) out.emplace_back(n, s->tensor);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& t : parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::zero_grad() {
  for (Tensor& t : parameters()) t.zero_grad();
}

namespace {
Tensor to_file_layout(const Tensor& t, bool conv_weight) {
  if (!conv_weight) return t.detach();
  return t.detach().permute({0, 3, 1, 2}).contiguous();  // OHWI -> OIHW
}
}  // namespace

NamedTensors Module::state_dict() const {
  NamedTensors out;
  for (bool params : {true, false}) {
    std::vector<std::pair<std::string, Slot*>> slots;
    collect("", params, slots);
    for (auto& [n, s] : slots) out.emplace_back(n, to_file_layout(s->tensor, s->conv_weight));
  }
  return out;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::vector<std::pair<std::string, Slot*>> slots;
  collect("", true, slots);
  collect("", false, slots);
  std::map<std::string, const Tensor*> given;
  for (const auto& [n, t] : state) given[n] = &t;
  std::vector<std::string> problems;
  std::set<std::string> used;
  for (auto& [name, slot] : slots) {
    auto it = given.find(name);
    if (it == given.end()) {
      if (strict) problems.push_back("missing " + name);
      continue;
    }
    used.insert(name);
    const Tensor& src = *it->second;
    const Tensor expected = to_file_layout(slot->tensor, slot->conv_weight);
    if (src.shape() != expected.shape()) {
      problems.push_back(name + " has shape " + shape_str(src.shape()) + " in the checkpoint but " +
                         shape_str(expected.shape()) + " in the model");
      continue;
    }
    NoGradGuard guard;
    Tensor value = slot->conv_weight ? src.permute({0, 2, 3, 1}) : src;  // OIHW -> OHWI
    slot->tensor.copy_(value.to(slot->tensor.device()));
  }
  if (strict)
    for (const auto& [n, t] : state)
      if (!used.count(n)) problems.push_back("unexpected " + n);
  if (!problems.empty()) {
    std::ostringstream msg;
    msg << "checkpoint does not match the model (" << problems.size() << (problems.size() == 1 ? " problem" : " problems")
        << "): ";
    for (size_t i = 0; i < problems.size() && i < 5; ++i) msg << (i ? "; " : "") << problems[i];
    if (problems.size() > 5) msg << "; ...";
    throw ValueError(msg.str());
  }
}

template <typename Wanted, typename Convert>
void Module::replace_storage(const Wanted& wanted, const Convert& convert) {
  for (auto* slots : {&params_, &buffers_})
    for (Slot& s : *slots) {
      if (!wanted(s.tensor)) continue;
      const Tensor converted = convert(s.tensor.detach());
      TensorImpl& impl = s.tensor.impl();
      impl.storage = converted.storage();
      impl.strides = converted.strides();
      impl.offset = converted.offset();
      impl.dtype = converted.dtype();
      impl.grad.reset();
    }
  for (auto& [n, c] : children_) c->replace_storage(wanted, convert);
}

void Module::to(Device device) {
  replace_storage([&](const Tensor& t) { return t.device() != device; },
                  [&](const Tensor& t) { return t.to(device); });
}

void Module::to(DType dtype) {
  KCHECK(is_floating(dtype), ValueError, type_name(), ".to: ", dtype_name(dtype),
         " is not a floating-point type (parameters stay floating point)");
  replace_storage([&](const Tensor& t) { return is_floating(t.dtype()) && t.dtype() != dtype; },
                  [&](const Tensor& t) { return t.to(dtype); });
}

}  // namespace kestrel::nn
