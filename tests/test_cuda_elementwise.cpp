// CUDA tensor basics and elementwise/reduction ops against the CPU backend:
// fill_, copy_ (strided, broadcast, casting, across devices), contiguous(),
// the factories, every binary and unary op with its gradient, sum / mean /
// var / max / argmax, concat / split / pad2d, dropout and drop_path under a
// fixed seed, in-place updates and gradient accumulation. Odd sizes (1, 7,
// 33, 1000003 elements), empty tensors, and layouts with more dims than a
// kernel indexes (split into slices on the host).
//
// f32/f64 compare with tests/cuda_parity.h (tolerances there). f16/bf16 have
// no CPU kernels: a CUDA f16/bf16 run is compared with the CPU f32 run on the
// same rounded inputs, at the dtype's parity tolerance (x4 for gradients and
// composed ops, which round several times). Copies, casts, fills, factories
// and dropout must match the CPU bit for bit.
//
// Without a usable GPU every CUDA test skips with the reason; the host-side
// indexing tests (StridedIndex) run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "engine/gpu/strided_index.h"
#include "engine/ops/dropout.h"
#include "engine/ops/shape_ops.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_cuda_matches_cpu;
using kestrel::testing::expect_reduced_cuda_matches_f32;
using kestrel::testing::parity_tolerance;
using kestrel::testing::random_tensor;
using kestrel::testing::ReducedParity;
using kestrel::testing::Tolerance;

namespace {

using UnaryFn = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor input(const Shape& shape, uint64_t seed, DType dtype = DType::F32, bool grad = true) {
  Tensor t = random_tensor(shape, seed, dtype);
  if (grad) t.set_requires_grad(true);
  return t;
}

// Values in [lo, hi) (f32 unless told), for ops with a restricted domain.
Tensor input_in(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype = DType::F32) {
  Tensor t = add_scalar(mul_scalar(random_tensor(shape, seed, DType::F64), (hi - lo) / 2.0), (hi + lo) / 2.0)
                 .to(dtype);
  t.set_requires_grad(true);
  return t;
}

Tolerance scaled(Tolerance t, double k) { return {t.atol * k, t.rtol * k}; }

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "{";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "}";
}

// Both tensors' elements, in logical order, have identical bytes.
void expect_same_bits(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(shape_str(actual.shape()), shape_str(expected.shape())) << what;
  ASSERT_EQ(actual.dtype(), expected.dtype()) << what;
  const Tensor a = actual.detach().cpu().contiguous(), e = expected.detach().cpu().contiguous();
  if (a.nbytes() == 0) return;
  const auto* pa = static_cast<const unsigned char*>(a.data_ptr());
  const auto* pe = static_cast<const unsigned char*>(e.data_ptr());
  const size_t width = dtype_size(a.dtype());
  for (size_t i = 0; i < a.nbytes(); i += width) {
    if (std::memcmp(pa + i, pe + i, width) != 0) {
      ADD_FAILURE() << what << ": first differing element " << i / width << " (actual "
                    << a.reshape({-1}).select(0, static_cast<int64_t>(i / width)).item() << ", expected "
                    << e.reshape({-1}).select(0, static_cast<int64_t>(i / width)).item() << ")";
      return;
    }
  }
}

// A CUDA run in `dtype` (f16/bf16) against the CPU f32 run on the same
// rounded inputs; gradients, which round more often, at 4x the tolerance.
template <typename Op>
void expect_reduced_matches_cpu(const Op& op, const std::vector<Tensor>& f32_inputs, DType dtype,
                                const std::string& what, double tol_scale = 1.0, bool check_grads = true) {
  expect_reduced_cuda_matches_f32(op, f32_inputs, dtype, what, ReducedParity{tol_scale, 4.0, check_grads, {}});
}

const std::vector<DType> kHalfTypes = {DType::F16, DType::BF16};
const std::vector<DType> kAllTypes = {DType::F32, DType::F16, DType::BF16, DType::F64,
                                      DType::I32, DType::I64, DType::U8,   DType::I8};

// Values representable in every dtype of kAllTypes after the CPU's cast: small
// non-negative integers plus halves (fractions truncate the same way on both).
Tensor castable_values(const Shape& shape, uint64_t seed) {
  return add_scalar(mul_scalar(random_tensor(shape, seed, DType::F64), 60.0), 60.0);
}

}  // namespace

// ---------------------------------------------------------------- host-side indexing (runs everywhere)

namespace {

// (destination, source) element offsets in row-major order, straight from the
// uncoalesced shape and strides.
std::vector<std::array<int64_t, 2>> reference_offsets(const Shape& shape, const Shape& dst_strides,
                                                      const Shape& src_strides) {
  std::vector<std::array<int64_t, 2>> out;
  const int64_t n = shape_numel(shape);
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    std::array<int64_t, 2> off{0, 0};
    for (size_t d = 0; d < shape.size(); ++d) {
      off[0] += idx[d] * dst_strides[d];
      off[1] += idx[d] * src_strides[d];
    }
    out.push_back(off);
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

template <typename I>
std::vector<std::array<int64_t, 2>> sliced_offsets(const cpu::StridedLayout<2>& layout, int64_t* slices) {
  std::vector<std::array<int64_t, 2>> out;
  *slices = 0;
  gpu::for_each_slice<2>(layout, [&](const gpu::StridedIndex<2>& index, const std::array<int64_t, 2>& base,
                                     int64_t n) {
    EXPECT_LE(index.ndim, gpu::kMaxDims);
    ++*slices;
    for (int64_t i = 0; i < n; ++i) {
      int64_t off[2];
      index.offsets<I>(i, off);
      out.push_back({base[0] + off[0], base[1] + off[1]});
    }
  });
  return out;
}

void expect_slices_enumerate(const Tensor& dst, const Tensor& src, const std::string& what) {
  const Shape src_strides = cpu::broadcast_strides(src, dst.shape());
  const auto layout = cpu::coalesce<2>(dst.shape(), {dst.strides(), src_strides});
  const auto expected = reference_offsets(dst.shape(), dst.strides(), src_strides);
  int64_t slices32 = 0, slices64 = 0;
  EXPECT_EQ(sliced_offsets<uint32_t>(layout, &slices32), expected) << what << " (32-bit division)";
  EXPECT_EQ(sliced_offsets<uint64_t>(layout, &slices64), expected) << what << " (64-bit division)";
  int64_t lead = 1;
  for (int d = 0; d + gpu::kMaxDims < static_cast<int>(layout.shape.size()); ++d) lead *= layout.shape[d];
  EXPECT_EQ(slices32, lead) << what;
}

}  // namespace

TEST(CudaStridedIndex, SlicesVisitEveryElementInRowMajorOrder) {
  const Tensor base = Tensor::zeros({4, 5, 6, 7});
  expect_slices_enumerate(base, base, "contiguous");
  expect_slices_enumerate(base.permute({3, 1, 0, 2}), base.permute({2, 0, 3, 1}).contiguous(), "permuted pair");
  expect_slices_enumerate(base.narrow(1, 1, 3).narrow(3, 2, 4), Tensor::zeros({1, 6, 1}), "narrowed, broadcast");
  expect_slices_enumerate(base, Tensor::zeros({}), "scalar source");
  expect_slices_enumerate(Tensor::zeros({1}), Tensor::zeros({1}), "single element");
  // Nine dims that cannot merge: three leading dims are looped on the host.
  const Tensor nine = Tensor::zeros({2, 3, 2, 3, 2, 3, 2, 3, 2});
  expect_slices_enumerate(nine, nine.permute({8, 7, 6, 5, 4, 3, 2, 1, 0}).contiguous().permute(
                                    {8, 7, 6, 5, 4, 3, 2, 1, 0}),
                          "nine reversed dims");
  expect_slices_enumerate(nine.permute({1, 0, 3, 2, 5, 4, 7, 6, 8}), Tensor::zeros({3, 1, 3, 1, 3, 1, 3, 1, 2}),
                          "nine swapped dims, broadcast source");
}

TEST(CudaStridedIndex, DenseLayoutsAreFlatAndOthersAreNot) {
  const Tensor x = Tensor::zeros({3, 4, 5});
  EXPECT_TRUE(gpu::is_flat(cpu::coalesce<2>(x.shape(), {x.strides(), x.strides()})));
  EXPECT_TRUE(gpu::is_flat(cpu::coalesce<1>(Shape{1}, {Shape{0}})));
  const Tensor t = x.transpose(0, 2);
  EXPECT_FALSE(gpu::is_flat(cpu::coalesce<2>(t.shape(), {contiguous_strides(t.shape()), t.strides()})));
  EXPECT_FALSE(gpu::is_flat(cpu::coalesce<2>(x.shape(), {x.strides(), cpu::broadcast_strides(Tensor::zeros({5}),
                                                                                             x.shape())})));
  EXPECT_TRUE(gpu::fits_u32(int64_t{1} << 31));
  EXPECT_FALSE(gpu::fits_u32(int64_t{1} << 32));
}

TEST(CudaDropout, HalfInputsOnTheCpuRaiseADTypeErrorNamingTheDevice) {
  Generator g(1);
  try {
    dropout(Tensor::zeros({4}, DType::F16), 0.5, true, g);
    FAIL() << "expected DTypeError";
  } catch (const DTypeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("dropout: input must be f32 or f64"), std::string::npos) << m;
    EXPECT_NE(m.find("on cpu"), std::string::npos) << m;
  }
}

// ---------------------------------------------------------------- fill, copy, casts, factories

TEST(CudaTensor, FillMatchesTheCpuBitForBitInEveryDtypeAndLayout) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : kAllTypes) {
    for (double value : {0.0, 2.5, 1.0, 100.0}) {
      const std::string what = std::string(dtype_name(dt)) + " fill " + std::to_string(value);
      Tensor c = Tensor::zeros({5, 6, 7}, dt);
      Tensor g = Tensor::zeros({5, 6, 7}, dt, Device::cuda());
      c.permute({2, 0, 1}).narrow(1, 1, 3).fill_(value);
      g.permute({2, 0, 1}).narrow(1, 1, 3).fill_(value);
      expect_same_bits(g, c, what + " (permuted, narrowed view)");
      expect_same_bits(Tensor::full({33}, value, dt, Device::cuda()), Tensor::full({33}, value, dt), what);
    }
  }
  expect_same_bits(Tensor::full({1000003}, -0.75, DType::F16, Device::cuda()), Tensor::full({1000003}, -0.75, DType::F16),
                   "large f16 fill");
  Tensor empty = Tensor::empty({0, 3}, DType::F32, Device::cuda());
  empty.fill_(1.0);
  EXPECT_EQ(empty.numel(), 0);
}

TEST(CudaTensor, ContiguousOfPermutedAndNarrowedViewsMatchesTheCpu) {
  KESTREL_REQUIRE_CUDA();
  const Tensor x = random_tensor({3, 4, 5, 6}, 1, DType::F32);
  const Tensor g = x.to(Device::cuda());
  expect_same_bits(g.permute({2, 0, 3, 1}).contiguous(), x.permute({2, 0, 3, 1}).contiguous(), "permute");
  expect_same_bits(g.narrow(1, 1, 2).contiguous(), x.narrow(1, 1, 2).contiguous(), "narrow");
  expect_same_bits(g.transpose(0, 3).narrow(0, 2, 3).clone(), x.transpose(0, 3).narrow(0, 2, 3).clone(), "clone");
  expect_same_bits(g.select(2, 4).contiguous(), x.select(2, 4).contiguous(), "select");
  expect_same_bits(g.expand({2, 3, 4, 5, 6}).contiguous(), x.expand({2, 3, 4, 5, 6}).contiguous(), "expand");
  // More unmergeable dims than a kernel indexes.
  const Tensor nine = random_tensor({2, 3, 2, 3, 2, 3, 2, 3, 2}, 2, DType::F32);
  const std::vector<int64_t> rev = {8, 7, 6, 5, 4, 3, 2, 1, 0};
  expect_same_bits(nine.to(Device::cuda()).permute(rev).contiguous(), nine.permute(rev).contiguous(), "nine dims");
  for (int64_t n : {1, 7, 33, 1000003}) {
    const Tensor v = random_tensor({n, 2}, 3, DType::F32);
    expect_same_bits(v.to(Device::cuda()).transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous(),
                     "transpose of " + std::to_string(n) + "x2");
  }
  const Tensor e = Tensor::zeros({0, 4}).to(Device::cuda()).transpose(0, 1).contiguous();
  EXPECT_EQ(e.shape(), (Shape{4, 0}));
}

TEST(CudaTensor, CopyBroadcastsCastsAndScattersIntoStridedViews) {
  KESTREL_REQUIRE_CUDA();
  const Tensor src = random_tensor({4}, 4, DType::F64);
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F64}) {
    const std::string what = std::string("f64 [4] into ") + dtype_name(dt);
    Tensor c = Tensor::zeros({4, 5, 6}, dt);
    Tensor g = Tensor::zeros({4, 5, 6}, dt, Device::cuda());
    c.transpose(0, 2).narrow(1, 1, 3).copy_(src);
    g.transpose(0, 2).narrow(1, 1, 3).copy_(src.to(Device::cuda()));
    expect_same_bits(g, c, what + " (on the device)");
    // Across devices: CPU source into a CUDA view, CUDA source into a CPU view.
    Tensor g2 = Tensor::zeros({4, 5, 6}, dt, Device::cuda());
    g2.transpose(0, 2).narrow(1, 1, 3).copy_(src);
    expect_same_bits(g2, c, what + " (from the CPU)");
    Tensor c2 = Tensor::zeros({4, 5, 6}, dt);
    c2.transpose(0, 2).narrow(1, 1, 3).copy_(src.to(Device::cuda()));
    expect_same_bits(c2, c, what + " (to the CPU)");
  }
  // Same dtype, strided on both sides, across devices and on the device.
  const Tensor x = random_tensor({6, 7}, 5, DType::F32);
  Tensor c = Tensor::zeros({7, 6});
  Tensor g = Tensor::zeros({7, 6}, DType::F32, Device::cuda());
  c.copy_(x.transpose(0, 1));
  g.copy_(x.to(Device::cuda()).transpose(0, 1));
  expect_same_bits(g, c, "transposed source");
  Tensor c3 = Tensor::zeros({7, 6});
  c3.transpose(0, 1).copy_(x.to(Device::cuda()));
  expect_same_bits(c3, x.transpose(0, 1).contiguous(), "CUDA source into a transposed CPU view");
  // Empty copies do nothing.
  Tensor e = Tensor::empty({0, 3}, DType::F32, Device::cuda());
  e.copy_(Tensor::zeros({3}));
  e.copy_(Tensor::zeros({0, 3}, DType::F16, Device::cuda()));
  EXPECT_THROW(g.copy_(Tensor::zeros({5}, DType::F32, Device::cuda())), ShapeError);
}

TEST(CudaTensor, CastsBetweenEveryDtypePairMatchTheCpuBitForBit) {
  KESTREL_REQUIRE_CUDA();
  const Tensor base = castable_values({33, 7}, 6);
  for (DType from : kAllTypes) {
    const Tensor x = base.to(from);
    const Tensor gx = x.to(Device::cuda());
    for (DType to : kAllTypes) {
      const std::string what = std::string(dtype_name(from)) + " -> " + dtype_name(to);
      expect_same_bits(gx.to(to), x.to(to), what);
      expect_same_bits(gx.transpose(0, 1).to(to), x.transpose(0, 1).to(to), what + " (transposed)");
    }
  }
  // Rounding of values that are not representable (f64/f32 -> f16/bf16), large sizes.
  const Tensor fine = mul_scalar(random_tensor({1000003}, 7, DType::F64), 70000.0);
  for (DType to : {DType::F32, DType::F16, DType::BF16, DType::I64}) {
    expect_same_bits(fine.to(Device::cuda()).to(to), fine.to(to), std::string("f64 -> ") + dtype_name(to));
    const Tensor f32 = fine.to(DType::F32);
    expect_same_bits(f32.to(Device::cuda()).to(to), f32.to(to), std::string("f32 -> ") + dtype_name(to));
  }
}

TEST(CudaTensor, FactoriesOnTheDeviceEqualTheCpuOnesBitForBit) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F64}) {
    const std::string name = dtype_name(dt);
    for (const Shape& s : {Shape{1}, Shape{7}, Shape{33, 3}, Shape{1000003}}) {
      Generator a(11), b(11);
      expect_same_bits(Tensor::randn(s, a, dt, Device::cuda()), Tensor::randn(s, b, dt), "randn " + name);
      expect_same_bits(Tensor::rand(s, a, dt, Device::cuda()), Tensor::rand(s, b, dt), "rand " + name);
      expect_same_bits(Tensor::bernoulli(s, 0.3, a, dt, Device::cuda()), Tensor::bernoulli(s, 0.3, b, dt),
                       "bernoulli " + name);
      EXPECT_EQ(a.offset(), b.offset());
    }
  }
  for (DType dt : kAllTypes) {
    expect_same_bits(Tensor::arange(100, dt, Device::cuda()), Tensor::arange(100, dt), "arange");
    expect_same_bits(Tensor::full({3, 5}, 3.25, dt, Device::cuda()), Tensor::full({3, 5}, 3.25, dt), "full");
    expect_same_bits(Tensor::ones({3, 5}, dt, Device::cuda()), Tensor::ones({3, 5}, dt), "ones");
    expect_same_bits(Tensor::zeros({3, 5}, dt, Device::cuda()), Tensor::zeros({3, 5}, dt), "zeros");
  }
}

TEST(CudaTensor, ItemAndToVectorReadBackDeviceValues) {
  KESTREL_REQUIRE_CUDA();
  EXPECT_EQ(Tensor::scalar(2.5, DType::F16, Device::cuda()).item(), 2.5);
  EXPECT_EQ(Tensor::full({1, 1}, -7.0, DType::I64, Device::cuda()).item(), -7.0);
  const Tensor x = random_tensor({5, 3}, 8, DType::F32);
  const Tensor g = x.to(Device::cuda());
  EXPECT_EQ(g.to_vector(), x.to_vector());
  EXPECT_EQ(g.transpose(0, 1).to_vector(), x.transpose(0, 1).to_vector());
  EXPECT_EQ(g.to_vector_f64(), x.to_vector_f64());
  EXPECT_EQ(Tensor::arange(9, DType::I64, Device::cuda()).to_vector_i64(), Tensor::arange(9, DType::I64).to_vector_i64());
  EXPECT_EQ(g.select(0, 2).select(0, 1).item(), x.select(0, 2).select(0, 1).item());
  EXPECT_THROW(g.item(), ShapeError);
}

// ---------------------------------------------------------------- binary ops

namespace {

struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> fn;
};

const std::vector<BinaryCase> kBinaryOps = {
    {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }},
    {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }},
    {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }},
    {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }},
};

// Shape pairs: equal, trailing and leading broadcasts, both sides broadcast,
// a scalar, odd sizes, nine unmergeable dims, an empty dim.
const std::vector<std::pair<Shape, Shape>> kBroadcastPairs = {
    {{7}, {7}},
    {{1}, {33}},
    {{2, 3, 4}, {4}},
    {{2, 3, 4}, {3, 1}},
    {{5, 1, 7}, {1, 6, 1}},
    {{}, {3, 2}},
    {{2, 9, 9, 33}, {33}},
    {{2, 1, 3, 1, 2, 1, 2, 1, 3}, {1, 2, 1, 2, 1, 2, 1, 2, 1}},
    {{0, 3}, {3}},
    {{1000003}, {1000003}},
    {{1000003, 1}, {1}},
};

// Keeps divisors away from zero: magnitudes in [0.5, 1.5), either sign.
Tensor divisor(const Shape& s, uint64_t seed, DType dt = DType::F32) {
  std::vector<double> v = random_tensor(s, seed, DType::F64).to_vector_f64();
  for (double& x : v) x = x >= 0.0 ? 0.5 + x : x - 0.5;
  Tensor t = Tensor::from_vector_f64(v, s).to(dt);
  t.set_requires_grad(true);
  return t;
}

}  // namespace

TEST(CudaElementwise, EveryBinaryOpBroadcastsLikeTheCpuWithGradients) {
  KESTREL_REQUIRE_CUDA();
  for (const BinaryCase& op : kBinaryOps) {
    for (const auto& [sa, sb] : kBroadcastPairs) {
      for (DType dt : {DType::F32, DType::F64}) {
        const std::string what = std::string(op.name) + " " + shape_str(sa) + " " + shape_str(sb) + " " +
                                 dtype_name(dt);
        const Tensor a = input(sa, 10, dt);
        const Tensor b = std::string(op.name) == "div" ? divisor(sb, 11, dt) : input(sb, 11, dt);
        auto fn = op.fn;
        expect_cuda_matches_cpu([fn](const std::vector<Tensor>& in) { return fn(in[0], in[1]); }, {a, b},
                                parity_tolerance(dt), what);
        expect_cuda_matches_cpu([fn](const std::vector<Tensor>& in) { return fn(in[1], in[0]); }, {a, b},
                                parity_tolerance(dt), what + " (swapped)");
      }
    }
  }
}

TEST(CudaElementwise, BinaryOpsOnNonContiguousOperands) {
  KESTREL_REQUIRE_CUDA();
  for (const BinaryCase& op : kBinaryOps) {
    auto fn = op.fn;
    expect_cuda_matches_cpu(
        [fn](const std::vector<Tensor>& in) { return fn(in[0].transpose(0, 2), in[1].narrow(1, 1, 5)); },
        {input({6, 5, 4}, 12), std::string(op.name) == "div" ? divisor({4, 6, 6}, 13) : input({4, 6, 6}, 13)},
        parity_tolerance(DType::F32), std::string(op.name) + " on transposed and narrowed views");
  }
}

TEST(CudaElementwise, BinaryOpsInHalfPrecisionComputeInF32) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : kHalfTypes) {
    for (const BinaryCase& op : kBinaryOps) {
      const std::vector<std::pair<Shape, Shape>> pairs = {{{7}, {7}}, {{2, 3, 33}, {3, 1}}, {{1000003}, {1}}};
      for (const auto& [sa, sb] : pairs) {
        const std::string what = std::string(op.name) + " " + shape_str(sa) + " " + shape_str(sb) + " " +
                                 dtype_name(dt);
        auto fn = op.fn;
        expect_reduced_matches_cpu([fn](const std::vector<Tensor>& in) { return fn(in[0], in[1]); },
                                   {input(sa, 14), std::string(op.name) == "div" ? divisor(sb, 15) : input(sb, 15)},
                                   dt, what);
      }
    }
  }
}

// ---------------------------------------------------------------- unary ops

namespace {

struct UnaryCase {
  const char* name;
  UnaryFn fn;
  double lo, hi;  // input range
};

Tensor first(const std::vector<Tensor>& in) { return in[0]; }

// Every cpu::UnaryOp through its public op; ranges cover the kinks.
const std::vector<UnaryCase> kUnaryOps = {
    {"neg", [](const std::vector<Tensor>& in) { return neg(first(in)); }, -8, 8},
    {"exp", [](const std::vector<Tensor>& in) { return exp(first(in)); }, -8, 8},
    {"log", [](const std::vector<Tensor>& in) { return log(first(in)); }, 0.05, 8},
    {"sqrt", [](const std::vector<Tensor>& in) { return sqrt(first(in)); }, 0.05, 8},
    {"square", [](const std::vector<Tensor>& in) { return square(first(in)); }, -8, 8},
    {"pow 2.5", [](const std::vector<Tensor>& in) { return pow(first(in), 2.5); }, 0.05, 4},
    {"pow 3", [](const std::vector<Tensor>& in) { return pow(first(in), 3.0); }, -3, 3},
    {"abs", [](const std::vector<Tensor>& in) { return abs(first(in)); }, -8, 8},
    {"clamp", [](const std::vector<Tensor>& in) { return clamp(first(in), -0.3, 0.4); }, -1, 1},
    {"add_scalar", [](const std::vector<Tensor>& in) { return add_scalar(first(in), 0.7); }, -8, 8},
    {"mul_scalar", [](const std::vector<Tensor>& in) { return mul_scalar(first(in), -1.3); }, -8, 8},
    {"relu", [](const std::vector<Tensor>& in) { return relu(first(in)); }, -8, 8},
    {"relu6", [](const std::vector<Tensor>& in) { return relu6(first(in)); }, -8, 8},
    {"sigmoid", [](const std::vector<Tensor>& in) { return sigmoid(first(in)); }, -8, 8},
    {"tanh", [](const std::vector<Tensor>& in) { return tanh(first(in)); }, -8, 8},
    {"silu", [](const std::vector<Tensor>& in) { return silu(first(in)); }, -8, 8},
    {"hardswish", [](const std::vector<Tensor>& in) { return hardswish(first(in)); }, -8, 8},
    {"hardsigmoid", [](const std::vector<Tensor>& in) { return hardsigmoid(first(in)); }, -8, 8},
    {"gelu", [](const std::vector<Tensor>& in) { return gelu(first(in)); }, -8, 8},
    {"fake_quantize", [](const std::vector<Tensor>& in) { return fake_quantize(first(in), 0.05, 128, 0, 255); }, -8, 8},
};

}  // namespace

TEST(CudaElementwise, EveryUnaryOpAndItsGradientMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  for (const UnaryCase& op : kUnaryOps) {
    for (int64_t n : {1, 7, 33, 1000003}) {
      for (DType dt : {DType::F32, DType::F64}) {
        const std::string what = std::string(op.name) + " n=" + std::to_string(n) + " " + dtype_name(dt);
        expect_cuda_matches_cpu(op.fn, {input_in({n}, 20, op.lo, op.hi, dt)}, parity_tolerance(dt), what);
      }
    }
    // A non-contiguous input (made contiguous by the op) and an empty one.
    expect_cuda_matches_cpu([&op](const std::vector<Tensor>& in) { return op.fn({in[0].transpose(0, 1)}); },
                            {input_in({9, 33}, 21, op.lo, op.hi)}, parity_tolerance(DType::F32),
                            std::string(op.name) + " transposed");
    expect_cuda_matches_cpu(op.fn, {input_in({0, 4}, 22, op.lo, op.hi)}, parity_tolerance(DType::F32),
                            std::string(op.name) + " empty");
  }
}

TEST(CudaElementwise, ActivationKinksTakeTheCpuDerivatives) {
  KESTREL_REQUIRE_CUDA();
  // Exactly at the kinks of relu, relu6, hardswish, hardsigmoid, clamp, abs.
  Tensor x = Tensor::from_vector({-3.f, -0.3f, 0.f, 0.4f, 3.f, 6.f, -6.f, 1.f}, {8});
  x.set_requires_grad(true);
  for (const UnaryCase& op : kUnaryOps) {
    if (op.lo > 0) continue;  // log, sqrt, pow 2.5 are undefined at some kinks
    expect_cuda_matches_cpu(op.fn, {x}, parity_tolerance(DType::F32), std::string(op.name) + " at the kinks");
  }
}

TEST(CudaElementwise, UnaryOpsInHalfPrecisionComputeInF32) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : kHalfTypes) {
    for (const UnaryCase& op : kUnaryOps) {
      for (int64_t n : {7, 1000003}) {
        const std::string what = std::string(op.name) + " n=" + std::to_string(n) + " " + dtype_name(dt);
        expect_reduced_matches_cpu(op.fn, {input_in({n}, 23, op.lo, op.hi)}, dt, what);
      }
    }
  }
}

TEST(CudaElementwise, InPlaceAddAndScaleMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::F64}) {
    const Tensor self = random_tensor({6, 5, 33}, 30, dt), other = random_tensor({5, 1}, 31, dt);
    Tensor c = self.clone(), g = self.to(Device::cuda());
    add_(c, other, -0.37);
    Tensor go = other.to(Device::cuda());
    add_(g, go, -0.37);
    expect_close(g.cpu(), c, parity_tolerance(dt).atol, parity_tolerance(dt).rtol, "add_ broadcast");
    // Into a strided view, then scaled.
    Tensor cv = c.transpose(0, 2), gv = g.transpose(0, 2);
    add_(cv, random_tensor({33, 5, 6}, 32, dt), 2.0);
    add_(gv, random_tensor({33, 5, 6}, 32, dt).to(Device::cuda()), 2.0);
    mul_(cv, 0.5);
    mul_(gv, 0.5);
    expect_close(g.cpu(), c, parity_tolerance(dt).atol, parity_tolerance(dt).rtol, "add_ into a view, mul_");
  }
  for (DType dt : kHalfTypes) {
    const Tensor self = random_tensor({1000003}, 33, dt), other = random_tensor({1000003}, 34, dt);
    Tensor g = self.to(Device::cuda());
    add_(g, other.to(Device::cuda()), 0.5);
    mul_(g, 3.0);
    const Tensor expected =
        mul_scalar(add(self.to(DType::F32), mul_scalar(other.to(DType::F32), 0.5)), 3.0);
    const Tolerance tol = scaled(parity_tolerance(dt), 2.0);
    expect_close(g.cpu().to(DType::F32), expected, tol.atol, tol.rtol, std::string("add_, mul_ ") + dtype_name(dt));
  }
  Tensor empty = Tensor::zeros({0}, DType::F32, Device::cuda());
  add_(empty, Tensor::zeros({1}, DType::F32, Device::cuda()));
  mul_(empty, 2.0);
}

TEST(CudaElementwise, GradientsAccumulateOnTheDevice) {
  KESTREL_REQUIRE_CUDA();
  // x feeds three branches; leaf gradients are summed with add_.
  expect_cuda_matches_cpu(
      [](const std::vector<Tensor>& in) { return add(mul(in[0], in[0]), mul(sigmoid(in[0]), in[1])); },
      {input({4, 33}, 40), input({33}, 41)}, parity_tolerance(DType::F32), "shared input");
  Tensor c = input({7, 3}, 42), g = c.detach().to(Device::cuda());
  g.set_requires_grad(true);
  for (int step = 0; step < 3; ++step) {
    sum(square(c)).backward();
    sum(square(g)).backward();
  }
  expect_close(g.grad().cpu(), c.grad(), 1e-5, 1e-5, "three backward() calls");
  EXPECT_TRUE(g.grad().device().is_cuda());
}

// ---------------------------------------------------------------- reductions

namespace {

struct ReduceCase {
  Shape shape;
  std::vector<int64_t> dims;  // empty: all
};

const std::vector<ReduceCase> kReduceCases = {
    {{4, 5, 6, 7}, {0}},       {{4, 5, 6, 7}, {3}},    {{4, 5, 6, 7}, {1}},   {{4, 5, 6, 7}, {1, 2}},
    {{4, 5, 6, 7}, {0, 3}},    {{4, 5, 6, 7}, {0, 1}}, {{4, 5, 6, 7}, {}},    {{4, 5, 6, 7}, {-1, -3}},
    {{1}, {0}},                {{7}, {}},              {{33, 1}, {0}},        {{1000003}, {}},
    {{3, 70001}, {1}},         {{3, 70001}, {0}},      {{100003, 3}, {0}},    {{100003, 3}, {1}},
    {{2, 40000, 2}, {1}},      {{9, 33}, {0, 1}},
};

}  // namespace

TEST(CudaReduce, SumMeanVarOverLeadingTrailingMiddleAndAllDims) {
  KESTREL_REQUIRE_CUDA();
  for (const ReduceCase& rc : kReduceCases) {
    for (DType dt : {DType::F32, DType::F64}) {
      for (bool keepdim : {false, true}) {
        const auto dims = rc.dims;
        const std::string what = shape_str(rc.shape) + " dims " + dims_str(dims) + (keepdim ? " keepdim " : " ") +
                                 dtype_name(dt);
        const Tensor x = input(rc.shape, 50, dt);
        expect_cuda_matches_cpu([dims, keepdim](const std::vector<Tensor>& in) { return sum(in[0], dims, keepdim); },
                                {x}, parity_tolerance(dt), "sum " + what);
        expect_cuda_matches_cpu(
            [dims, keepdim](const std::vector<Tensor>& in) { return mean(in[0], dims, keepdim); }, {x},
            parity_tolerance(dt), "mean " + what);
        int64_t count = 1;
        for (int64_t d = 0; d < x.dim(); ++d)
          if (dims.empty() || std::count(dims.begin(), dims.end(), d) || std::count(dims.begin(), dims.end(), d - x.dim()))
            count *= x.size(d);
        const bool unbiased = count > 1;
        expect_cuda_matches_cpu(
            [dims, keepdim, unbiased](const std::vector<Tensor>& in) { return var(in[0], dims, unbiased, keepdim); },
            {x}, parity_tolerance(dt), "var " + what);
      }
    }
  }
}

TEST(CudaReduce, SumsOfStridedInputsAndEmptyDims) {
  KESTREL_REQUIRE_CUDA();
  expect_cuda_matches_cpu([](const std::vector<Tensor>& in) { return sum(in[0].transpose(0, 2), {0}); },
                          {input({6, 5, 33}, 51)}, parity_tolerance(DType::F32), "sum of a transposed view");
  expect_cuda_matches_cpu([](const std::vector<Tensor>& in) { return sum(in[0], {0}); }, {input({0, 5}, 52)},
                          parity_tolerance(DType::F32), "sum over an empty dim is zero");
  expect_cuda_matches_cpu([](const std::vector<Tensor>& in) { return sum(in[0], {1}); }, {input({5, 0}, 53)},
                          parity_tolerance(DType::F32), "sum over an empty trailing dim is zero");
  expect_cuda_matches_cpu([](const std::vector<Tensor>& in) { return sum(in[0], {1}); }, {input({0, 5}, 54)},
                          parity_tolerance(DType::F32), "sum of an empty kept dim");
}

TEST(CudaReduce, SumsInHalfPrecisionAccumulateInF32) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : kHalfTypes) {
    for (const ReduceCase& rc : kReduceCases) {
      const auto dims = rc.dims;
      const std::string what = shape_str(rc.shape) + " dims " + dims_str(dims) + " " + dtype_name(dt);
      expect_reduced_matches_cpu([dims](const std::vector<Tensor>& in) { return sum(in[0], dims); },
                                 {input(rc.shape, 55)}, dt, "sum " + what);
      expect_reduced_matches_cpu([dims](const std::vector<Tensor>& in) { return mean(in[0], dims); },
                                 {input(rc.shape, 56)}, dt, "mean " + what, 4.0);
    }
  }
}

TEST(CudaReduce, SumsAreBitwiseReproducible) {
  KESTREL_REQUIRE_CUDA();
  for (const ReduceCase& rc : kReduceCases) {
    const Tensor x = random_tensor(rc.shape, 57, DType::F32).to(Device::cuda());
    expect_same_bits(sum(x, rc.dims), sum(x, rc.dims), "sum " + shape_str(rc.shape) + " dims " + dims_str(rc.dims));
  }
}

TEST(CudaReduce, MaxAndArgmaxPickTheFirstMaximumLikeTheCpu) {
  KESTREL_REQUIRE_CUDA();
  for (const Shape& s : {Shape{4, 5, 6}, Shape{1, 7, 1}, Shape{33, 1000}, Shape{1000003}, Shape{3, 1}}) {
    for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d) {
      for (DType dt : {DType::F32, DType::F64}) {
        for (bool keepdim : {false, true}) {
          const std::string what = shape_str(s) + " dim " + std::to_string(d) + " " + dtype_name(dt) +
                                   (keepdim ? " keepdim" : "");
          // Few distinct values, so ties are common and the first one must win.
          Tensor x = mul_scalar(random_tensor(s, 60 + d, DType::F64), 3.0).to(DType::I64).to(dt);
          x.set_requires_grad(true);
          expect_cuda_matches_cpu(
              [d, keepdim](const std::vector<Tensor>& in) {
                return std::vector<Tensor>{max(in[0], d, keepdim), argmax(in[0], d, keepdim)};
              },
              {x}, parity_tolerance(dt), "max/argmax " + what);
        }
      }
    }
  }
}

TEST(CudaReduce, MaxInHalfPrecision) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : kHalfTypes) {
    expect_reduced_matches_cpu(
        [](const std::vector<Tensor>& in) {
          return std::vector<Tensor>{max(in[0], 1), argmax(in[0], 1).to(in[0].dtype())};
        },
        {input({9, 33, 5}, 61)}, dt, std::string("max ") + dtype_name(dt), 1.0, false);
  }
}

// ---------------------------------------------------------------- shape ops, dropout

TEST(CudaShapeOps, ConcatSplitAndPad2dMatchTheCpu) {
  KESTREL_REQUIRE_CUDA();
  for (int64_t d : {0, 1, 3}) {
    expect_cuda_matches_cpu(
        [d](const std::vector<Tensor>& in) { return concat({in[0], in[1].transpose(1, 2), in[2]}, d); },
        {input({2, 3, 3, 4}, 70), input({2, 3, 3, 4}, 71), input({2, 3, 3, 4}, 72)},
        parity_tolerance(DType::F32), "concat dim " + std::to_string(d));
  }
  expect_cuda_matches_cpu(
      [](const std::vector<Tensor>& in) { return concat({in[0], in[1].permute({0, 2, 3, 1}), in[2]}, 3); },
      {input({1, 7, 7, 3}, 73), input({1, 5, 7, 7}, 74), input({1, 7, 7, 0}, 75)}, parity_tolerance(DType::F32),
      "concat with a permuted and an empty piece");
  expect_cuda_matches_cpu(
      [](const std::vector<Tensor>& in) {
        std::vector<Tensor> parts = split(in[0], {1, 0, 5, 27}, 1);
        return std::vector<Tensor>{parts[0], parts[2], parts[3]};
      },
      {input({2, 33, 3}, 76)}, parity_tolerance(DType::F32), "split");
  for (DType dt : {DType::F32, DType::F64}) {
    expect_cuda_matches_cpu(
        [](const std::vector<Tensor>& in) { return pad2d(in[0], 1, 2, 0, 3, 0.5); }, {input({2, 7, 5, 3}, 77, dt)},
        parity_tolerance(dt), std::string("pad2d ") + dtype_name(dt));
  }
  expect_cuda_matches_cpu([](const std::vector<Tensor>& in) { return pad2d(in[0], 0, 0, 2, 2); },
                          {input({1, 1, 1, 33}, 78)}, parity_tolerance(DType::F32), "pad2d 1x1");
  for (DType dt : kHalfTypes) {
    expect_reduced_matches_cpu([](const std::vector<Tensor>& in) { return pad2d(in[0], 1, 1, 1, 1, -2.0); },
                               {input({2, 5, 5, 7}, 79)}, dt, std::string("pad2d ") + dtype_name(dt));
    expect_reduced_matches_cpu([](const std::vector<Tensor>& in) { return concat({in[0], in[1]}, 3); },
                               {input({2, 5, 5, 7}, 80), input({2, 5, 5, 1}, 81)}, dt,
                               std::string("concat ") + dtype_name(dt));
  }
}

TEST(CudaDropout, DropoutAndDropPathDropExactlyWhatTheCpuDrops) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::F64}) {
    for (double p : {0.1, 0.5, 1.0}) {
      const std::string what = std::string(dtype_name(dt)) + " p=" + std::to_string(p);
      expect_cuda_matches_cpu(
          [p](const std::vector<Tensor>& in) {
            Generator g(1234);
            return dropout(in[0], p, true, g);
          },
          {input({7, 33, 5}, 90, dt)}, {0.0, 0.0}, "dropout " + what);
      expect_cuda_matches_cpu(
          [p](const std::vector<Tensor>& in) {
            Generator g(99);
            return drop_path(in[0], p, true, g);
          },
          {input({9, 3, 3, 4}, 91, dt)}, {0.0, 0.0}, "drop_path " + what);
    }
  }
  // Eval mode and p = 0 are the identity on the device too.
  Generator g(5);
  const Tensor x = random_tensor({1000003}, 92, DType::F32).to(Device::cuda());
  expect_same_bits(dropout(x, 0.5, false, g), x, "eval dropout");
  expect_same_bits(dropout(x, 0.0, true, g), x, "p = 0 dropout");
  EXPECT_EQ(g.offset(), 0u);
}

TEST(CudaDropout, HalfPrecisionDropoutUsesTheF32Mask) {
  KESTREL_REQUIRE_CUDA();
  for (DType dt : kHalfTypes) {
    Generator a(7), b(7);
    const Tensor x = random_tensor({33, 65}, 93, dt);
    const Tensor got = dropout(x.to(Device::cuda()), 0.3, true, a);
    const Tensor expected = dropout(x.to(DType::F32), 0.3, true, b);
    expect_close(got.cpu().to(DType::F32), expected, parity_tolerance(dt).atol, parity_tolerance(dt).rtol,
                 std::string("dropout ") + dtype_name(dt));
    EXPECT_EQ(a.offset(), b.offset());
  }
}
