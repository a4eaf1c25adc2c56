// A model's inference forward pass replayed as a CUDA graph (engine/cuda/graph.h):
// captured on the first call for each input shape, then one graph launch per
// call instead of one launch per kernel. For timing and serving fixed-shape
// batches; inference only (no autograd), the model in eval mode. On the CPU it
// is the plain forward pass. Written and emulator-tested; untested on a GPU at
// the time of writing.
//
//   nn::GraphedForward fast(model, Device::cuda(0));
//   Tensor logits = fast(images);  // a new tensor each call, like model(images)
#pragma once
#include <memory>

#include "engine/device.h"
#include "engine/nn/module.h"
#include "engine/tensor.h"

namespace kestrel::nn {

class GraphedForward {
 public:
  // The model must stay alive, with its weights where they are, while graphs
  // replay: they read the weights' memory as captured.
  GraphedForward(Module& model, Device device);
  ~GraphedForward();
  GraphedForward(const GraphedForward&) = delete;
  GraphedForward& operator=(const GraphedForward&) = delete;

  // model(input) for an input on the device; the output is the caller's own.
  Tensor operator()(const Tensor& input);
  // Graphs captured so far (one per input shape and dtype; at most kMaxGraphs kept).
  int captures() const;
  static constexpr int kMaxGraphs = 8;

 private:
  struct Graphs;
  Module& model_;
  Device device_;
  std::unique_ptr<Graphs> graphs_;  // null on the CPU
};

}  // namespace kestrel::nn
