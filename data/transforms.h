// Augmentations on float HWC images (batch-level label mixing: data/batch_mix.h).
//
// Images reach the transforms as FImage with values in [0, 1] (to_float of a
// u8 Image); colour ops clamp to [0, 1]; normalize() comes last. Every random
// choice is drawn from the Generator passed in, so a transform applied with
// the same generator state gives the same result (the loader derives one
// generator per sample from (seed, epoch, index)).
//
//   Transform train_tf = compose({random_crop(32, 32, 4), random_hflip(),
//                                 auto_augment_cifar10(), cutout(16),
//                                 normalize({0.4914f, 0.4822f, 0.4465f}, {0.247f, 0.243f, 0.261f})});
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/batch_mix.h"
#include "data/dataset.h"
#include "engine/random.h"
#include "engine/tensor.h"

namespace kestrel::data {

struct FImage {
  int h = 0, w = 0, c = 0;
  std::vector<float> data;  // h*w*c, HWC
  FImage() = default;
  FImage(int h_, int w_, int c_, float fill = 0.0f)
      : h(h_), w(w_), c(c_), data(static_cast<size_t>(h_) * w_ * c_, fill) {}
  float& at(int y, int x, int ch) { return data[(static_cast<size_t>(y) * w + x) * c + ch]; }
  float at(int y, int x, int ch) const { return data[(static_cast<size_t>(y) * w + x) * c + ch]; }
};

FImage to_float(const Image& img, float scale = 1.0f / 255.0f);

enum class PadMode { Zero, Reflect, Edge };

// ---- deterministic operations (the random transforms are built from these)
FImage hflip(const FImage& img);
FImage vflip(const FImage& img);  // rows upside down
// out(y, x) = padded(top + y, left + x), padded being img with `pad` pixels on
// each side (zero/fill, reflected, or edge-replicated).
FImage pad_crop(const FImage& img, int top, int left, int out_h, int out_w, int pad, PadMode mode = PadMode::Zero,
                float fill = 0.0f);
FImage resize_bilinear(const FImage& img, int out_h, int out_w);  // half-pixel centres (align_corners=false)
// What every image a model reads goes through (training, validation, eval,
// predict): bilinear, but when shrinking by 2x or more it first averages whole
// blocks, so that fine detail is not aliased into the small image.
FImage resize_image(const FImage& img, int out_h, int out_w);
// timm's evaluation crop (crop_pct), to the pixel: scales img, aspect kept, so
// its shorter side is floor(out / crop_fraction), then takes the centre
// out_h x out_w.
FImage resize_center_crop(const FImage& img, int out_h, int out_w, double crop_fraction);
// Inverse affine warp about the image centre: output pixel at offset d from the
// centre samples the input at centre + A d + t (A row-major 2x2, t = (tx, ty)),
// bilinearly, with `fill` outside the image.
FImage warp_affine(const FImage& img, const std::array<double, 4>& A, double tx, double ty, float fill = 0.0f);
// Counter-clockwise as displayed (y grows downward), in degrees.
FImage rotate(const FImage& img, double degrees, float fill = 0.0f);
// Translate by (dx, dy) pixels, scale about the centre, then rotate.
FImage shift_scale_rotate(const FImage& img, double dx, double dy, double scale, double degrees, float fill = 0.0f);
FImage shear(const FImage& img, double shear_x, double shear_y, float fill = 0.0f);
FImage translate(const FImage& img, double dx, double dy, float fill = 0.0f);

void adjust_brightness(FImage& img, float factor);  // x * factor
void adjust_contrast(FImage& img, float factor);    // blend with the mean grey level
void adjust_saturation(FImage& img, float factor);  // blend with the grey image
void adjust_hue(FImage& img, float shift);          // shift in turns, [-0.5, 0.5]
void brightness_contrast(FImage& img, float alpha, float beta);  // alpha * x + beta
// Adds dh degrees of hue, ds to saturation and dv to value (HSV, all [0, 1] but hue).
void shift_hsv(FImage& img, float dh_degrees, float ds, float dv);
void fill_rect(FImage& img, int top, int left, int h, int w, float fill = 0.0f);  // clipped to the image
void normalize(FImage& img, const std::vector<float>& mean, const std::vector<float>& std);
void solarize(FImage& img, float threshold);  // x >= threshold -> 1 - x
void posterize(FImage& img, int bits);        // keep the top `bits` of each 8-bit value
void equalize(FImage& img);                   // per-channel histogram equalisation on 256 levels
void autocontrast(FImage& img);               // per channel, stretch min..max to 0..1
void adjust_sharpness(FImage& img, float factor);  // blend with a 3x3 smoothed image
void invert(FImage& img);

// ---- random transforms
// True with probability p (one draw unless p is 0 or 1).
bool coin(Generator& gen, double p);
using Transform = std::function<void(FImage&, Generator&)>;

Transform compose(std::vector<Transform> transforms);
Transform random_crop(int out_h, int out_w, int padding, PadMode mode = PadMode::Zero);
Transform random_hflip(double p = 0.5);
Transform random_vflip(double p = 0.5);
Transform random_rotation(double max_degrees, double p = 1.0, float fill = 0.0f);
// torchvision-style: factors drawn from [max(0, 1 - x), 1 + x], hue from
// [-hue, hue] turns, applied in a random order.
Transform color_jitter(float brightness, float contrast, float saturation, float hue = 0.0f);
// shift_limit as a fraction of the size, scale from [1 - scale_limit, 1 + scale_limit], rotation in degrees.
Transform random_shift_scale_rotate(double shift_limit = 0.0625, double scale_limit = 0.1, double rotate_limit = 45.0,
                                    double p = 0.5, float fill = 0.0f);
// x -> (1 + U(-contrast_limit, contrast_limit)) x + U(-brightness_limit, brightness_limit)
Transform random_brightness_contrast(double brightness_limit = 0.2, double contrast_limit = 0.2, double p = 0.5);
// hue in degrees, saturation and value as fractions of full scale.
Transform random_hsv_shift(double hue_limit = 20.0, double sat_limit = 0.12, double val_limit = 0.08, double p = 0.5);
// holes of 1..max_h by 1..max_w pixels placed wholly inside the image.
Transform coarse_dropout(int max_holes, int max_h, int max_w, double p = 0.5, int min_holes = 1, float fill = 0.0f);
// Cutout (DeVries & Taylor 2017): one size x size square, centre uniform over
// the image, clipped at the border.
Transform cutout(int size, double p = 1.0, float fill = 0.0f);
// Random erasing (Zhong et al. 2020; timm's RandomErasing, mode 'pixel'): with
// probability p, one rectangle of min_area..max_area of the image (aspect
// h/w log-uniform in [min_aspect, 1/min_aspect]) is filled with standard
// normal noise. It goes after normalize(), where that noise has the data's
// spread. After 10 draws that do not fit, the image is left as it is.
Transform random_erasing(double p, double min_area = 0.02, double max_area = 1.0 / 3.0, double min_aspect = 0.3);
// resize_image, or resize_center_crop when crop_fraction is below 1.
Transform resize(int out_h, int out_w, double crop_fraction = 1.0);
// torchvision's RandomResizedCrop: a region of a random area fraction in
// [min_area, max_area] and aspect ratio (w/h, log-uniform) in [min_ratio,
// max_ratio] at a random place, resized to out_h x out_w. After 10 draws
// that do not fit, the centre at the nearest allowed ratio.
Transform random_resized_crop(int out_h, int out_w, double min_area = 0.08, double max_area = 1.0,
                              double min_ratio = 3.0 / 4.0, double max_ratio = 4.0 / 3.0);
Transform normalize(std::vector<float> mean, std::vector<float> std);
// RandAugment (Cubuk et al. 2020): n operations chosen uniformly from the 14 of
// the paper, each at magnitude m of `levels` bins (m = levels is the maximum).
Transform rand_augment(int n, int m, int levels = 30);
// AutoAugment (Cubuk et al., CVPR 2019), the 25 sub-policies found on reduced
// CIFAR-10 (paper appendix, Table 7): pick one sub-policy, apply its two ops
// with their probabilities and magnitudes (0..9 over the ranges of Table 1).
Transform auto_augment_cifar10();

// ---- test-time augmentation
struct TTAOptions {
  bool flip = true;    // add the mirrored view of each view
  int crop_shift = 0;  // >0: add four views shifted by +-crop_shift pixels (pad-and-crop)
  // Per channel, the value of the pixels a shift brings in; empty: 0. On
  // normalized images, -mean/std is black, as random_crop's padding in training.
  std::vector<float> fill;
};
// Views of an NHWC batch; the first is the batch itself.
std::vector<Tensor> tta_views(const Tensor& images, const TTAOptions& opts = {});
// How many views tta_views makes.
inline int tta_view_count(const TTAOptions& opts) { return (opts.flip ? 2 : 1) * (opts.crop_shift > 0 ? 5 : 1); }
// Mean of per-view outputs (e.g. softmax probabilities [N, K]).
Tensor tta_average(const std::vector<Tensor>& outputs);

}  // namespace kestrel::data
