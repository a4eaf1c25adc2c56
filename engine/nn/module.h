// Module: named parameters, buffers and children with PyTorch's dotted names.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace kestrel::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x) = 0;
  // forward() under this module's trace scope; use this to call children.
  Tensor operator()(const Tensor& x);

  NamedTensors named_parameters(const std::string& prefix = "") const;
  NamedTensors named_buffers(const std::string& prefix = "") const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const { return children_; }
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;

  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  void zero_grad();

  // Parameters and buffers in PyTorch's names and layouts (conv weights OIHW).
  NamedTensors state_dict() const;
  // Inverse of state_dict. strict: every name must match both ways. Errors list
  // the first mismatching tensors.
  void load_state_dict(const NamedTensors& state, bool strict = true);

  // Moves every parameter and buffer (keeps requires_grad).
  void to(Device device);
  // Casts every floating-point parameter and buffer to `dtype` (PyTorch's
  // model.to(torch.float64)); integer buffers such as counters stay as they are.
  void to(DType dtype);

  virtual std::string type_name() const { return "Module"; }

 protected:
  // The name the parent registered this module under (its trace scope).
  const std::string& scope_name() const { return scope_name_; }
  Tensor& register_parameter(const std::string& name, Tensor t, bool conv_weight = false);
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    m->scope_name_ = name;
    return m;
  }
  Tensor& param(const std::string& name);
  Tensor& buffer(const std::string& name);
  // Forgets every parameter and buffer of this module (not its children's).
  void clear_tensors();

 private:
  struct Slot {
    std::string name;
    Tensor tensor;
    bool conv_weight = false;  // stored OHWI here, OIHW in state_dict
  };
  void collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Slot*>>& out) const;
  // Replaces the storage under every parameter and buffer, here and in the
  // children, by convert's result where `wanted` says so; layers' handles stay valid.
  template <typename Wanted, typename Convert>
  void replace_storage(const Wanted& wanted, const Convert& convert);

  std::vector<Slot> params_;
  std::vector<Slot> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::string scope_name_;
  bool training_ = true;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace kestrel::nn
