#include "tools/lib/cam.h"

#include <stb_image_write.h>

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/loss.h"
#include "engine/ops/reduce.h"
#include "engine/trace.h"

namespace kestrel::tools {

namespace {

// The input of the last global average pooling of a map larger than 1x1.
Tensor pooled_feature_map(const std::vector<TraceEvent>& events) {
  for (auto it = events.rbegin(); it != events.rend(); ++it) {
    const bool global = it->op == "global_avg_pool" ||
                        (it->op == "adaptive_avg_pool2d" && it->output.size(1) == 1 && it->output.size(2) == 1);
    if (!global) continue;
    const Tensor& a = it->inputs[0];
    if (a.dim() == 4 && a.size(1) * a.size(2) > 1) return a;
  }
  return Tensor();
}

// Blue (0) -> cyan -> green -> yellow -> red (1).
void heat_colour(float v, float rgb[3]) {
  v = std::clamp(v, 0.0f, 1.0f);
  rgb[0] = std::clamp(4.0f * v - 2.0f, 0.0f, 1.0f);
  rgb[1] = v < 0.25f ? 4.0f * v : (v > 0.75f ? 4.0f - 4.0f * v : 1.0f);
  rgb[2] = std::clamp(2.0f - 4.0f * v, 0.0f, 1.0f);
}

}  // namespace

ClassActivationMap grad_cam(nn::Module& model, const Tensor& input, int64_t class_index) {
  KCHECK(input.dim() == 4 && input.size(0) == 1, ShapeError, "cam: the input must be one image [1, H, W, C], got ",
         shape_str(input.shape()));
  const bool was_training = model.is_training();
  model.eval();
  std::vector<TraceEvent> events;
  Tensor logits;
  {
    TraceRecorder trace(/*keep_tensors=*/true);
    logits = model(input);
    events = trace.events();
  }
  const Tensor a = pooled_feature_map(events);
  events.clear();  // frees every other traced activation
  if (!a.defined()) {
    model.train(was_training);
    throw ValueError("cam: the model has no global average pooling of a spatial feature map to localize with");
  }
  const int64_t classes = logits.size(1);
  const std::vector<float> probs = softmax(logits.detach(), 1).to_vector();
  if (class_index < 0) class_index = std::max_element(probs.begin(), probs.end()) - probs.begin();
  KCHECK(class_index < classes, ValueError, "cam: class ", class_index, " is out of range (the model has ", classes,
         " classes)");

  Tensor grad;
  on_gradient(a, [&grad](const Tensor& g) { grad = g.detach().contiguous(); });
  sum(logits.narrow(1, class_index, 1)).backward();
  model.zero_grad();
  model.train(was_training);
  KCHECK(grad.defined(), ValueError, "cam: the class logit does not depend on the pooled feature map");

  ClassActivationMap cam;
  cam.class_index = class_index;
  cam.probability = probs[static_cast<size_t>(class_index)];
  cam.height = a.size(1);
  cam.width = a.size(2);
  const int64_t hw = cam.height * cam.width, c = a.size(3);
  const std::vector<float> av = a.detach().contiguous().to_vector(), gv = grad.to_vector();
  std::vector<double> weight(static_cast<size_t>(c), 0.0);  // mean gradient per channel
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t k = 0; k < c; ++k) weight[k] += gv[p * c + k];
  for (double& w : weight) w /= static_cast<double>(hw);
  cam.raw.resize(static_cast<size_t>(hw));
  for (int64_t p = 0; p < hw; ++p) {
    double s = 0.0;
    for (int64_t k = 0; k < c; ++k) s += weight[k] * av[p * c + k];
    cam.raw[p] = static_cast<float>(std::max(0.0, s));
  }
  const float top = *std::max_element(cam.raw.begin(), cam.raw.end());
  cam.heat = cam.raw;
  if (top > 0)
    for (float& v : cam.heat) v /= top;
  return cam;
}

data::FImage overlay_heat(const data::FImage& image, const ClassActivationMap& cam, double alpha) {
  data::FImage heat(static_cast<int>(cam.height), static_cast<int>(cam.width), 1);
  heat.data = cam.heat;
  heat = data::resize_bilinear(heat, image.h, image.w);
  data::FImage out(image.h, image.w, 3);
  for (int y = 0; y < image.h; ++y)
    for (int x = 0; x < image.w; ++x) {
      float rgb[3];
      heat_colour(heat.at(y, x, 0), rgb);
      for (int ch = 0; ch < 3; ++ch) {
        const float base = image.at(y, x, image.c >= 3 ? ch : 0);
        out.at(y, x, ch) = static_cast<float>((1.0 - alpha) * base + alpha * rgb[ch]);
      }
    }
  return out;
}

void write_image_grid(const std::string& path, const std::vector<std::vector<data::FImage>>& rows, int gap) {
  KCHECK(!rows.empty() && !rows[0].empty(), ValueError, "cam: nothing to draw");
  int cell_h = 0, cell_w = 0;
  size_t cols = 0;
  for (const auto& r : rows) {
    cols = std::max(cols, r.size());
    for (const data::FImage& im : r) cell_h = std::max(cell_h, im.h), cell_w = std::max(cell_w, im.w);
  }
  const int w = static_cast<int>(cols) * (cell_w + gap) + gap, h = static_cast<int>(rows.size()) * (cell_h + gap) + gap;
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3, 255);
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const data::FImage& im = rows[r][c];
      const int oy = gap + static_cast<int>(r) * (cell_h + gap), ox = gap + static_cast<int>(c) * (cell_w + gap);
      for (int y = 0; y < im.h; ++y)
        for (int x = 0; x < im.w; ++x)
          for (int ch = 0; ch < 3; ++ch) {
            const float v = im.at(y, x, im.c >= 3 ? ch : 0);
            px[(static_cast<size_t>(oy + y) * w + ox + x) * 3 + ch] =
                static_cast<uint8_t>(std::lround(std::clamp(v, 0.0f, 1.0f) * 255.0f));
          }
    }
  KCHECK(stbi_write_png(path.c_str(), w, h, 3, px.data(), w * 3) != 0, IOError, "cam: cannot write ", path);
}

}  // namespace kestrel::tools
