// Weight and bias gradients of the small 1x1 transforms inside
// squeeze-excite and coordinate attention, deterministic:
//   dw[a, b] = sum_r A[r, a] * f(B[r, b])       db[a] = sum_r A[r, a]
// over a row set r (samples, or positions of samples). A is the gradient at
// the transform's output, B its input (f = the activation that produced it,
// recomputed from the saved pre-activation). The rows are split into a fixed
// number of chunks (a function of the shape only); one thread sums one
// output over one chunk in row order, a second pass sums the chunks in
// order. No atomics: the result is bitwise reproducible. Only .cu files
// include this.
#pragma once
#include <algorithm>

#include "kernels/common.cuh"

namespace kestrel::kernels {

// Logical row r lives at storage row (r / per_sample) * sample_stride +
// offset + r % per_sample, so one direction of coordinate attention (rows
// [0, H) or [H, H+W) of each sample's H+W) is a row set too.
struct GateRowSet {
  int64_t count = 0;
  int per_sample = 1, sample_stride = 1, offset = 0;
  __device__ __forceinline__ int64_t storage_row(int64_t r) const {
    return (r / per_sample) * sample_stride + offset + r % per_sample;
  }
};

struct GateGradArgs {
  const float* A = nullptr;  // [storage rows, a_cols]
  int a_cols = 0;
  const float* B = nullptr;  // [storage rows, b_cols]
  int b_cols = 0;
  KAct b_act = KAct::None;   // applied to B on read
  GateRowSet rows;
};

constexpr int kGateGradThreads = 256;

// Outputs carry one extra column per a: the bias gradient (B read as 1).
__host__ __device__ inline int64_t gate_grad_outputs(int a_cols, int b_cols) { return static_cast<int64_t>(a_cols) * (b_cols + 1); }

// Enough chunks to give the device ~128K threads, at least 16 rows a chunk.
inline int gate_grad_chunks(int64_t rows, int a_cols, int b_cols) {
  const int64_t outputs = gate_grad_outputs(a_cols, b_cols);
  const int64_t want = (131072 + outputs - 1) / outputs;
  const int64_t most = (rows + 15) / 16;
  return static_cast<int>(std::clamp<int64_t>(std::min(want, most), 1, 1024));
}

inline size_t gate_grad_workspace_floats(int64_t rows, int a_cols, int b_cols) {
  return static_cast<size_t>(gate_grad_chunks(rows, a_cols, b_cols)) *
         static_cast<size_t>(gate_grad_outputs(a_cols, b_cols));
}

// static: this header is compiled into more than one .cu file.
static __global__ void __launch_bounds__(kGateGradThreads) gate_grad_partial_kernel(GateGradArgs g, int chunks,
                                                                             float* __restrict__ part) {
  const int64_t outputs = gate_grad_outputs(g.a_cols, g.b_cols);
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= outputs) return;
  const int a = static_cast<int>(o / (g.b_cols + 1)), b = static_cast<int>(o % (g.b_cols + 1));
  const int64_t per = (g.rows.count + chunks - 1) / chunks;
  const int64_t beg = blockIdx.y * per, end = min(g.rows.count, beg + per);
  float acc = 0.f;
  for (int64_t r = beg; r < end; ++r) {
    const int64_t row = g.rows.storage_row(r);
    const float av = g.A[row * g.a_cols + a];
    const float bv = b < g.b_cols ? act_forward(g.b_act, g.B[row * g.b_cols + b]) : 1.f;
    acc = fmaf(av, bv, acc);
  }
  part[blockIdx.y * outputs + o] = acc;
}

template <typename W>
__global__ void __launch_bounds__(kGateGradThreads) gate_grad_finish_kernel(const float* __restrict__ part, int chunks,
                                                                            int a_cols, int b_cols, W* __restrict__ dw,
                                                                            W* __restrict__ db) {
  const int64_t outputs = gate_grad_outputs(a_cols, b_cols);
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= outputs) return;
  float acc = 0.f;
  for (int k = 0; k < chunks; ++k) acc += part[k * outputs + o];
  const int a = static_cast<int>(o / (b_cols + 1)), b = static_cast<int>(o % (b_cols + 1));
  if (b < b_cols) {
    if (dw != nullptr) dw[static_cast<int64_t>(a) * b_cols + b] = from_f32<W>(acc);
  } else if (db != nullptr) {
    db[a] = from_f32<W>(acc);
  }
}

// part: gate_grad_workspace_floats(...) floats. dw [a_cols, b_cols], db [a_cols]
// (either may be null: not computed).
template <typename W>
void launch_gate_grads(const GateGradArgs& g, float* part, W* dw, W* db, cudaStream_t st) {
  if (g.rows.count < 1) return;
  const int chunks = gate_grad_chunks(g.rows.count, g.a_cols, g.b_cols);
  const unsigned blocks = ceil_div(gate_grad_outputs(g.a_cols, g.b_cols), kGateGradThreads);
  gate_grad_partial_kernel<<<dim3(blocks, chunks), kGateGradThreads, 0, st>>>(g, chunks, part);
  gate_grad_finish_kernel<W><<<blocks, kGateGradThreads, 0, st>>>(part, chunks, g.a_cols, g.b_cols, dw, db);
}

}  // namespace kestrel::kernels
