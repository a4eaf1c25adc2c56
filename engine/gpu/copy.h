// CUDA copies and fills over strided tensors (the CUDA side of
// Tensor::copy_ and Tensor::fill_). Both tensors on the same CUDA device.
#pragma once
#include "engine/tensor.h"

namespace kestrel::gpu {

// dst = src broadcast to dst's shape and converted to dst's dtype (values as
// cpu::cast_value). Any strides on both sides; dst must not overlap src.
void copy_strided(const Tensor& dst, const Tensor& src);

// Every element of dst (any strides, any dtype) = value, converted as on the CPU.
void fill(const Tensor& dst, double value);

}  // namespace kestrel::gpu
