// The C interface (tools/capi/kestrel.h) over tools::Predictor. No exception
// crosses it: each entry point catches, keeps the message for
// kestrel_last_error() and returns NULL or -1.
#include "tools/capi/kestrel.h"

#include <algorithm>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "tools/lib/device_select.h"
#include "tools/lib/predictor.h"

struct kestrel_predictor {
  std::unique_ptr<kestrel::tools::Predictor> predictor;
  std::vector<std::string> class_names;
};

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& body) {
  try {
    last_error.clear();
    return body();
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown error";
  }
  return -1;
}

void require(bool ok, const char* what) {
  if (!ok) throw kestrel::ValueError(what);
}

void copy_probabilities(const std::vector<std::vector<float>>& rows, float* out) {
  for (const std::vector<float>& row : rows) out = std::copy(row.begin(), row.end(), out);
}

}  // namespace

extern "C" {

const char* kestrel_last_error(void) { return last_error.c_str(); }

kestrel_predictor* kestrel_predictor_open(const char* checkpoint_path, const char* device) {
  kestrel_predictor* made = nullptr;
  guarded([&] {
    require(checkpoint_path != nullptr, "kestrel_predictor_open: checkpoint path is NULL");
    auto p = std::make_unique<kestrel_predictor>();
    p->predictor = std::make_unique<kestrel::tools::Predictor>(
        checkpoint_path, kestrel::tools::resolve_device(device != nullptr ? device : "cpu"));
    for (int64_t i = 0; i < p->predictor->info().num_classes; ++i)
      p->class_names.push_back(p->predictor->class_name(i));
    made = p.release();
    return 0;
  });
  return made;
}

void kestrel_predictor_close(kestrel_predictor* predictor) { delete predictor; }

const char* kestrel_predictor_model(const kestrel_predictor* predictor) {
  return predictor != nullptr ? predictor->predictor->info().model.c_str() : nullptr;
}

int kestrel_predictor_num_classes(const kestrel_predictor* predictor) {
  return predictor != nullptr ? static_cast<int>(predictor->class_names.size()) : -1;
}

const char* kestrel_predictor_class_name(const kestrel_predictor* predictor, int index) {
  if (predictor == nullptr || index < 0 || index >= static_cast<int>(predictor->class_names.size())) return nullptr;
  return predictor->class_names[static_cast<size_t>(index)].c_str();
}

void kestrel_predictor_input_shape(const kestrel_predictor* predictor, int* height, int* width, int* channels) {
  if (predictor == nullptr) return;
  const kestrel::tools::ModelInfo& info = predictor->predictor->info();
  if (height != nullptr) *height = static_cast<int>(info.height);
  if (width != nullptr) *width = static_cast<int>(info.width);
  if (channels != nullptr) *channels = static_cast<int>(info.in_channels);
}

int kestrel_predictor_probabilities_u8(kestrel_predictor* predictor, const uint8_t* pixels, int count, int height,
                                       int width, int channels, float* probabilities) {
  return guarded([&] {
    require(predictor != nullptr && pixels != nullptr && probabilities != nullptr,
            "kestrel_predictor_probabilities_u8: a pointer argument is NULL");
    require(count >= 1 && height >= 1 && width >= 1, "kestrel_predictor_probabilities_u8: empty images");
    require(channels == 1 || channels == 3 || channels == 4,
            "kestrel_predictor_probabilities_u8: channels must be 1, 3 or 4");
    const size_t each = static_cast<size_t>(height) * static_cast<size_t>(width) * static_cast<size_t>(channels);
    std::vector<kestrel::data::Image> images(static_cast<size_t>(count));
    for (size_t i = 0; i < images.size(); ++i) {
      images[i].h = height;
      images[i].w = width;
      images[i].c = channels;
      images[i].pixels.assign(pixels + i * each, pixels + (i + 1) * each);
    }
    copy_probabilities(predictor->predictor->probabilities(images), probabilities);
    return 0;
  });
}

int kestrel_predictor_probabilities_file(kestrel_predictor* predictor, const char* image_path,
                                         float* probabilities) {
  return guarded([&] {
    require(predictor != nullptr && image_path != nullptr && probabilities != nullptr,
            "kestrel_predictor_probabilities_file: a pointer argument is NULL");
    kestrel::tools::Predictor& p = *predictor->predictor;
    copy_probabilities(p.probabilities({p.load_image(image_path)}), probabilities);
    return 0;
  });
}

int kestrel_predictor_top_k_file(kestrel_predictor* predictor, const char* image_path, int k, int* class_indices,
                                 float* probabilities) {
  return guarded([&] {
    require(predictor != nullptr && image_path != nullptr && class_indices != nullptr && probabilities != nullptr,
            "kestrel_predictor_top_k_file: a pointer argument is NULL");
    require(k >= 1, "kestrel_predictor_top_k_file: k must be at least 1");
    const kestrel::tools::TopK top = predictor->predictor->predict(std::string(image_path), k);
    for (size_t i = 0; i < top.size(); ++i) {
      class_indices[i] = static_cast<int>(top[i].class_index);
      probabilities[i] = static_cast<float>(top[i].probability);
    }
    return static_cast<int>(top.size());
  });
}

}  // extern "C"
