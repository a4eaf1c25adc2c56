// concat, split and pad2d: values, views, gradients.
#include <string>
#include <vector>

#include "engine/ops/shape_ops.h"
#include "engine/trace.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::testing::expect_close;
using kestrel::testing::expect_gradcheck;
using kestrel::testing::random_tensor;

TEST(Concat, JoinsAlongAnyDimInOrder) {
  const Tensor a = Tensor::arange(6).reshape({2, 3});
  const Tensor b = add_scalar(Tensor::arange(4), 10.0).reshape({2, 2});
  EXPECT_EQ(concat({a, b}, 1).to_vector(), (std::vector<float>{0, 1, 2, 10, 11, 3, 4, 5, 12, 13}));
  EXPECT_EQ(concat({a, a}, 0).shape(), (Shape{4, 3}));
  EXPECT_EQ(concat({a, a}, -2).to_vector(), (std::vector<float>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5}));
  // NHWC channel concat (DenseNet, Ghost modules), with a non-contiguous and an empty piece.
  const Tensor x = random_tensor({2, 3, 3, 4}, 1, DType::F32);
  const Tensor y = random_tensor({2, 4, 3, 3}, 2, DType::F32).permute({0, 2, 3, 1});
  const Tensor e = Tensor::zeros({2, 3, 3, 0});
  const Tensor c = concat({x, e, y}, 3);
  EXPECT_EQ(c.shape(), (Shape{2, 3, 3, 8}));
  expect_close(c.narrow(3, 0, 4), x, 0.0, 0.0, "first piece");
  expect_close(c.narrow(3, 4, 4), y, 0.0, 0.0, "second piece");
}

TEST(Concat, BackwardMatchesFiniteDifferences) {
  expect_gradcheck([](const std::vector<Tensor>& in) { return concat({in[0], in[1], in[2]}, 3); },
                   {random_tensor({1, 2, 3, 2}, 3).set_requires_grad(), random_tensor({1, 2, 3, 1}, 4),
                    random_tensor({1, 2, 3, 3}, 5).set_requires_grad()});
  expect_gradcheck([](const std::vector<Tensor>& in) { return concat({in[0], in[1]}, 0); },
                   {random_tensor({2, 3}, 6).set_requires_grad(), random_tensor({1, 3}, 7).set_requires_grad()});
}

TEST(Concat, MismatchedShapesRaiseAShapeErrorNamingTheTensor) {
  try {
    concat({Tensor::zeros({2, 3}), Tensor::zeros({3, 3})}, 1);
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("concat: tensor 1 has shape [3,3]"), std::string::npos) << m;
  }
  EXPECT_THROW(concat({}, 0), ValueError);
  EXPECT_THROW(concat({Tensor::zeros({2}), Tensor::zeros({2}, DType::F64)}, 0), DTypeError);
  EXPECT_THROW(concat({Tensor::zeros({2})}, 1), ShapeError);
}

TEST(Split, ReturnsViewsThatShareStorageAndCoverTheInput) {
  const Tensor x = Tensor::arange(24).reshape({2, 3, 4});
  const std::vector<Tensor> parts = split(x, {1, 0, 3}, 2);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].shape(), (Shape{2, 3, 1}));
  EXPECT_EQ(parts[1].shape(), (Shape{2, 3, 0}));
  EXPECT_EQ(parts[2].shape(), (Shape{2, 3, 3}));
  for (const Tensor& p : parts) EXPECT_TRUE(p.shares_storage_with(x));
  expect_close(concat(parts, 2), x, 0.0, 0.0, "split then concat");
  EXPECT_THROW(split(x, {1, 2}, 2), ShapeError);
  EXPECT_THROW(split(x, {5, -1}, 2), ShapeError);
}

TEST(Split, BackwardMatchesFiniteDifferences) {
  expect_gradcheck(
      [](const std::vector<Tensor>& in) {
        const std::vector<Tensor> p = split(in[0], {2, 1, 3}, 3);
        // Use the pieces unequally so each gradient slice differs.
        return concat({mul_scalar(p[2], 3.0), p[0]}, 3);
      },
      {random_tensor({1, 2, 2, 6}, 8).set_requires_grad()});
}

TEST(Pad2d, PadsSpatialDimsWithTheConstant) {
  const Tensor x = Tensor::ones({1, 2, 2, 1});
  const Tensor y = pad2d(x, 1, 0, 0, 2, -1.0);
  EXPECT_EQ(y.shape(), (Shape{1, 3, 4, 1}));
  EXPECT_EQ(y.to_vector(), (std::vector<float>{-1, -1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1}));
  const Tensor z = random_tensor({2, 3, 1, 5}, 9, DType::F32);
  expect_close(pad2d(z, 0, 0, 0, 0), z, 0.0, 0.0, "zero padding is the identity");
  EXPECT_THROW(pad2d(x, -1, 0, 0, 0), ValueError);
  EXPECT_THROW(pad2d(Tensor::zeros({2, 2, 1}), 1, 1, 1, 1), ShapeError);
}

TEST(Pad2d, BackwardMatchesFiniteDifferences) {
  expect_gradcheck([](const std::vector<Tensor>& in) { return pad2d(in[0], 1, 2, 0, 1, 0.5); },
                   {random_tensor({2, 3, 2, 2}, 10).set_requires_grad()});
}

TEST(ShapeOps, TraceRecordsConcatAndPad) {
  TraceRecorder rec;
  const Tensor x = Tensor::zeros({1, 2, 2, 3});
  concat({x, x}, 3);
  pad2d(x, 1, 1, 1, 1);
  ASSERT_EQ(rec.events().size(), 2u);
  EXPECT_EQ(rec.events()[0].op, "concat");
  EXPECT_EQ(rec.events()[0].output_shape, (Shape{1, 2, 2, 6}));
  EXPECT_EQ(rec.events()[1].op, "pad2d");
}
