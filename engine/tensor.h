// Tensor: a strided view of a Storage, plus the autograd state of that view.
// Activations are NHWC by convention of the ops, not of the tensor.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/storage.h"

namespace kestrel {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

struct Node;
class Tensor;
using GradReadyHook = std::function<void(Tensor& param)>;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;

  // autograd
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;
  std::vector<GradReadyHook> grad_ready_hooks;
  std::string name;  // optional, for error messages and parameter tables
};

class Generator;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- factories
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_vector_f64(const std::vector<double>& values, const Shape& shape);
  static Tensor from_vector_i64(const std::vector<int64_t>& values, const Shape& shape);
  static Tensor scalar(double value, DType dtype = DType::F32, Device device = Device::cpu());
  // Seeded, counter-based: the same generator state gives the same values on every device.
  static Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor bernoulli(const Shape& shape, double p, Generator& gen, DType dtype = DType::F32,
                          Device device = Device::cpu());

  // --- metadata
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t size(int64_t dim) const;
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t numel() const { return shape_numel(impl().shape); }
  int64_t offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  bool is_contiguous() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  bool shares_storage_with(const Tensor& o) const { return defined() && o.defined() && storage() == o.storage(); }

  void* data_ptr() const;
  template <typename T>
  T* data() const {
    KCHECK(DTypeOf<T>::value == dtype(), DTypeError, "tensor data<", dtype_name(DTypeOf<T>::value),
           ">() on a ", dtype_name(dtype()), " tensor");
    return static_cast<T*>(data_ptr());
  }
  // Single element (any dtype, any device) as double.
  double item() const;
  std::vector<float> to_vector() const;        // any float dtype -> f32 values in logical order
  std::vector<double> to_vector_f64() const;
  std::vector<int64_t> to_vector_i64() const;

  // --- views (share storage; differentiable)
  Tensor reshape(const Shape& shape) const;  // copies only when the layout needs it
  Tensor view(const Shape& shape) const;     // never copies; throws when impossible
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;  // removes dim
  Tensor expand(const Shape& shape) const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;

  // --- copies and conversion
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  Tensor cpu() const { return to(Device::cpu()); }

  // --- in place (not recorded by autograd; for initialisation and optimizers)
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);  // broadcasts src, casts dtype, crosses devices

  // --- autograd
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool on = true);
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g) { impl().grad = g.impl_; }
  void zero_grad() { impl().grad.reset(); }
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  // Runs the tape from this tensor. A scalar needs no gradient; otherwise give one.
  void backward(const Tensor& grad = Tensor()) const;
  Tensor detach() const;  // shares storage, no history
  // Called once per backward(), when this leaf's gradient is complete.
  void register_grad_ready_hook(GradReadyHook hook) { impl().grad_ready_hooks.push_back(std::move(hook)); }

  const std::string& name() const { return impl().name; }
  void set_name(const std::string& n) { impl().name = n; }

  std::string str(int64_t max_elements = 64) const;  // readable printing

  TensorImpl& impl() const {
    KCHECK(impl_ != nullptr, ValueError, "use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// Tensor arithmetic with broadcasting (engine/ops/elementwise.h has the rest).
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);
Tensor operator-(const Tensor& a);

// Makes a fresh view tensor over the same storage (no autograd wiring).
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);

// t [..., C] read as rows of its last dim: the elements from one row to the
// next where the rows are evenly spaced (C when contiguous, more for a
// channel slice of a wider tensor), else 0.
int64_t even_row_stride(const Tensor& t);
// Wraps a dim index like Python does; names the op in the error.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace kestrel
