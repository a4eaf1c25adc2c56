// Class activation maps by Grad-CAM (Selvaraju et al., 2017): the last
// feature map before the global pooling, each channel weighted by the mean
// gradient of the class logit over it, summed and rectified. For a network
// whose head is global pooling then one linear layer this is exactly the
// original CAM (Zhou et al., 2016). Used to compare what differently scaled
// models look at (kestrel cam).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/transforms.h"
#include "engine/nn/module.h"

namespace kestrel::tools {

struct ClassActivationMap {
  int64_t class_index = 0;
  double probability = 0.0;  // softmax probability of that class
  int64_t height = 0, width = 0;  // of the feature map
  std::vector<float> heat;        // height * width, in [0, 1] (max 1 unless all zero)
  std::vector<float> raw;         // before normalization
};

// `input` is one preprocessed image [1, H, W, C]. class_index < 0 takes the
// predicted class. Throws ValueError when the model has no global average
// pooling of a spatial map (nothing to localize) or the class is out of range.
ClassActivationMap grad_cam(nn::Module& model, const Tensor& input, int64_t class_index = -1);

// The map resized to height x width (bilinear) and drawn over `image` (RGB or
// grey, [0,1]) with a blue-to-red colour scale; `alpha` is the map's opacity.
data::FImage overlay_heat(const data::FImage& image, const ClassActivationMap& cam, double alpha = 0.5);

// Tiles in rows and columns with a gap, written as an 8-bit RGB PNG.
void write_image_grid(const std::string& path, const std::vector<std::vector<data::FImage>>& rows, int gap = 4);

}  // namespace kestrel::tools
