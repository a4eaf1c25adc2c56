#pragma once
#include "engine/tensor.h"

namespace kestrel {

// [M,K] x [K,N] -> [M,N] (OpenBLAS sgemm/dgemm on the CPU).
Tensor matmul(const Tensor& a, const Tensor& b);
// x [..., in], weight [out, in] (PyTorch's layout), bias [out] or undefined -> [..., out].
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

}  // namespace kestrel
