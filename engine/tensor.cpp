#include "engine/tensor.h"

#include <cmath>
#include <iomanip>
#include <numeric>
#include <sstream>

#include "engine/autograd.h"
#include "engine/cpu/scalar_cast.h"
#include "engine/cpu/strided.h"
#include "engine/gpu/copy.h"
#include "engine/ops/check.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"
#include "engine/philox.h"
#include "engine/random.h"
#include "engine/text.h"
#include "engine/trace.h"

namespace kestrel {

std::string shape_str(const Shape& s) {
  return "[" + join(s, ",", [](int64_t d) { return std::to_string(d); }) + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t d = dim < 0 ? dim + ndim : dim;
  KCHECK(d >= 0 && d < std::max<int64_t>(ndim, 1), ShapeError, op, ": dim ", dim, " is out of range for a ",
         ndim, "-d tensor");
  return d;
}

// ---------------------------------------------------------------- factories

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) KCHECK(d >= 0, ShapeError, "empty: negative size in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (t.nbytes() == 0) return t;  // no storage to clear (and memset(nullptr) is undefined)
  if (device.is_cpu())
    std::memset(t.data_ptr(), 0, t.nbytes());
  else
    device_allocator(device.type)->memset_zero(t.data_ptr(), t.nbytes(), device.index);
  return t;
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  Tensor t = empty({n}, dtype, Device::cpu());
  dispatch_all(dtype, "arange", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    auto* p = t.data<scalar_t>();
    for (int64_t i = 0; i < n; ++i) p[i] = cpu::from_double<scalar_t>(static_cast<double>(i));
  });
  return t.to(device);
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  KCHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), ShapeError, "from_vector: ", values.size(),
         " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

Tensor Tensor::from_vector_f64(const std::vector<double>& values, const Shape& shape) {
  KCHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), ShapeError, "from_vector_f64: ",
         values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  return t;
}

Tensor Tensor::from_vector_i64(const std::vector<int64_t>& values, const Shape& shape) {
  KCHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), ShapeError, "from_vector_i64: ",
         values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::I64);
  std::copy(values.begin(), values.end(), t.data<int64_t>());
  return t;
}

namespace {

// Fills n values from Philox words; `make` maps (word block, index) to a value.
template <typename F>
Tensor philox_fill(const Shape& shape, Generator& gen, DType dtype, Device device, F make) {
  const int64_t n = shape_numel(shape);
  const uint64_t base = gen.advance(static_cast<uint64_t>((n + 3) / 4));
  const uint64_t seed = gen.seed();
  Tensor t = Tensor::empty(shape, DType::F64, Device::cpu());
  double* p = t.data<double>();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t block = 0; block < (n + 3) / 4; ++block) {
    const Philox4 r = philox4x32(seed, base + static_cast<uint64_t>(block));
    for (int k = 0; k < 4 && block * 4 + k < n; ++k) p[block * 4 + k] = make(r, k);
  }
  return t.to(dtype).to(device);
}

}  // namespace

Tensor Tensor::randn(const Shape& shape, Generator& gen, DType dtype, Device device) {
  return philox_fill(shape, gen, dtype, device, [](const Philox4& r, int k) {
    // Box-Muller on the pair (0,1) or (2,3): cos for even k, sin for odd k.
    const int pair = k / 2;
    const double u1 = philox_uniform(r.v[2 * pair]);
    const double u2 = philox_uniform(r.v[2 * pair + 1]);
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * M_PI * u2;
    return k % 2 == 0 ? radius * std::cos(angle) : radius * std::sin(angle);
  });
}

Tensor Tensor::rand(const Shape& shape, Generator& gen, DType dtype, Device device) {
  return philox_fill(shape, gen, dtype, device,
                     [](const Philox4& r, int k) { return 1.0 - static_cast<double>(philox_uniform(r.v[k])); });
}

Tensor Tensor::bernoulli(const Shape& shape, double p, Generator& gen, DType dtype, Device device) {
  KCHECK(p >= 0.0 && p <= 1.0, ValueError, "bernoulli: p must be in [0, 1], got ", p);
  return philox_fill(shape, gen, dtype, device, [p](const Philox4& r, int k) {
    return (1.0 - static_cast<double>(philox_uniform(r.v[k]))) < p ? 1.0 : 0.0;
  });
}

// ---------------------------------------------------------------- metadata

int64_t Tensor::size(int64_t dim) const { return shape()[wrap_dim(dim, this->dim(), "size")]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to misplace (as in PyTorch)
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (shape()[i] == 1) continue;
    if (strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  return static_cast<char*>(storage()->data()) + offset() * static_cast<int64_t>(dtype_size(dtype()));
}

double Tensor::item() const {
  KCHECK(numel() == 1, ShapeError, "item: tensor has ", numel(), " elements (shape ", shape_str(shape()),
         "), expected 1");
  Tensor c = device().is_cpu() ? *this : cpu();
  return dispatch_all(c.dtype(), "item", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_); return cpu::to_double(*c.data<scalar_t>()); });
}

std::vector<float> Tensor::to_vector() const {
  Tensor c = detach().to(Device::cpu()).to(DType::F32).contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

std::vector<double> Tensor::to_vector_f64() const {
  // Contiguous f32 and f64 on the CPU, the common case (a batch norm's
  // statistics, every eval-mode call), without intermediate tensors.
  if (defined() && device().is_cpu() && is_contiguous()) {
    if (dtype() == DType::F64) return std::vector<double>(data<double>(), data<double>() + numel());
    if (dtype() == DType::F32) return std::vector<double>(data<float>(), data<float>() + numel());
  }
  Tensor c = detach().to(Device::cpu()).to(DType::F64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}

std::vector<int64_t> Tensor::to_vector_i64() const {
  Tensor c = detach().to(Device::cpu()).to(DType::I64).contiguous();
  return std::vector<int64_t>(c.data<int64_t>(), c.data<int64_t>() + c.numel());
}

// ---------------------------------------------------------------- views

int64_t even_row_stride(const Tensor& t) {
  const int64_t last = t.dim() - 1;
  if (last < 0) return 0;
  const int64_t C = t.size(last);
  if (t.is_contiguous()) return C;
  if (t.strides()[last] != 1) return 0;
  const int64_t stride = last > 0 ? t.strides()[last - 1] : C;
  if (stride < C) return 0;
  for (int64_t d = last - 1, expected = stride; d >= 0; expected *= t.size(d), --d)
    if (t.size(d) != 1 && t.strides()[d] != expected) return 0;
  return stride;
}

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

namespace {

Shape infer_shape(const Shape& requested, int64_t numel, const char* op, const Shape& from) {
  Shape s = requested;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      KCHECK(infer < 0, ShapeError, op, ": only one dimension can be -1 in ", shape_str(requested));
      infer = static_cast<int64_t>(i);
    } else {
      KCHECK(s[i] >= 0, ShapeError, op, ": invalid size in ", shape_str(requested));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    KCHECK(known > 0 && numel % known == 0, ShapeError, op, ": cannot infer -1 in ", shape_str(requested),
           " for ", numel, " elements (from ", shape_str(from), ")");
    s[infer] = numel / known;
  }
  KCHECK(shape_numel(s) == numel, ShapeError, op, ": shape ", shape_str(requested), " is invalid for input of shape ",
         shape_str(from), " (", numel, " elements)");
  return s;
}

// Strides for viewing (shape, strides) as new_shape without a copy, if possible.
bool view_strides(const Shape& shape, const Shape& strides, const Shape& new_shape, Shape& out) {
  if (shape_numel(shape) <= 1) {
    out = contiguous_strides(new_shape);
    return true;
  }
  // Split old dims into contiguous chunks, then map new dims onto chunks.
  out.assign(new_shape.size(), 0);
  int64_t view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

}  // namespace

Tensor Tensor::view(const Shape& shape_req) const {
  const Shape s = infer_shape(shape_req, numel(), "view", shape());
  Shape st;
  KCHECK(view_strides(shape(), strides(), s, st), ShapeError, "view: shape ", shape_str(s),
         " is incompatible with the strides of the input ", shape_str(shape()), "; use reshape()");
  Tensor out = make_view(*this, s, st, offset());
  trace_view("reshape", *this, out, [&] { return TraceAttrs{{"shape", join_ints(s)}}; });
  const Shape in_shape = shape();
  return record(out, "view", {*this}, [in_shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.reshape(in_shape)};
  });
}

Tensor Tensor::reshape(const Shape& shape_req) const {
  const Shape s = infer_shape(shape_req, numel(), "reshape", shape());
  Shape st;
  if (view_strides(shape(), strides(), s, st)) return view(s);
  return contiguous().view(s);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  const int64_t a = wrap_dim(start_dim, dim(), "flatten"), b = wrap_dim(end_dim, dim(), "flatten");
  KCHECK(a <= b, ShapeError, "flatten: start_dim ", start_dim, " is after end_dim ", end_dim);
  Shape s(shape().begin(), shape().begin() + a);
  int64_t merged = 1;
  for (int64_t d = a; d <= b; ++d) merged *= shape()[d];
  s.push_back(merged);
  s.insert(s.end(), shape().begin() + b + 1, shape().end());
  return reshape(s);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  KCHECK(static_cast<int64_t>(dims.size()) == dim(), ShapeError, "permute: ", dims.size(), " dims given for a ",
         dim(), "-d tensor ", shape_str(shape()));
  Shape s(dims.size()), st(dims.size());
  std::vector<int64_t> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], dim(), "permute");
    KCHECK(inverse[d] < 0, ShapeError, "permute: dim ", d, " repeated");
    inverse[d] = static_cast<int64_t>(i);
    s[i] = shape()[d];
    st[i] = strides()[d];
  }
  Tensor out = make_view(*this, s, st, offset());
  trace_view("permute", *this, out, [&] { return TraceAttrs{{"dims", join_ints(dims)}}; });
  return record(out, "permute", {*this}, [inverse](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.permute(inverse)};
  });
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  std::vector<int64_t> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim(a, dim(), "transpose")], dims[wrap_dim(b, dim(), "transpose")]);
  return permute(dims);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  KCHECK(start >= 0 && length >= 0 && start + length <= shape()[d], ShapeError, "narrow: range [", start, ", ",
         start + length, ") is out of bounds for dim ", d, " of size ", shape()[d], " (shape ", shape_str(shape()),
         ")");
  Shape s = shape();
  s[d] = length;
  Tensor out = make_view(*this, s, strides(), offset() + start * strides()[d]);
  trace_view("narrow", *this, out, [&] {
    return TraceAttrs{{"dim", std::to_string(d)}, {"start", std::to_string(start)}, {"length", std::to_string(length)}};
  });
  const Shape in_shape = shape();
  return record(out, "narrow", {*this}, [in_shape, d, start, length](const Tensor& g, const std::vector<bool>&) {
    Tensor full = Tensor::zeros(in_shape, g.dtype(), g.device());
    full.narrow(d, start, length).copy_(g);
    return std::vector<Tensor>{full};
  });
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  if (index < 0) index += shape()[d];
  return narrow(d, index, 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& target) const {
  KCHECK(static_cast<int64_t>(target.size()) >= dim(), ShapeError, "expand: cannot expand ", shape_str(shape()),
         " to fewer dims ", shape_str(target));
  const int64_t shift = static_cast<int64_t>(target.size()) - dim();
  Shape s(target.size()), st(target.size(), 0);
  for (int64_t i = 0; i < static_cast<int64_t>(target.size()); ++i) {
    const int64_t src = i - shift;
    const int64_t want = target[i];
    if (src < 0) {
      KCHECK(want >= 0, ShapeError, "expand: invalid target ", shape_str(target));
      s[i] = want;
      continue;
    }
    const int64_t have = shape()[src];
    if (want == -1 || want == have) {
      s[i] = have;
      st[i] = strides()[src];
    } else {
      KCHECK(have == 1, ShapeError, "expand: size ", have, " at dim ", src, " cannot expand to ", want, " (",
             shape_str(shape()), " -> ", shape_str(target), ")");
      s[i] = want;
    }
  }
  Tensor out = make_view(*this, s, st, offset());
  trace_view("expand", *this, out, [&] { return TraceAttrs{{"shape", join_ints(s)}}; });
  const Shape in_shape = shape();
  return record(out, "expand", {*this}, [in_shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{sum_to(g, in_shape)};
  });
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (shape()[d] != 1) return *this;
  Shape s = shape();
  s.erase(s.begin() + d);
  return view(s);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape();
  s.insert(s.begin() + d, 1);
  return view(s);
}

// ---------------------------------------------------------------- copies

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  {
    NoGradGuard guard;
    out.copy_(*this);
  }
  trace_view("clone", *this, out);
  return record(out, "clone", {*this},
                [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = empty(shape(), target, device());
  {
    NoGradGuard guard;
    out.copy_(*this);
  }
  trace_view("cast", *this, out, [&] { return TraceAttrs{{"dtype", dtype_name(target)}}; });
  if (!is_floating(target)) return out;
  const DType source = dtype();
  return record(out, "cast", {*this},
                [source](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g.to(source)}; });
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), target);
  copy_bytes(out.data_ptr(), target, src.data_ptr(), src.device(), src.nbytes());
  const Device source = device();
  return record(out, "to_device", {*this},
                [source](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g.to(source)}; });
}

Tensor& Tensor::fill_(double value) {
  if (device().is_cuda()) {
    if constexpr (kHaveCuda) {
      gpu::fill(*this, value);
      return *this;
    }
  }
  KCHECK(device().is_cpu(), DeviceError, "fill_: ", device().str(), " tensors need a build with CUDA");
  auto layout = cpu::coalesce<1>(shape(), {strides()});
  dispatch_all(dtype(), "fill_", [&](auto tag_) {
    using scalar_t = KESTREL_SCALAR(tag_);
    scalar_t* p = static_cast<scalar_t*>(data_ptr());
    const scalar_t v = cpu::from_double<scalar_t>(value);
    cpu::for_each_row<1>(layout, [&](const std::array<int64_t, 1>& off, int64_t n, const std::array<int64_t, 1>& st) {
      for (int64_t i = 0; i < n; ++i) p[off[0] + i * st[0]] = v;
    });
  });
  return *this;
}

namespace {

// dst and src on one device: broadcast, cast and strides handled there.
void copy_same_device(const Tensor& dst, const Tensor& src) {
  if (dst.device().is_cpu()) {
    cpu::copy_strided(dst, src);
    return;
  }
  if constexpr (kHaveCuda) {
    gpu::copy_strided(dst, src);
    return;
  }
  throw DeviceError("copy_: " + dst.device().str() + " tensors need a build with CUDA");
}

}  // namespace

Tensor& Tensor::copy_(const Tensor& src_in) {
  // Validate broadcast compatibility.
  KCHECK(src_in.dim() <= dim(), ShapeError, "copy_: source ", shape_str(src_in.shape()), " does not broadcast to ",
         shape_str(shape()));
  for (int64_t i = 0; i < src_in.dim(); ++i) {
    const int64_t s = src_in.shape()[src_in.dim() - 1 - i], d = shape()[dim() - 1 - i];
    KCHECK(s == d || s == 1, ShapeError, "copy_: source ", shape_str(src_in.shape()), " does not broadcast to ",
           shape_str(shape()));
  }
  if (numel() == 0) return *this;
  KCHECK(!storage()->frozen(), ValueError,
         "copy_: the tensor is frozen (a model fused for inference); build the model again to change its weights");
  const Tensor src = src_in.detach();
  if (src.device() == device()) {
    copy_same_device(*this, src);
    return *this;
  }
  // Across devices: move the source's own (compact) bytes, then broadcast,
  // cast and scatter into the strides on the destination's device.
  Tensor packed = src.contiguous();
  if (is_contiguous() && packed.shape() == shape() && packed.dtype() == dtype()) {
    copy_bytes(data_ptr(), device(), packed.data_ptr(), packed.device(), nbytes());
    return *this;
  }
  Tensor moved = empty(packed.shape(), packed.dtype(), device());
  copy_bytes(moved.data_ptr(), device(), packed.data_ptr(), packed.device(), packed.nbytes());
  copy_same_device(*this, moved);
  return *this;
}

// ---------------------------------------------------------------- autograd glue

Tensor& Tensor::set_requires_grad(bool on) {
  KCHECK(!on || is_floating(dtype()), AutogradError, "requires_grad needs a floating dtype, not ",
         dtype_name(dtype()));
  KCHECK(is_leaf(), AutogradError, "requires_grad can only be changed on a leaf tensor");
  impl().requires_grad = on;
  return *this;
}

Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

// ---------------------------------------------------------------- printing

std::string Tensor::str(int64_t max_elements) const {
  std::ostringstream os;
  if (!defined()) return "tensor(undefined)";
  const std::vector<double> v = to_vector_f64();
  const Shape& s = shape();
  const Shape st = contiguous_strides(s);
  os << "tensor(";
  std::function<void(int64_t, int64_t, int64_t&)> rec = [&](int64_t d, int64_t base, int64_t& printed) {
    if (d == dim()) {
      os << std::setprecision(6) << v[base];
      ++printed;
      return;
    }
    os << "[";
    for (int64_t i = 0; i < s[d]; ++i) {
      if (printed >= max_elements) {
        os << "...";
        break;
      }
      if (i) os << (d + 1 == dim() ? ", " : ",\n       ");
      rec(d + 1, base + i * st[d], printed);
    }
    os << "]";
  };
  int64_t printed = 0;
  if (numel() > 0 || dim() == 0) rec(0, 0, printed);
  os << ", shape=" << shape_str(s) << ", dtype=" << dtype_name(dtype());
  if (!device().is_cpu()) os << ", device=" << device().str();
  if (requires_grad()) os << ", requires_grad";
  os << ")";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace kestrel
