// coord_gate (engine/ops/attention.h): the fused CPU gate against the two
// broadcast multiplies it replaces, which must agree bit for bit, forward and
// backward, including shapes that leave a partial channel block.
#include <gtest/gtest.h>

#include "engine/ops/attention.h"
#include "tests/test_util.h"

namespace kestrel {
namespace {

using testing::expect_close;
using testing::random_tensor;

struct GateCase {
  int64_t n, h, w, c;
};

class CoordGate : public ::testing::TestWithParam<DType> {};

// Runs f on fresh leaves (those in `grad` require a gradient) and returns the
// output followed by each input's gradient under a random upstream gradient.
std::vector<Tensor> forward_backward(const std::function<Tensor(const Tensor&, const Tensor&, const Tensor&)>& f,
                                     const GateCase& s, DType dtype, const std::vector<bool>& grad) {
  std::vector<Tensor> in = {random_tensor({s.n, s.h, s.w, s.c}, 1, dtype),
                            sigmoid(random_tensor({s.n, s.h, 1, s.c}, 2, dtype)),
                            sigmoid(random_tensor({s.n, 1, s.w, s.c}, 3, dtype))};
  for (size_t i = 0; i < 3; ++i) in[i].set_requires_grad(grad[i]);
  Tensor y = f(in[0], in[1], in[2]);
  std::vector<Tensor> out = {y.detach()};
  if (grad[0] || grad[1] || grad[2]) sum(mul(y, random_tensor(y.shape(), 4, dtype))).backward();
  for (const Tensor& t : in) out.push_back(t.grad());
  return out;
}

TEST_P(CoordGate, EqualsTheTwoBroadcastMultipliesBitForBit) {
  const auto fused = [](const Tensor& x, const Tensor& h, const Tensor& w) { return coord_gate(x, h, w); };
  const auto composed = [](const Tensor& x, const Tensor& h, const Tensor& w) { return mul(mul(x, h), w); };
  for (const GateCase& s : {GateCase{2, 5, 7, 70}, GateCase{1, 1, 1, 3}, GateCase{3, 33, 2, 130},
                            GateCase{2, 8, 8, 64}, GateCase{1, 4, 9, 1}, GateCase{4, 16, 16, 96}}) {
    for (const std::vector<bool>& grad : {std::vector<bool>{true, true, true}, {true, false, false},
                                          {false, true, false}, {false, false, true}, {false, false, false}}) {
      const std::string what = shape_str({s.n, s.h, s.w, s.c}) + " grads " + std::to_string(grad[0]) +
                               std::to_string(grad[1]) + std::to_string(grad[2]);
      const std::vector<Tensor> got = forward_backward(fused, s, GetParam(), grad);
      const std::vector<Tensor> want = forward_backward(composed, s, GetParam(), grad);
      expect_close(got[0], want[0], 0.0, 0.0, what + " y");
      for (size_t i = 0; i < 3; ++i) {
        ASSERT_EQ(got[i + 1].defined(), grad[i]) << what << " input " << i;
        if (grad[i]) expect_close(got[i + 1], want[i + 1], 0.0, 0.0, what + " grad " + std::to_string(i));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CoordGate, ::testing::Values(DType::F32, DType::F64));

TEST(CoordGateErrors, GatesOfTheWrongShapeAreNamed) {
  const Tensor x = Tensor::zeros({2, 4, 5, 3});
  try {
    coord_gate(x, Tensor::zeros({2, 4, 1, 3}), Tensor::zeros({2, 1, 4, 3}));
    FAIL() << "a [2,1,4,3] gate_w for a width of 5 was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("coord_gate: gates must be [N,H,1,C] and [N,1,W,C]"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(coord_gate(x, Tensor::zeros({2, 4, 1, 3}, DType::F64), Tensor::zeros({2, 1, 5, 3})), DTypeError);
}

}  // namespace
}  // namespace kestrel
