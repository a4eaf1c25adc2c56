// Argument checks shared by ops; each names the op in its message.
#pragma once
#include "engine/tensor.h"

namespace kestrel {

inline void check_defined(const Tensor& t, const char* op, const char* what) {
  KCHECK(t.defined(), ValueError, op, ": ", what, " is undefined");
}

inline void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  KCHECK(a.device() == b.device(), DeviceError, op, ": tensors on different devices (", a.device().str(), " and ",
         b.device().str(), ")");
}

inline void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  KCHECK(a.dtype() == b.dtype(), DTypeError, op, ": dtype mismatch (", dtype_name(a.dtype()), " ",
         shape_str(a.shape()), " vs ", dtype_name(b.dtype()), " ", shape_str(b.shape()), ")");
}

// The usual pair for a second operand: same device first, then same dtype.
inline void check_same_device_and_dtype(const Tensor& a, const Tensor& b, const char* op) {
  check_same_device(a, b, op);
  check_same_dtype(a, b, op);
}

inline void check_dim(const Tensor& t, int64_t d, const char* op, const char* what) {
  KCHECK(t.dim() == d, ShapeError, op, ": ", what, " must be ", d, "-d, got shape ", shape_str(t.shape()));
}

// Batch statistics need two values per channel: as PyTorch's message, plus
// the usual cause (one image reaching a 1x1 feature map, as in a head).
inline void check_batch_statistics(const Tensor& x, int64_t rows, const char* op) {
  KCHECK(rows > 1, ShapeError, op, ": expected more than 1 value per channel when training, got input ",
         shape_str(x.shape()), " (a batch of one image at a 1x1 feature map: train with batches of 2 or more)");
}

#if defined(KESTREL_HAVE_CUDA)
inline constexpr bool kHaveCuda = true;
#else
inline constexpr bool kHaveCuda = false;
#endif

// Ops route CUDA tensors to engine/gpu with
//   if constexpr (kHaveCuda) { if (x.device().is_cuda()) return gpu::op(...); }
// In a build without CUDA the branch is discarded, so the gpu:: functions
// (compiled only with nvcc present) need no definition there.

}  // namespace kestrel
