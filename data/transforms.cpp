#include "data/transforms.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace kestrel::data {

namespace {

constexpr double kPi = 3.14159265358979323846;

float clamp01(float v) { return std::min(1.0f, std::max(0.0f, v)); }

int reflect_index(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

float grey(const FImage& img, size_t p) {
  const float* px = img.data.data() + p * img.c;
  return img.c >= 3 ? 0.299f * px[0] + 0.587f * px[1] + 0.114f * px[2] : px[0];
}

double uniform(Generator& gen, double lo, double hi) { return lo + (hi - lo) * gen.uniform(); }

void rgb_to_hsv(float r, float g, float b, float& h, float& s, float& v) {
  const float mx = std::max({r, g, b}), mn = std::min({r, g, b}), d = mx - mn;
  v = mx;
  s = mx > 0.0f ? d / mx : 0.0f;
  if (d <= 0.0f) {
    h = 0.0f;
    return;
  }
  if (mx == r)
    h = (g - b) / d;
  else if (mx == g)
    h = 2.0f + (b - r) / d;
  else
    h = 4.0f + (r - g) / d;
  h /= 6.0f;
  if (h < 0.0f) h += 1.0f;
}

void hsv_to_rgb(float h, float s, float v, float& r, float& g, float& b) {
  h = h - std::floor(h);
  const float hh = h * 6.0f;
  const int i = std::min(5, static_cast<int>(hh));
  const float f = hh - static_cast<float>(i);
  const float p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  switch (i) {
    case 0: r = v; g = t; b = p; break;
    case 1: r = q; g = v; b = p; break;
    case 2: r = p; g = v; b = t; break;
    case 3: r = p; g = q; b = v; break;
    case 4: r = t; g = p; b = v; break;
    default: r = v; g = p; b = q; break;
  }
}

// Applies f(h, s, v) to every pixel of a 3-channel image.
template <typename F>
void map_hsv(FImage& img, F f) {
  KCHECK(img.c == 3, ValueError, "HSV transforms need 3 channels, got ", img.c);
  for (size_t p = 0; p < static_cast<size_t>(img.h) * img.w; ++p) {
    float* px = img.data.data() + p * 3;
    float h, s, v;
    rgb_to_hsv(px[0], px[1], px[2], h, s, v);
    f(h, s, v);
    hsv_to_rgb(h, clamp01(s), clamp01(v), px[0], px[1], px[2]);
  }
}

}  // namespace

bool coin(Generator& gen, double p) { return p >= 1.0 || (p > 0.0 && gen.uniform() < p); }

FImage to_float(const Image& img, float scale) {
  FImage out(img.h, img.w, img.c);
  for (size_t i = 0; i < img.pixels.size(); ++i) out.data[i] = static_cast<float>(img.pixels[i]) * scale;
  return out;
}

// ------------------------------------------------------------------ geometry

FImage hflip(const FImage& img) {
  FImage out(img.h, img.w, img.c);
  for (int y = 0; y < img.h; ++y)
    for (int x = 0; x < img.w; ++x)
      for (int ch = 0; ch < img.c; ++ch) out.at(y, x, ch) = img.at(y, img.w - 1 - x, ch);
  return out;
}

FImage vflip(const FImage& img) {
  FImage out(img.h, img.w, img.c);
  const size_t row = static_cast<size_t>(img.w) * img.c;
  for (int y = 0; y < img.h; ++y)
    std::copy_n(img.data.data() + (img.h - 1 - y) * row, row, out.data.data() + y * row);
  return out;
}

FImage pad_crop(const FImage& img, int top, int left, int out_h, int out_w, int pad, PadMode mode, float fill) {
  KCHECK(out_h > 0 && out_w > 0 && pad >= 0, ValueError, "pad_crop: bad size ", out_h, "x", out_w, " pad ", pad);
  FImage out(out_h, out_w, img.c, fill);
  for (int y = 0; y < out_h; ++y) {
    int sy = top + y - pad;
    for (int x = 0; x < out_w; ++x) {
      int sx = left + x - pad;
      int yy = sy, xx = sx;
      if (mode == PadMode::Reflect) {
        yy = reflect_index(sy, img.h);
        xx = reflect_index(sx, img.w);
      } else if (mode == PadMode::Edge) {
        yy = std::min(img.h - 1, std::max(0, sy));
        xx = std::min(img.w - 1, std::max(0, sx));
      } else if (sy < 0 || sy >= img.h || sx < 0 || sx >= img.w) {
        continue;
      }
      for (int ch = 0; ch < img.c; ++ch) out.at(y, x, ch) = img.at(yy, xx, ch);
    }
  }
  return out;
}

FImage resize_bilinear(const FImage& img, int out_h, int out_w) {
  KCHECK(out_h > 0 && out_w > 0, ValueError, "resize: bad size ", out_h, "x", out_w);
  FImage out(out_h, out_w, img.c);
  const double sy = static_cast<double>(img.h) / out_h, sx = static_cast<double>(img.w) / out_w;
  for (int y = 0; y < out_h; ++y) {
    const double fy = std::max(0.0, (y + 0.5) * sy - 0.5);
    const int y0 = std::min(img.h - 1, static_cast<int>(fy)), y1 = std::min(img.h - 1, y0 + 1);
    const float wy = static_cast<float>(fy - y0);
    for (int x = 0; x < out_w; ++x) {
      const double fx = std::max(0.0, (x + 0.5) * sx - 0.5);
      const int x0 = std::min(img.w - 1, static_cast<int>(fx)), x1 = std::min(img.w - 1, x0 + 1);
      const float wx = static_cast<float>(fx - x0);
      for (int ch = 0; ch < img.c; ++ch) {
        const float top = img.at(y0, x0, ch) * (1 - wx) + img.at(y0, x1, ch) * wx;
        const float bot = img.at(y1, x0, ch) * (1 - wx) + img.at(y1, x1, ch) * wx;
        out.at(y, x, ch) = top * (1 - wy) + bot * wy;
      }
    }
  }
  return out;
}

FImage warp_affine(const FImage& img, const std::array<double, 4>& A, double tx, double ty, float fill) {
  FImage out(img.h, img.w, img.c);
  const double cx = (img.w - 1) * 0.5, cy = (img.h - 1) * 0.5;
  auto sample = [&](int y, int x, int ch) {
    return (y < 0 || y >= img.h || x < 0 || x >= img.w) ? fill : img.at(y, x, ch);
  };
  for (int y = 0; y < img.h; ++y)
    for (int x = 0; x < img.w; ++x) {
      const double dx = x - cx, dy = y - cy;
      double sx = cx + A[0] * dx + A[1] * dy + tx, sy = cy + A[2] * dx + A[3] * dy + ty;
      // Snap near-integers so exact rotations and shifts copy pixels exactly.
      if (std::abs(sx - std::round(sx)) < 1e-6) sx = std::round(sx);
      if (std::abs(sy - std::round(sy)) < 1e-6) sy = std::round(sy);
      const int x0 = static_cast<int>(std::floor(sx)), y0 = static_cast<int>(std::floor(sy));
      const float wx = static_cast<float>(sx - x0), wy = static_cast<float>(sy - y0);
      for (int ch = 0; ch < img.c; ++ch) {
        float v = sample(y0, x0, ch) * (1 - wx) * (1 - wy);
        if (wx > 0) v += sample(y0, x0 + 1, ch) * wx * (1 - wy);
        if (wy > 0) v += sample(y0 + 1, x0, ch) * (1 - wx) * wy;
        if (wx > 0 && wy > 0) v += sample(y0 + 1, x0 + 1, ch) * wx * wy;
        out.at(y, x, ch) = v;
      }
    }
  return out;
}

FImage shift_scale_rotate(const FImage& img, double dx, double dy, double scale, double degrees, float fill) {
  KCHECK(scale > 0, ValueError, "shift_scale_rotate: scale must be > 0, got ", scale);
  // Forward map of an offset d from the centre: d' = scale * R d + t, R
  // counter-clockwise on screen. Inverse: d = R^-1 (d' - t) / scale.
  const double a = degrees * kPi / 180.0, c = std::cos(a) / scale, s = std::sin(a) / scale;
  const std::array<double, 4> inv = {c, -s, s, c};
  return warp_affine(img, inv, -(inv[0] * dx + inv[1] * dy), -(inv[2] * dx + inv[3] * dy), fill);
}

FImage rotate(const FImage& img, double degrees, float fill) { return shift_scale_rotate(img, 0, 0, 1, degrees, fill); }

FImage shear(const FImage& img, double shear_x, double shear_y, float fill) {
  return warp_affine(img, {1.0, shear_x, shear_y, 1.0}, 0.0, 0.0, fill);
}

FImage translate(const FImage& img, double dx, double dy, float fill) {
  return warp_affine(img, {1.0, 0.0, 0.0, 1.0}, -dx, -dy, fill);
}

// ------------------------------------------------------------------ colour

void adjust_brightness(FImage& img, float factor) {
  for (float& v : img.data) v = clamp01(v * factor);
}

void adjust_contrast(FImage& img, float factor) {
  const size_t n = static_cast<size_t>(img.h) * img.w;
  double mean = 0;
  for (size_t p = 0; p < n; ++p) mean += grey(img, p);
  mean /= std::max<size_t>(n, 1);
  const auto m = static_cast<float>(mean);
  for (float& v : img.data) v = clamp01(m + factor * (v - m));
}

void adjust_saturation(FImage& img, float factor) {
  if (img.c < 3) return;
  for (size_t p = 0; p < static_cast<size_t>(img.h) * img.w; ++p) {
    const float g = grey(img, p);
    for (int ch = 0; ch < 3; ++ch) {
      float& v = img.data[p * img.c + ch];
      v = clamp01(g + factor * (v - g));
    }
  }
}

void adjust_hue(FImage& img, float shift) {
  if (img.c < 3 || shift == 0.0f) return;
  map_hsv(img, [shift](float& h, float&, float&) { h += shift; });
}

void brightness_contrast(FImage& img, float alpha, float beta) {
  for (float& v : img.data) v = clamp01(alpha * v + beta);
}

void shift_hsv(FImage& img, float dh_degrees, float ds, float dv) {
  if (img.c < 3) {
    for (float& v : img.data) v = clamp01(v + dv);
    return;
  }
  map_hsv(img, [&](float& h, float& s, float& v) {
    h += dh_degrees / 360.0f;
    s += ds;
    v += dv;
  });
}

void fill_rect(FImage& img, int top, int left, int h, int w, float fill) {
  const int y0 = std::max(0, top), y1 = std::min(img.h, top + h);
  const int x0 = std::max(0, left), x1 = std::min(img.w, left + w);
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x)
      for (int ch = 0; ch < img.c; ++ch) img.at(y, x, ch) = fill;
}

void normalize(FImage& img, const std::vector<float>& mean, const std::vector<float>& std) {
  KCHECK(mean.size() == std.size() && (mean.size() == 1 || static_cast<int>(mean.size()) == img.c), ValueError,
         "normalize: mean and std need 1 or ", img.c, " values (the image's channels), got ", mean.size(), " and ",
         std.size());
  for (size_t p = 0; p < static_cast<size_t>(img.h) * img.w; ++p)
    for (int ch = 0; ch < img.c; ++ch) {
      const size_t k = mean.size() == 1 ? 0 : static_cast<size_t>(ch);
      float& v = img.data[p * img.c + ch];
      v = (v - mean[k]) / std[k];
    }
}

void solarize(FImage& img, float threshold) {
  for (float& v : img.data)
    if (v >= threshold) v = 1.0f - v;
}

void posterize(FImage& img, int bits) {
  bits = std::min(8, std::max(0, bits));
  const int mask = (0xFF << (8 - bits)) & 0xFF;
  for (float& v : img.data) {
    const int q = static_cast<int>(std::lround(clamp01(v) * 255.0f));
    v = static_cast<float>(q & mask) / 255.0f;
  }
}

void equalize(FImage& img) {
  const size_t n = static_cast<size_t>(img.h) * img.w;
  for (int ch = 0; ch < img.c; ++ch) {
    std::vector<int64_t> hist(256, 0);
    std::vector<int> level(n);
    for (size_t p = 0; p < n; ++p) {
      level[p] = static_cast<int>(std::lround(clamp01(img.data[p * img.c + ch]) * 255.0f));
      ++hist[level[p]];
    }
    // Spread the cumulative histogram over 0..255, leaving out the topmost
    // occupied level so a two-level image maps to 0 and 255.
    int64_t last = 0;
    for (int i = 255; i >= 0; --i)
      if (hist[i] > 0) {
        last = hist[i];
        break;
      }
    const int64_t step = (static_cast<int64_t>(n) - last) / 255;
    if (step == 0) continue;
    std::vector<float> lut(256);
    int64_t cum = step / 2;
    for (int i = 0; i < 256; ++i) {
      lut[i] = static_cast<float>(std::min<int64_t>(255, cum / step)) / 255.0f;
      cum += hist[i];
    }
    for (size_t p = 0; p < n; ++p) img.data[p * img.c + ch] = lut[level[p]];
  }
}

void autocontrast(FImage& img) {
  const size_t n = static_cast<size_t>(img.h) * img.w;
  for (int ch = 0; ch < img.c; ++ch) {
    float lo = 1e30f, hi = -1e30f;
    for (size_t p = 0; p < n; ++p) {
      lo = std::min(lo, img.data[p * img.c + ch]);
      hi = std::max(hi, img.data[p * img.c + ch]);
    }
    if (hi <= lo) continue;
    for (size_t p = 0; p < n; ++p) {
      float& v = img.data[p * img.c + ch];
      v = (v - lo) / (hi - lo);
    }
  }
}

void adjust_sharpness(FImage& img, float factor) {
  if (img.h < 3 || img.w < 3) return;
  // The smoothed image: kernel [1 1 1; 1 5 1; 1 1 1] / 13 inside, border kept.
  FImage smooth = img;
  for (int y = 1; y < img.h - 1; ++y)
    for (int x = 1; x < img.w - 1; ++x)
      for (int ch = 0; ch < img.c; ++ch) {
        float s = 4.0f * img.at(y, x, ch);
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) s += img.at(y + dy, x + dx, ch);
        smooth.at(y, x, ch) = s / 13.0f;
      }
  for (size_t i = 0; i < img.data.size(); ++i) img.data[i] = clamp01(smooth.data[i] + factor * (img.data[i] - smooth.data[i]));
}

void invert(FImage& img) {
  for (float& v : img.data) v = 1.0f - v;
}

// ------------------------------------------------------------------ random transforms

Transform compose(std::vector<Transform> transforms) {
  return [ts = std::move(transforms)](FImage& img, Generator& gen) {
    for (const Transform& t : ts)
      if (t) t(img, gen);
  };
}

Transform random_crop(int out_h, int out_w, int padding, PadMode mode) {
  KCHECK(out_h > 0 && out_w > 0 && padding >= 0, ValueError, "random_crop: bad size ", out_h, "x", out_w,
         " padding ", padding);
  return [=](FImage& img, Generator& gen) {
    const int span_h = img.h + 2 * padding - out_h, span_w = img.w + 2 * padding - out_w;
    KCHECK(span_h >= 0 && span_w >= 0, ValueError, "random_crop: ", out_h, "x", out_w, " crop of a ", img.h, "x",
           img.w, " image padded by ", padding);
    const int top = static_cast<int>(gen.randint(0, span_h + 1));
    const int left = static_cast<int>(gen.randint(0, span_w + 1));
    img = pad_crop(img, top, left, out_h, out_w, padding, mode);
  };
}

Transform random_hflip(double p) {
  return [=](FImage& img, Generator& gen) {
    if (coin(gen, p)) img = hflip(img);
  };
}

Transform random_vflip(double p) {
  return [=](FImage& img, Generator& gen) {
    if (coin(gen, p)) img = vflip(img);
  };
}

Transform random_rotation(double max_degrees, double p, float fill) {
  return [=](FImage& img, Generator& gen) {
    if (!coin(gen, p)) return;
    img = rotate(img, uniform(gen, -max_degrees, max_degrees), fill);
  };
}

Transform color_jitter(float brightness, float contrast, float saturation, float hue) {
  KCHECK(brightness >= 0 && contrast >= 0 && saturation >= 0 && hue >= 0 && hue <= 0.5f, ValueError,
         "color_jitter: amounts must be >= 0 and hue <= 0.5");
  return [=](FImage& img, Generator& gen) {
    auto factor = [&](float x) { return static_cast<float>(uniform(gen, std::max(0.0f, 1.0f - x), 1.0f + x)); };
    std::array<int, 4> order = {0, 1, 2, 3};
    for (int i = 3; i > 0; --i) std::swap(order[i], order[gen.randint(0, i + 1)]);
    for (int op : order) {
      if (op == 0 && brightness > 0) adjust_brightness(img, factor(brightness));
      if (op == 1 && contrast > 0) adjust_contrast(img, factor(contrast));
      if (op == 2 && saturation > 0) adjust_saturation(img, factor(saturation));
      if (op == 3 && hue > 0) adjust_hue(img, static_cast<float>(uniform(gen, -hue, hue)));
    }
  };
}

Transform random_shift_scale_rotate(double shift_limit, double scale_limit, double rotate_limit, double p, float fill) {
  return [=](FImage& img, Generator& gen) {
    if (!coin(gen, p)) return;
    const double dx = uniform(gen, -shift_limit, shift_limit) * img.w;
    const double dy = uniform(gen, -shift_limit, shift_limit) * img.h;
    const double scale = uniform(gen, 1.0 - scale_limit, 1.0 + scale_limit);
    const double angle = uniform(gen, -rotate_limit, rotate_limit);
    img = shift_scale_rotate(img, dx, dy, scale, angle, fill);
  };
}

Transform random_brightness_contrast(double brightness_limit, double contrast_limit, double p) {
  return [=](FImage& img, Generator& gen) {
    if (!coin(gen, p)) return;
    const auto alpha = static_cast<float>(1.0 + uniform(gen, -contrast_limit, contrast_limit));
    const auto beta = static_cast<float>(uniform(gen, -brightness_limit, brightness_limit));
    brightness_contrast(img, alpha, beta);
  };
}

Transform random_hsv_shift(double hue_limit, double sat_limit, double val_limit, double p) {
  return [=](FImage& img, Generator& gen) {
    if (!coin(gen, p)) return;
    const auto dh = static_cast<float>(uniform(gen, -hue_limit, hue_limit));
    const auto ds = static_cast<float>(uniform(gen, -sat_limit, sat_limit));
    const auto dv = static_cast<float>(uniform(gen, -val_limit, val_limit));
    shift_hsv(img, dh, ds, dv);
  };
}

Transform coarse_dropout(int max_holes, int max_h, int max_w, double p, int min_holes, float fill) {
  KCHECK(max_holes >= min_holes && min_holes >= 0 && max_h > 0 && max_w > 0, ValueError,
         "coarse_dropout: need 0 <= min_holes <= max_holes and positive hole sizes");
  return [=](FImage& img, Generator& gen) {
    if (!coin(gen, p)) return;
    const auto holes = static_cast<int>(gen.randint(min_holes, max_holes + 1));
    for (int k = 0; k < holes; ++k) {
      const int hh = static_cast<int>(gen.randint(1, std::min(max_h, img.h) + 1));
      const int ww = static_cast<int>(gen.randint(1, std::min(max_w, img.w) + 1));
      const int top = static_cast<int>(gen.randint(0, img.h - hh + 1));
      const int left = static_cast<int>(gen.randint(0, img.w - ww + 1));
      fill_rect(img, top, left, hh, ww, fill);
    }
  };
}

Transform cutout(int size, double p, float fill) {
  KCHECK(size > 0, ValueError, "cutout: size must be > 0, got ", size);
  return [=](FImage& img, Generator& gen) {
    if (!coin(gen, p)) return;
    const int cy = static_cast<int>(gen.randint(0, img.h)), cx = static_cast<int>(gen.randint(0, img.w));
    fill_rect(img, cy - size / 2, cx - size / 2, size, size, fill);
  };
}

Transform random_erasing(double p, double min_area, double max_area, double min_aspect) {
  KCHECK(p >= 0.0 && p <= 1.0, ValueError, "random_erasing: p must be in [0, 1], got ", p);
  KCHECK(min_area > 0.0 && min_area <= max_area && max_area < 1.0, ValueError,
         "random_erasing: need 0 < min_area <= max_area < 1, got ", min_area, " and ", max_area);
  KCHECK(min_aspect > 0.0 && min_aspect <= 1.0, ValueError, "random_erasing: min_aspect must be in (0, 1], got ",
         min_aspect);
  return [=](FImage& img, Generator& gen) {
    if (!coin(gen, p)) return;
    const double area = static_cast<double>(img.h) * img.w, log_aspect = std::log(min_aspect);
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double target = area * (min_area + (max_area - min_area) * gen.uniform());
      const double aspect = std::exp(log_aspect - 2.0 * log_aspect * gen.uniform());  // in [min, 1/min]
      const int h = static_cast<int>(std::lround(std::sqrt(target * aspect)));
      const int w = static_cast<int>(std::lround(std::sqrt(target / aspect)));
      if (h < 1 || w < 1 || h >= img.h || w >= img.w) continue;
      const int top = static_cast<int>(gen.randint(0, img.h - h + 1));
      const int left = static_cast<int>(gen.randint(0, img.w - w + 1));
      for (int y = top; y < top + h; ++y)
        for (int x = left; x < left + w; ++x)
          for (int ch = 0; ch < img.c; ++ch) img.at(y, x, ch) = static_cast<float>(gen.normal());
      return;
    }
  };
}

FImage resize_image(const FImage& img, int height, int width) {
  KCHECK(height > 0 && width > 0, ValueError, "resize: target size ", height, "x", width, " is not positive");
  if (img.h == height && img.w == width) return img;
  const int f = std::min(img.h / height, img.w / width);
  if (f < 2) return resize_bilinear(img, height, width);
  // Box-average f x f blocks (the remainder rows/columns are dropped), then finish bilinearly.
  FImage small(img.h / f, img.w / f, img.c);
  const float inv = 1.0f / static_cast<float>(f * f);
  for (int y = 0; y < small.h; ++y)
    for (int x = 0; x < small.w; ++x)
      for (int ch = 0; ch < img.c; ++ch) {
        float sum = 0.0f;
        for (int dy = 0; dy < f; ++dy)
          for (int dx = 0; dx < f; ++dx) sum += img.at(y * f + dy, x * f + dx, ch);
        small.at(y, x, ch) = sum * inv;
      }
  return small.h == height && small.w == width ? small : resize_bilinear(small, height, width);
}

FImage resize_center_crop(const FImage& img, int out_h, int out_w, double crop_fraction) {
  KCHECK(crop_fraction > 0.0 && crop_fraction <= 1.0, ValueError, "crop fraction must be in (0, 1], got ",
         crop_fraction);
  // timm's sizes to the pixel: Resize(floor(size / crop_pct)) of the shorter
  // side, the longer one scaled and truncated (torchvision); both sides for a
  // non-square size. CenterCrop's offsets round half to even (Python's round).
  int h = static_cast<int>(std::floor(out_h / crop_fraction));
  int w = static_cast<int>(std::floor(out_w / crop_fraction));
  if (out_h == out_w) {
    if (img.w <= img.h)
      h = static_cast<int>(static_cast<int64_t>(w) * img.h / img.w);
    else
      w = static_cast<int>(static_cast<int64_t>(h) * img.w / img.h);
  }
  h = std::max(h, out_h), w = std::max(w, out_w);
  const FImage scaled = resize_image(img, h, w);
  const int top = static_cast<int>(std::nearbyint((h - out_h) / 2.0));
  const int left = static_cast<int>(std::nearbyint((w - out_w) / 2.0));
  return pad_crop(scaled, top, left, out_h, out_w, 0);
}

Transform resize(int out_h, int out_w, double crop_fraction) {
  KCHECK(out_h > 0 && out_w > 0, ValueError, "resize: target size ", out_h, "x", out_w, " is not positive");
  KCHECK(crop_fraction > 0.0 && crop_fraction <= 1.0, ValueError, "crop fraction must be in (0, 1], got ",
         crop_fraction);
  if (crop_fraction < 1.0)
    return [=](FImage& img, Generator&) { img = resize_center_crop(img, out_h, out_w, crop_fraction); };
  return [=](FImage& img, Generator&) {
    if (img.h != out_h || img.w != out_w) img = resize_image(img, out_h, out_w);
  };
}

Transform random_resized_crop(int out_h, int out_w, double min_area, double max_area, double min_ratio,
                              double max_ratio) {
  KCHECK(out_h > 0 && out_w > 0, ValueError, "random_resized_crop: target size ", out_h, "x", out_w,
         " is not positive");
  KCHECK(min_area > 0.0 && min_area <= max_area && max_area <= 1.0, ValueError,
         "random_resized_crop: need 0 < min_area <= max_area <= 1, got ", min_area, " and ", max_area);
  KCHECK(min_ratio > 0.0 && min_ratio <= max_ratio, ValueError,
         "random_resized_crop: need 0 < min_ratio <= max_ratio, got ", min_ratio, " and ", max_ratio);
  return [=](FImage& img, Generator& gen) {
    const double area = static_cast<double>(img.h) * img.w;
    const double log_lo = std::log(min_ratio), log_hi = std::log(max_ratio);
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double target = area * (min_area + (max_area - min_area) * gen.uniform());
      const double ratio = std::exp(log_lo + (log_hi - log_lo) * gen.uniform());
      const int w = static_cast<int>(std::lround(std::sqrt(target * ratio)));
      const int h = static_cast<int>(std::lround(std::sqrt(target / ratio)));
      if (w < 1 || h < 1 || w > img.w || h > img.h) continue;
      const int top = static_cast<int>(gen.randint(0, img.h - h + 1));
      const int left = static_cast<int>(gen.randint(0, img.w - w + 1));
      img = resize_image(pad_crop(img, top, left, h, w, 0), out_h, out_w);
      return;
    }
    // No draw fitted: the whole image, cut to the nearest allowed aspect ratio.
    const double ratio = static_cast<double>(img.w) / img.h;
    int h = img.h, w = img.w;
    if (ratio < min_ratio) h = std::max(1, static_cast<int>(std::lround(w / min_ratio)));
    if (ratio > max_ratio) w = std::max(1, static_cast<int>(std::lround(h * max_ratio)));
    img = resize_image(pad_crop(img, (img.h - h) / 2, (img.w - w) / 2, h, w, 0), out_h, out_w);
  };
}

Transform normalize(std::vector<float> mean, std::vector<float> std) {
  for (float s : std) KCHECK(s != 0.0f, ValueError, "normalize: std must be non-zero");
  return [m = std::move(mean), s = std::move(std)](FImage& img, Generator&) { normalize(img, m, s); };
}

// ------------------------------------------------------------------ AutoAugment / RandAugment

namespace {

enum class Op {
  Identity, AutoContrast, Equalize, Invert, Rotate, Solarize, Color, Posterize, Contrast, Brightness, Sharpness,
  ShearX, ShearY, TranslateX, TranslateY
};

constexpr float kPolicyFill = 0.5f;  // grey, as in the reference implementation of AutoAugment

// Applies op at strength t in [0, 1] of the ranges of AutoAugment's Table 1:
// shear 0.3, translate 150/331 of the size, rotate 30 degrees (signs random),
// solarize threshold 1 - t, posterize 8 - 4t bits, enhancement factors
// (colour, contrast, brightness, sharpness) 0.1 + 1.8 t when `signed_enhance`
// is false (AutoAugment) or 1 +- 0.9 t (RandAugment, whose magnitude 0 means
// no change).
void apply_op(FImage& img, Op op, double t, bool signed_enhance, Generator& gen) {
  auto sign = [&]() { return gen.uniform() < 0.5 ? -1.0 : 1.0; };
  auto enhance = [&]() {
    return static_cast<float>(signed_enhance ? 1.0 + 0.9 * t * sign() : 0.1 + 1.8 * t);
  };
  switch (op) {
    case Op::Identity: break;
    case Op::AutoContrast: autocontrast(img); break;
    case Op::Equalize: equalize(img); break;
    case Op::Invert: invert(img); break;
    case Op::Rotate: img = rotate(img, 30.0 * t * sign(), kPolicyFill); break;
    case Op::Solarize: solarize(img, static_cast<float>(1.0 - t)); break;
    case Op::Posterize: posterize(img, static_cast<int>(std::lround(8.0 - 4.0 * t))); break;
    case Op::Color: adjust_saturation(img, enhance()); break;
    case Op::Contrast: adjust_contrast(img, enhance()); break;
    case Op::Brightness: adjust_brightness(img, enhance()); break;
    case Op::Sharpness: adjust_sharpness(img, enhance()); break;
    case Op::ShearX: img = shear(img, 0.3 * t * sign(), 0.0, kPolicyFill); break;
    case Op::ShearY: img = shear(img, 0.0, 0.3 * t * sign(), kPolicyFill); break;
    case Op::TranslateX: img = translate(img, 150.0 / 331.0 * img.w * t * sign(), 0.0, kPolicyFill); break;
    case Op::TranslateY: img = translate(img, 0.0, 150.0 / 331.0 * img.h * t * sign(), kPolicyFill); break;
  }
}

struct SubPolicyOp {
  Op op;
  double prob;
  int magnitude;  // 0..9
};

// AutoAugment, "Policy learned on reduced CIFAR-10" (Cubuk, Zoph, Mane,
// Vasudevan, Le: "AutoAugment: Learning Augmentation Strategies from Data",
// CVPR 2019, appendix Table 7). Each row: two (operation, probability,
// magnitude) triples. Re-implementations disagree on the second probability
// of rows 17 and 23 (0.6/0.2 in torchvision, 0.8/0.8 in most PIL ports); we
// use 0.8, matching our reading of the authors' released policy.
const SubPolicyOp kCifar10Policy[25][2] = {
    {{Op::Invert, 0.1, 7}, {Op::Contrast, 0.2, 6}},
    {{Op::Rotate, 0.7, 2}, {Op::TranslateX, 0.3, 9}},
    {{Op::Sharpness, 0.8, 1}, {Op::Sharpness, 0.9, 3}},
    {{Op::ShearY, 0.5, 8}, {Op::TranslateY, 0.7, 9}},
    {{Op::AutoContrast, 0.5, 8}, {Op::Equalize, 0.9, 2}},
    {{Op::ShearY, 0.2, 7}, {Op::Posterize, 0.3, 7}},
    {{Op::Color, 0.4, 3}, {Op::Brightness, 0.6, 7}},
    {{Op::Sharpness, 0.3, 9}, {Op::Brightness, 0.7, 9}},
    {{Op::Equalize, 0.6, 5}, {Op::Equalize, 0.5, 1}},
    {{Op::Contrast, 0.6, 7}, {Op::Sharpness, 0.6, 5}},
    {{Op::Color, 0.7, 7}, {Op::TranslateX, 0.5, 8}},
    {{Op::Equalize, 0.3, 7}, {Op::AutoContrast, 0.4, 8}},
    {{Op::TranslateY, 0.4, 3}, {Op::Sharpness, 0.2, 6}},
    {{Op::Brightness, 0.9, 6}, {Op::Color, 0.2, 8}},
    {{Op::Solarize, 0.5, 2}, {Op::Invert, 0.0, 3}},
    {{Op::Equalize, 0.2, 0}, {Op::AutoContrast, 0.6, 0}},
    {{Op::Equalize, 0.2, 8}, {Op::Equalize, 0.8, 4}},
    {{Op::Color, 0.9, 9}, {Op::Equalize, 0.6, 6}},
    {{Op::AutoContrast, 0.8, 4}, {Op::Solarize, 0.2, 8}},
    {{Op::Brightness, 0.1, 3}, {Op::Color, 0.7, 0}},
    {{Op::Solarize, 0.4, 5}, {Op::AutoContrast, 0.9, 3}},
    {{Op::TranslateY, 0.9, 9}, {Op::TranslateY, 0.7, 9}},
    {{Op::AutoContrast, 0.9, 2}, {Op::Solarize, 0.8, 3}},
    {{Op::Equalize, 0.8, 8}, {Op::Invert, 0.1, 3}},
    {{Op::TranslateY, 0.7, 9}, {Op::AutoContrast, 0.9, 1}},
};

// RandAugment's operation list (Cubuk et al., "RandAugment: Practical automated
// data augmentation with a reduced search space", NeurIPS 2020, section 3).
const Op kRandAugmentOps[] = {Op::Identity,  Op::AutoContrast, Op::Equalize, Op::Rotate, Op::Solarize,
                              Op::Color,     Op::Posterize,    Op::Contrast, Op::Brightness, Op::Sharpness,
                              Op::ShearX,    Op::ShearY,       Op::TranslateX, Op::TranslateY};

}  // namespace

Transform rand_augment(int n, int m, int levels) {
  KCHECK(n >= 0 && levels > 0 && m >= 0 && m <= levels, ValueError, "rand_augment: need n >= 0 and 0 <= m <= levels (",
         levels, "), got n=", n, " m=", m);
  const double t = static_cast<double>(m) / levels;
  return [=](FImage& img, Generator& gen) {
    constexpr int kOps = static_cast<int>(sizeof(kRandAugmentOps) / sizeof(kRandAugmentOps[0]));
    for (int i = 0; i < n; ++i) apply_op(img, kRandAugmentOps[gen.randint(0, kOps)], t, true, gen);
  };
}

Transform auto_augment_cifar10() {
  return [](FImage& img, Generator& gen) {
    const auto& sub = kCifar10Policy[gen.randint(0, 25)];
    for (const SubPolicyOp& o : sub)
      if (gen.uniform() < o.prob) apply_op(img, o.op, o.magnitude / 9.0, false, gen);
  };
}

// ------------------------------------------------------------------ TTA

std::vector<Tensor> tta_views(const Tensor& images, const TTAOptions& opts) {
  KCHECK(images.dim() == 4 && images.dtype() == DType::F32, ShapeError, "tta_views: expected an NHWC f32 batch, got ",
         shape_str(images.shape()), " ", dtype_name(images.dtype()));
  const Tensor x = images.contiguous();
  const int64_t n = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const float* src = x.data<float>();
  KCHECK(opts.fill.empty() || static_cast<int64_t>(opts.fill.size()) == C, ShapeError, "tta_views: ",
         opts.fill.size(), " fill values for ", C, " channels");
  // view(dy, dx, flip): out(y, x) = src(y - dy, x' - dx), x' mirrored when flip; the fill outside.
  auto make = [&](int64_t dy, int64_t dx, bool flip) {
    Tensor out = opts.fill.empty() ? Tensor::zeros({n, H, W, C}) : Tensor::empty({n, H, W, C});
    float* dst = out.data<float>();
    if (!opts.fill.empty())
      for (int64_t p = 0; p < n * H * W; ++p) std::copy(opts.fill.begin(), opts.fill.end(), dst + p * C);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t y = 0; y < H; ++y) {
        const int64_t sy = y - dy;
        if (sy < 0 || sy >= H) continue;
        for (int64_t xx = 0; xx < W; ++xx) {
          const int64_t mx = flip ? W - 1 - xx : xx;
          const int64_t sx = mx - dx;
          if (sx < 0 || sx >= W) continue;
          for (int64_t c = 0; c < C; ++c) dst[((i * H + y) * W + xx) * C + c] = src[((i * H + sy) * W + sx) * C + c];
        }
      }
    return out;
  };
  std::vector<Tensor> views = {x};
  if (opts.flip) views.push_back(make(0, 0, true));
  if (opts.crop_shift > 0) {
    const int64_t s = opts.crop_shift;
    for (const auto& d : std::vector<std::pair<int64_t, int64_t>>{{-s, -s}, {-s, s}, {s, -s}, {s, s}}) {
      views.push_back(make(d.first, d.second, false));
      if (opts.flip) views.push_back(make(d.first, d.second, true));
    }
  }
  return views;
}

Tensor tta_average(const std::vector<Tensor>& outputs) {
  KCHECK(!outputs.empty(), ValueError, "tta_average: no outputs");
  std::vector<float> acc = outputs.front().to_vector();
  for (size_t v = 1; v < outputs.size(); ++v) {
    KCHECK(outputs[v].shape() == outputs.front().shape(), ShapeError, "tta_average: view ", v, " has shape ",
           shape_str(outputs[v].shape()), ", view 0 has ", shape_str(outputs.front().shape()));
    const std::vector<float> o = outputs[v].to_vector();
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += o[i];
  }
  for (float& a : acc) a /= static_cast<float>(outputs.size());
  return Tensor::from_vector(acc, outputs.front().shape());
}

}  // namespace kestrel::data
