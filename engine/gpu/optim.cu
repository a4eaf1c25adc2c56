// Multi-tensor kernels behind clip_grad_norm_ and ModelEma on CUDA: sum of
// squares (f64 partials per block, then one deterministic final sum), in-place
// scaling (by a host factor, or by the clip factor of a norm left on the
// device), and the EMA blend. Each launch carries a table of up to
// kMaxTensors tensors and kMaxBlocks chunks by value, so a model's few
// hundred gradients take a handful of launches. The SGD/AdamW glue is in
// optim.cpp (kernels/fused_optim.h). Compiles; untested on a GPU.
#include <map>
#include <utility>
#include <vector>

#include "engine/gpu/device_scalar.cuh"
#include "engine/gpu/optim.h"

namespace kestrel::gpu {

namespace {

constexpr int64_t kChunk = 16384;  // elements per block
constexpr int kMaxTensors = 48;
constexpr int kMaxBlocks = 320;

// About 2.8 KB: fits the 4 KB kernel-argument limit of every architecture.
struct ChunkTable {
  void* dst[kMaxTensors];
  const void* src[kMaxTensors];
  int64_t size[kMaxTensors];
  unsigned char block_tensor[kMaxBlocks];
  int block_chunk[kMaxBlocks];
};

struct Span {
  void* dst;
  const void* src;
  int64_t n;
};

int64_t chunks_of(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Fills tables chunk by chunk and calls launch(table, blocks) whenever a
// table is full, and once at the end.
template <typename Launch>
void for_each_launch(const std::vector<Span>& spans, Launch&& launch) {
  ChunkTable t;
  int nt = 0, nb = 0;
  auto flush = [&] {
    if (nb > 0) launch(t, nb);
    nt = 0;
    nb = 0;
  };
  for (const Span& s : spans) {
    if (s.n <= 0) continue;
    const int64_t chunks = chunks_of(s.n);
    for (int64_t c = 0; c < chunks; ++c) {
      if (nb == kMaxBlocks) flush();
      if (c == 0 || nt == 0) {  // the tensor enters this table
        if (nt == kMaxTensors) flush();
        t.dst[nt] = s.dst;
        t.src[nt] = s.src;
        t.size[nt] = s.n;
        ++nt;
      }
      t.block_tensor[nb] = static_cast<unsigned char>(nt - 1);
      t.block_chunk[nb] = static_cast<int>(c);
      ++nb;
    }
  }
  flush();
}

struct ChunkRange {
  int tensor;
  int64_t begin, end;
};
__device__ __forceinline__ ChunkRange block_range(const ChunkTable& t) {
  const int ti = t.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(t.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = begin + kChunk < t.size[ti] ? begin + kChunk : t.size[ti];
  return {ti, begin, end};
}

// Fixed-shape tree: the same inputs give the same sum on every run.
__device__ double block_sum(double v) {
  __shared__ double s[kThreads];
  s[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  return s[0];
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(ChunkTable t, double* partials, int64_t first_block) {
  const ChunkRange r = block_range(t);
  const T* x = static_cast<const T*>(t.src[r.tensor]);
  double acc = 0.0;
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) {
    const double v = to_double(x[i]);
    acc = __dadd_rn(acc, __dmul_rn(v, v));
  }
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partials[first_block + blockIdx.x] = total;
}

// *out = the sum of the partials, or its square root (the norm) when `root`.
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const double* partials, int64_t count, bool root,
                                                               double* out) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc += partials[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) *out = root ? sqrt(total) : total;
}

// x * factor in the math type (f16/bf16 in f32), rounded on its own like the CPU loop.
template <typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(ChunkTable t, MathT<T> factor) {
  const ChunkRange r = block_range(t);
  T* x = static_cast<T*>(t.dst[r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads)
    x[i] = from_math<T>(mul_rn(to_math(x[i]), factor));
}

// x * optim::clip_coefficient(*norm, max_norm), skipped where that is 1: the
// host rule (engine/optim/clip.h) written again for the device, same rounding.
template <typename T>
__global__ void __launch_bounds__(kThreads) clip_kernel(ChunkTable t, const double* norm, double max_norm) {
  const double n = *norm;
  const double coef = max_norm / (n + 1e-6);
  if (!(coef < 1.0) && isfinite(n)) return;
  const MathT<T> factor = static_cast<MathT<T>>(coef);
  const ChunkRange r = block_range(t);
  T* x = static_cast<T*>(t.dst[r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads)
    x[i] = from_math<T>(mul_rn(to_math(x[i]), factor));
}

// e + w * (m - e), each operation rounded on its own like the CPU loop.
template <typename T>
__global__ void __launch_bounds__(kThreads) lerp_kernel(ChunkTable t, MathT<T> weight) {
  const ChunkRange r = block_range(t);
  T* e = static_cast<T*>(t.dst[r.tensor]);
  const T* m = static_cast<const T*>(t.src[r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) {
    const MathT<T> ev = to_math(e[i]);
    e[i] = from_math<T>(add_rn(ev, mul_rn(weight, sub_rn(to_math(m[i]), ev))));
  }
}

void check_tensor(const Tensor& t, const char* op) {
  KCHECK(t.device().is_cuda(), DeviceError, op, ": expected a CUDA tensor, got one on ", t.device().str());
  KCHECK(t.is_contiguous(), ValueError, op, ": tensor of shape ", shape_str(t.shape()), " is not contiguous");
  const DType d = t.dtype();
  KCHECK(d == DType::F32 || d == DType::F64 || d == DType::F16 || d == DType::BF16, DTypeError, op,
         ": expected a floating tensor, got ", dtype_name(d), " ", shape_str(t.shape()));
}

// Tensors of one device and dtype, launched together.
using LaunchGroups = std::map<std::pair<int, DType>, std::vector<Span>>;

// For each group, on its device's current stream: launch(tag, table, blocks,
// stream) per table of its spans (tag: the device element type); the launches
// are checked per group.
template <typename Launch>
void launch_groups(const LaunchGroups& groups, const char* what, Launch&& launch) {
  for (const auto& group : groups) {
    const int device = group.first.first;
    const DType dtype = group.first.second;
    const std::vector<Span>& spans = group.second;
    cuda::DeviceGuard guard(device);
    const cudaStream_t stream = cuda::current_stream(device);
    dispatch_float_dev(dtype, what, [&](auto tag) {
      for_each_launch(spans, [&](const ChunkTable& t, int blocks) { launch(tag, t, blocks, stream); });
    });
    KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), what, ": ", spans.size(), " ", dtype_name(dtype), " tensors on cuda:",
                           device);
  }
}

// Device scratch freed on scope exit (also when a check throws).
class Scratch {
 public:
  Scratch(size_t nbytes, int device, cudaStream_t stream)
      : ptr_(cuda::device_allocate(nbytes, device, stream)) {}
  ~Scratch() { cuda::device_free(ptr_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  double* get() const { return static_cast<double*>(ptr_); }

 private:
  void* ptr_;
};

}  // namespace

namespace {

int64_t block_count(const LaunchGroups& groups) {
  int64_t blocks = 0;
  for (const auto& group : groups)
    for (const Span& s : group.second) blocks += s.n > 0 ? chunks_of(s.n) : 0;
  return blocks;
}

// Queues the sum of squares of one device's groups (`blocks` > 0 chunks) on
// its current stream; *out receives the sum, or the norm when `root`.
void launch_sum_of_squares(const LaunchGroups& groups, int device, int64_t blocks, bool root, double* out) {
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = cuda::current_stream(device);
  Scratch partials(static_cast<size_t>(blocks) * sizeof(double), device, stream);
  double* const partial = partials.get();
  int64_t written = 0;  // blocks are numbered across every launch of this device
  launch_groups(groups, "clip_grad_norm_ (sum of squares)", [&](auto tag, const ChunkTable& t, int nb, cudaStream_t s) {
    using T = KESTREL_SCALAR(tag);
    sum_squares_kernel<T><<<nb, kThreads, 0, s>>>(t, partial, written);
    written += nb;
  });
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(partial, blocks, root, out);
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "clip_grad_norm_: final sum of ", blocks, " partial sums on cuda:",
                         device);
}

}  // namespace

double sum_of_squares(const std::vector<Tensor>& tensors) {
  std::map<int, LaunchGroups> by_device;
  for (const Tensor& t : tensors) {
    check_tensor(t, "clip_grad_norm_");
    by_device[t.device().index][{t.device().index, t.dtype()}].push_back({nullptr, t.data_ptr(), t.numel()});
  }
  double total = 0.0;
  for (const auto& [device, groups] : by_device) {
    const int64_t blocks = block_count(groups);
    if (blocks == 0) continue;
    cuda::DeviceGuard guard(device);
    const cudaStream_t stream = cuda::current_stream(device);
    Scratch result(sizeof(double), device, stream);
    launch_sum_of_squares(groups, device, blocks, /*root=*/false, result.get());
    double host = 0.0;
    KESTREL_CUDA_CHECK_CTX(cudaMemcpyAsync(&host, result.get(), sizeof(double), cudaMemcpyDeviceToHost, stream),
                           "clip_grad_norm_: reading the squared norm from cuda:", device);
    KESTREL_CUDA_CHECK_CTX(cudaStreamSynchronize(stream), "clip_grad_norm_: gradient norm on cuda:", device);
    total += host;
  }
  return total;
}

Tensor clip_by_norm_(const std::vector<Tensor>& tensors, double max_norm) {
  KCHECK(!tensors.empty(), ValueError, "clip_grad_norm_: no CUDA gradients to clip");
  const Device device = tensors.front().device();
  LaunchGroups groups;
  for (const Tensor& t : tensors) {
    check_tensor(t, "clip_grad_norm_");
    KCHECK(t.device() == device, DeviceError, "clip_grad_norm_: gradients on ", device.str(), " and ",
           t.device().str(), " (the device-side clip takes one device)");
    groups[{device.index, t.dtype()}].push_back({t.data_ptr(), t.data_ptr(), t.numel()});
  }
  Tensor norm = Tensor::zeros({1}, DType::F64, device);
  const int64_t blocks = block_count(groups);
  if (blocks == 0) return norm;
  double* const norm_ptr = static_cast<double*>(norm.data_ptr());
  launch_sum_of_squares(groups, device.index, blocks, /*root=*/true, norm_ptr);
  launch_groups(groups, "clip_grad_norm_ (clip)", [&](auto tag, const ChunkTable& t, int nb, cudaStream_t s) {
    using T = KESTREL_SCALAR(tag);
    clip_kernel<T><<<nb, kThreads, 0, s>>>(t, norm_ptr, max_norm);
  });
  return norm;
}

void scale_(const std::vector<Tensor>& tensors, double factor) {
  LaunchGroups groups;
  for (const Tensor& t : tensors) {
    check_tensor(t, "clip_grad_norm_");
    groups[{t.device().index, t.dtype()}].push_back({t.data_ptr(), nullptr, t.numel()});
  }
  launch_groups(groups, "clip_grad_norm_ (scale)", [&](auto tag, const ChunkTable& t, int nb, cudaStream_t s) {
    using T = KESTREL_SCALAR(tag);
    scale_kernel<T><<<nb, kThreads, 0, s>>>(t, static_cast<MathT<T>>(factor));
  });
}

void lerp_(const std::vector<Tensor>& dst, const std::vector<Tensor>& src, double weight) {
  KCHECK(dst.size() == src.size(), ValueError, "ModelEma.update: ", dst.size(), " EMA tensors but ", src.size(),
         " model tensors");
  LaunchGroups groups;
  for (size_t i = 0; i < dst.size(); ++i) {
    check_tensor(dst[i], "ModelEma.update");
    check_tensor(src[i], "ModelEma.update");
    KCHECK(dst[i].device() == src[i].device() && dst[i].dtype() == src[i].dtype() &&
               dst[i].shape() == src[i].shape(),
           ValueError, "ModelEma.update: EMA tensor ", dtype_name(dst[i].dtype()), " ", shape_str(dst[i].shape()),
           " on ", dst[i].device().str(), " and model tensor ", dtype_name(src[i].dtype()), " ",
           shape_str(src[i].shape()), " on ", src[i].device().str(), " differ");
    groups[{dst[i].device().index, dst[i].dtype()}].push_back({dst[i].data_ptr(), src[i].data_ptr(), dst[i].numel()});
  }
  launch_groups(groups, "ModelEma.update", [&](auto tag, const ChunkTable& t, int nb, cudaStream_t s) {
    using T = KESTREL_SCALAR(tag);
    lerp_kernel<T><<<nb, kThreads, 0, s>>>(t, static_cast<MathT<T>>(weight));
  });
}

}  // namespace kestrel::gpu
