/* Kestrel's C interface: classify images with a trained checkpoint from any
 * language that can call C (tools/python/kestrel.py wraps it for Python).
 * The library is build/tools/libkestrel.so; it exports only these functions.
 *
 *   kestrel_predictor* p = kestrel_predictor_open("runs/fmnist/best.safetensors", "cpu");
 *   if (!p) { fprintf(stderr, "%s\n", kestrel_last_error()); return 1; }
 *   int index[3]; float prob[3];
 *   int n = kestrel_predictor_top_k_file(p, "boot.png", 3, index, prob);
 *   for (int i = 0; i < n; ++i) printf("%s %.3f\n", kestrel_predictor_class_name(p, index[i]), prob[i]);
 *   kestrel_predictor_close(p);
 *
 * Images go through the steps `kestrel predict` applies: conversion to the
 * model's channels, resizing to its input size, the checkpoint's normalization.
 * Functions that can fail return NULL or -1 and leave a one-line reason in
 * kestrel_last_error() (per thread). A predictor is not to be used by two
 * threads at once. */
#ifndef KESTREL_C_API_H
#define KESTREL_C_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kestrel_predictor kestrel_predictor;

/* The reason the last failing call on this thread failed ("" if none did). */
const char* kestrel_last_error(void);

/* Loads a checkpoint once. device: "cpu", "cuda", "cuda:N" or "auto" (NULL: "cpu"). */
kestrel_predictor* kestrel_predictor_open(const char* checkpoint_path, const char* device);
void kestrel_predictor_close(kestrel_predictor* predictor); /* NULL is ignored */

const char* kestrel_predictor_model(const kestrel_predictor* predictor);
int kestrel_predictor_num_classes(const kestrel_predictor* predictor);
/* NULL for an index out of range. */
const char* kestrel_predictor_class_name(const kestrel_predictor* predictor, int index);
/* The size images are resized to, and the model's channel count. */
void kestrel_predictor_input_shape(const kestrel_predictor* predictor, int* height, int* width, int* channels);

/* Softmax probabilities of every class for `count` images of height x width x
 * channels 8-bit pixels (row-major, channels interleaved: 1 grey, 3 RGB, 4
 * RGBA), stored one after another: probabilities[count][num_classes].
 * One forward pass. 0 on success, -1 on error. */
int kestrel_predictor_probabilities_u8(kestrel_predictor* predictor, const uint8_t* pixels, int count, int height,
                                       int width, int channels, float* probabilities);
/* The same for one image file (png, jpg, bmp, gif, tga, ppm/pgm). */
int kestrel_predictor_probabilities_file(kestrel_predictor* predictor, const char* image_path,
                                         float* probabilities);
/* The k most probable classes of one image file, most probable first: their
 * indices and probabilities. Returns how many were written (min(k, classes)),
 * -1 on error. */
int kestrel_predictor_top_k_file(kestrel_predictor* predictor, const char* image_path, int k, int* class_indices,
                                 float* probabilities);

#ifdef __cplusplus
}
#endif

#endif /* KESTREL_C_API_H */
