// A tiny CNN built from engine modules overfits one batch: the whole stack
// (conv, batch norm, activations, pooling, linear, loss, autograd, SGD) works together.
#include "engine/nn/layers.h"
#include "engine/ops/loss.h"
#include "engine/optim/sgd.h"
#include "test_util.h"

using namespace kestrel;

TEST(TinyCnn, OverfitsOneBatchToNearZeroLoss) {
  manual_seed(3);
  auto model = std::make_shared<nn::Sequential>(std::vector<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(3, 8, 3, nn::Conv2dOptions{1, 1, 1, 1, false}),
      std::make_shared<nn::BatchNorm2d>(8), std::make_shared<nn::Act>(Activation::ReLU),
      std::make_shared<nn::Conv2d>(8, 8, 3, nn::Conv2dOptions{1, 1, 1, 8, false}),  // depthwise
      std::make_shared<nn::Conv2d>(8, 16, 1, nn::Conv2dOptions{2, 0, 1, 1, false}),
      std::make_shared<nn::BatchNorm2d>(16), std::make_shared<nn::Act>(Activation::HardSwish),
      std::make_shared<nn::GlobalAvgPool>(), std::make_shared<nn::Linear>(16, 4)});
  Generator g(11);
  Tensor x = Tensor::randn({8, 8, 8, 3}, g);
  Tensor y = Tensor::from_vector_i64({0, 1, 2, 3, 3, 2, 1, 0}, {8});
  optim::SGD opt(model->parameters(), optim::SGDOptions{0.1, 0.9, 0.0, 0.0, false});
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy((*model)(x), y);
    loss.backward();
    opt.step();
    last = loss.item();
    if (step == 0) first = last;
  }
  EXPECT_GT(first, 1.0);
  EXPECT_LT(last, 0.02) << "loss went from " << first << " to " << last;
}
