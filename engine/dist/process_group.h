// The processes of a data-parallel job: one per device, started by an MPI
// launcher (`mpirun -np 4 kestrel train ...`). Without a launcher the world
// is this process alone and every collective returns at once.
//
//   dist::init();                          // once, at start (kestrel's main)
//   if (dist::is_main()) write_files();
//   dist::all_reduce_sum_(grad);           // every rank, same order and shapes
//
// CPU tensors travel by MPI. CUDA tensors by NCCL when it loads
// (engine/dist/nccl.h), otherwise through host memory and MPI.
#pragma once
#include <cstddef>
#include <vector>

#include "engine/tensor.h"

namespace kestrel::dist {

// Joins the job this process was launched in: under mpirun (or another
// PMI launcher) it initialises MPI; otherwise a world of one. Idempotent.
// Throws ValueError when launched with several processes by a build without MPI.
void init();
// Leaves the job (NCCL communicators, then MPI). init() registers it at exit.
void finalize();

int rank();
int world_size();
int local_rank();  // index among this node's processes: which GPU to use
int local_size();
inline bool is_main() { return rank() == 0; }
// "MPI (OpenMPI 4.1.4)" or "none": for logs and error messages.
const char* backend_name();

// Collectives. Every rank calls them in the same order, with tensors of the
// same shape, dtype and device type. The tensor must be contiguous.
void all_reduce_sum_(Tensor& t);
void broadcast_(Tensor& t, int root = 0);
void broadcast_bytes(void* data, size_t nbytes, int root = 0);
std::vector<double> all_reduce_sum(std::vector<double> values);  // host numbers (metric counts)
// The same sum, started and left running where the backend allows: CUDA
// tensors by NCCL on a side stream after the current stream's work so far,
// CPU tensors by a non-blocking MPI all-reduce; otherwise done at the call.
// `t` must stay alive and untouched until finish_all_reduces(), after which
// the host (CPU) or the current stream's later work (CUDA) sees every sum.
void start_all_reduce_sum_(Tensor& t);
void finish_all_reduces();
void barrier();

// Ends every process of the job with `code` (a failing rank must not leave the
// others waiting in a collective). Exits normally in a world of one.
[[noreturn]] void abort(int code);

}  // namespace kestrel::dist
