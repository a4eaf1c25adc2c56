// Multi-tensor kernels behind clip_grad_norm_ and ModelEma on CUDA: sum of
// squares (f64 partials per block, then one deterministic final sum), in-place
// scaling, and the EMA blend. Each launch carries a table of up to
// kMaxTensors tensors and kMaxBlocks chunks by value, so a model's few
// hundred gradients take a handful of launches. The SGD/AdamW glue is in
// optim.cpp (kernels/fused_optim.h). Compiles; untested on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <map>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/cuda/runtime.h"
#include "engine/gpu/optim.h"

namespace kestrel::gpu {

namespace {

constexpr int kThreads = 256;
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

// Fills tables chunk by chunk and calls launch(table, blocks, index of the
// first block overall) whenever a table is full, and once at the end.
template <typename Launch>
void for_each_launch(const std::vector<Span>& spans, Launch&& launch) {
  ChunkTable t;
  int nt = 0, nb = 0;
  int64_t first_block = 0;
  auto flush = [&] {
    if (nb > 0) launch(t, nb, first_block);
    first_block += nb;
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

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ double to_double(double v) { return v; }
template <typename T>
__device__ __forceinline__ double to_double(T v) { return static_cast<double>(to_float(v)); }

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

__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const double* partials, int64_t count, double* out) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc += partials[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) *out = total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(ChunkTable t, float factor) {
  const ChunkRange r = block_range(t);
  T* x = static_cast<T*>(t.dst[r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) x[i] = from_float<T>(__fmul_rn(to_float(x[i]), factor));
}

__global__ void __launch_bounds__(kThreads) scale_kernel_f64(ChunkTable t, double factor) {
  const ChunkRange r = block_range(t);
  double* x = static_cast<double*>(t.dst[r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) x[i] = __dmul_rn(x[i], factor);
}

// e + w * (m - e), each operation rounded on its own like the CPU loop.
template <typename T>
__global__ void __launch_bounds__(kThreads) lerp_kernel(ChunkTable t, float weight) {
  const ChunkRange r = block_range(t);
  T* e = static_cast<T*>(t.dst[r.tensor]);
  const T* m = static_cast<const T*>(t.src[r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) {
    const float ev = to_float(e[i]);
    e[i] = from_float<T>(__fadd_rn(ev, __fmul_rn(weight, __fsub_rn(to_float(m[i]), ev))));
  }
}

__global__ void __launch_bounds__(kThreads) lerp_kernel_f64(ChunkTable t, double weight) {
  const ChunkRange r = block_range(t);
  double* e = static_cast<double*>(t.dst[r.tensor]);
  const double* m = static_cast<const double*>(t.src[r.tensor]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads)
    e[i] = __dadd_rn(e[i], __dmul_rn(weight, __dsub_rn(m[i], e[i])));
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

void launch_error_check(const char* op, const std::pair<int, DType>& key, size_t tensors) {
  KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), op, ": ", tensors, " ", dtype_name(key.second), " tensors on cuda:",
                         key.first);
}

// Calls f(tag) with the CUDA element type of a floating dtype other than f64.
template <typename F>
void dispatch_half_or_float(DType d, F&& f) {
  if (d == DType::F16)
    f(static_cast<__half*>(nullptr));
  else if (d == DType::BF16)
    f(static_cast<__nv_bfloat16*>(nullptr));
  else
    f(static_cast<float*>(nullptr));
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

double sum_of_squares(const std::vector<Tensor>& tensors) {
  std::map<int, LaunchGroups> by_device;
  for (const Tensor& t : tensors) {
    check_tensor(t, "clip_grad_norm_");
    by_device[t.device().index][{t.device().index, t.dtype()}].push_back({nullptr, t.data_ptr(), t.numel()});
  }
  double total = 0.0;
  for (const auto& [device, groups] : by_device) {
    int64_t blocks = 0;
    for (const auto& [key, spans] : groups)
      for (const Span& s : spans) blocks += s.n > 0 ? chunks_of(s.n) : 0;
    if (blocks == 0) continue;
    cuda::DeviceGuard guard(device);
    cudaStream_t stream = cuda::current_stream(device);
    Scratch partials(static_cast<size_t>(blocks + 1) * sizeof(double), device, stream);
    int64_t offset = 0;
    for (const auto& group : groups) {
      const std::pair<int, DType>& key = group.first;
      const std::vector<Span>& spans = group.second;
      int64_t group_blocks = 0;
      for_each_launch(spans, [&](const ChunkTable& t, int nb, int64_t first) {
        if (key.second == DType::F64) {
          sum_squares_kernel<double><<<nb, kThreads, 0, stream>>>(t, partials.get(), offset + first);
        } else {
          dispatch_half_or_float(key.second, [&](auto* tag) {
            using T = std::remove_pointer_t<decltype(tag)>;
            sum_squares_kernel<T><<<nb, kThreads, 0, stream>>>(t, partials.get(), offset + first);
          });
        }
        group_blocks = first + nb;
      });
      launch_error_check("clip_grad_norm_ (sum of squares)", key, spans.size());
      offset += group_blocks;
    }
    double* out = partials.get() + blocks;
    sum_partials_kernel<<<1, kThreads, 0, stream>>>(partials.get(), blocks, out);
    KESTREL_CUDA_CHECK_CTX(cudaGetLastError(), "clip_grad_norm_: final sum of ", blocks, " partial sums on cuda:",
                           device);
    double host = 0.0;
    KESTREL_CUDA_CHECK_CTX(cudaMemcpyAsync(&host, out, sizeof(double), cudaMemcpyDeviceToHost, stream),
                           "clip_grad_norm_: reading the squared norm from cuda:", device);
    KESTREL_CUDA_CHECK_CTX(cudaStreamSynchronize(stream), "clip_grad_norm_: gradient norm on cuda:", device);
    total += host;
  }
  return total;
}

void scale_(const std::vector<Tensor>& tensors, double factor) {
  LaunchGroups groups;
  for (const Tensor& t : tensors) {
    check_tensor(t, "clip_grad_norm_");
    groups[{t.device().index, t.dtype()}].push_back({t.data_ptr(), nullptr, t.numel()});
  }
  for (const auto& group : groups) {
    const std::pair<int, DType>& key = group.first;
    const std::vector<Span>& spans = group.second;
    cuda::DeviceGuard guard(key.first);
    cudaStream_t stream = cuda::current_stream(key.first);
    for_each_launch(spans, [&](const ChunkTable& t, int nb, int64_t) {
      if (key.second == DType::F64) {
        scale_kernel_f64<<<nb, kThreads, 0, stream>>>(t, factor);
      } else {
        dispatch_half_or_float(key.second, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          scale_kernel<T><<<nb, kThreads, 0, stream>>>(t, static_cast<float>(factor));
        });
      }
    });
    launch_error_check("clip_grad_norm_ (scale)", key, spans.size());
  }
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
  for (const auto& group : groups) {
    const std::pair<int, DType>& key = group.first;
    const std::vector<Span>& spans = group.second;
    cuda::DeviceGuard guard(key.first);
    cudaStream_t stream = cuda::current_stream(key.first);
    for_each_launch(spans, [&](const ChunkTable& t, int nb, int64_t) {
      if (key.second == DType::F64) {
        lerp_kernel_f64<<<nb, kThreads, 0, stream>>>(t, weight);
      } else {
        dispatch_half_or_float(key.second, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          lerp_kernel<T><<<nb, kThreads, 0, stream>>>(t, static_cast<float>(weight));
        });
      }
    });
    launch_error_check("ModelEma.update", key, spans.size());
  }
}

}  // namespace kestrel::gpu
