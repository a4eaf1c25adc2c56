#include "engine/dist/process_group.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>

#include "engine/autograd.h"
#include "engine/dist/nccl.h"
#if defined(KESTREL_HAVE_MPI)
#include <mpi.h>
#endif

namespace kestrel::dist {

namespace {

struct World {
  bool initialized = false;
  bool mpi = false;
  int rank = 0, size = 1, local_rank = 0, local_size = 1;
  std::string backend = "none";
  // Started by start_all_reduce_sum_, ended by finish_all_reduces.
#if defined(KESTREL_HAVE_MPI)
  std::vector<MPI_Request> requests;
#endif
  std::set<int> nccl_devices;
};

World& world() {
  static World w;
  return w;
}

// The process count a launcher announced: OpenMPI's mpirun, or a PMI one
// (MPICH's mpiexec, Slurm's srun --mpi=pmi2). 0 when not launched by one.
int launched_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var)) return std::max(1, std::atoi(v));
  }
  return 0;
}

#if defined(KESTREL_HAVE_MPI)
void mpi_check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw DeviceError(detail::concat(call, " failed on rank ", world().rank, ": ", std::string(text, len)));
}
#define KESTREL_MPI_CHECK(call) mpi_check((call), #call)

int mpi_count(size_t n) {
  KCHECK(n <= static_cast<size_t>(INT32_MAX), ValueError, "dist: ", n, " elements exceed one MPI message");
  return static_cast<int>(n);
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::U8: return MPI_UINT8_T;
    case DType::I8: return MPI_INT8_T;
    default: throw DTypeError(detail::concat("dist: MPI cannot sum ", dtype_name(t), " directly"));
  }
}

// Several ranks on one machine's CPU would each start one OpenMP thread per
// core; share the cores instead, unless OMP_NUM_THREADS says otherwise.
void share_cpu_threads(int local_size) {
  if (local_size <= 1 || std::getenv("OMP_NUM_THREADS")) return;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(std::max(1, cores / local_size));
}
#endif

// Runs `collective` on a copy of t (in host memory, or widened to f32 for a
// half type MPI cannot sum) and writes the result back into t.
template <typename Collective>
void on_staged_copy(Tensor& t, Tensor staged, Collective collective) {
  collective(staged);
  NoGradGuard no_grad;
  t.copy_(staged);
}

void check_contiguous(const Tensor& t, const char* op) {
  KCHECK(t.is_contiguous(), ValueError, "dist::", op, ": the tensor must be contiguous (shape ", shape_str(t.shape()),
         ")");
}

}  // namespace

void init() {
  World& w = world();
  if (w.initialized) return;
  w.initialized = true;
  const int launched = launched_size();
  if (launched == 0) return;
#if defined(KESTREL_HAVE_MPI)
  int already = 0;
  MPI_Initialized(&already);
  if (!already) {
    int provided = 0;
    KESTREL_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  w.mpi = true;
  KESTREL_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank));
  KESTREL_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &w.size));
  MPI_Comm node;
  KESTREL_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &node));
  KESTREL_MPI_CHECK(MPI_Comm_rank(node, &w.local_rank));
  KESTREL_MPI_CHECK(MPI_Comm_size(node, &w.local_size));
  MPI_Comm_free(&node);
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string v(version, static_cast<size_t>(len));
  w.backend = "MPI (" + v.substr(0, v.find(',')) + ")";
  std::atexit(finalize);
  share_cpu_threads(w.local_size);
#else
  KCHECK(launched == 1, ValueError, "launched as one of ", launched,
         " processes, but this kestrel was built without MPI: install libopenmpi-dev and rebuild");
#endif
}

void finalize() {
  World& w = world();
  release_nccl_communicators();
#if defined(KESTREL_HAVE_MPI)
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (w.mpi && !finalized) MPI_Finalize();
#endif
  w.mpi = false;
}

int rank() { return world().rank; }
int world_size() { return world().size; }
int local_rank() { return world().local_rank; }
int local_size() { return world().local_size; }
const char* backend_name() { return world().backend.c_str(); }

void all_reduce_sum_(Tensor& t) {
  if (world_size() == 1) return;
  check_contiguous(t, "all_reduce_sum_");
  const auto reduce = [](Tensor& staged) { all_reduce_sum_(staged); };
  if (t.device().is_cuda()) {
    if (nccl_enabled()) return nccl_communicator(t.device()).all_reduce_sum_(t);
    return on_staged_copy(t, t.cpu(), reduce);
  }
  if (t.dtype() == DType::F16 || t.dtype() == DType::BF16) return on_staged_copy(t, t.to(DType::F32), reduce);
#if defined(KESTREL_HAVE_MPI)
  KESTREL_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), mpi_count(static_cast<size_t>(t.numel())),
                                  mpi_type(t.dtype()), MPI_SUM, MPI_COMM_WORLD));
#endif
}

void start_all_reduce_sum_(Tensor& t) {
  if (world_size() == 1) return;
  check_contiguous(t, "start_all_reduce_sum_");
  if (t.device().is_cuda() && nccl_enabled()) {
    nccl_communicator(t.device()).start_all_reduce_sum_(t);
    world().nccl_devices.insert(t.device().index);
    return;
  }
#if defined(KESTREL_HAVE_MPI)
  if (t.device().is_cpu() && t.dtype() != DType::F16 && t.dtype() != DType::BF16) {
    MPI_Request request;
    KESTREL_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), mpi_count(static_cast<size_t>(t.numel())),
                                     mpi_type(t.dtype()), MPI_SUM, MPI_COMM_WORLD, &request));
    world().requests.push_back(request);
    return;
  }
#endif
  all_reduce_sum_(t);  // staged through a copy: nothing to leave running
}

void finish_all_reduces() {
  World& w = world();
#if defined(KESTREL_HAVE_MPI)
  if (!w.requests.empty()) {
    std::vector<MPI_Request> requests = std::move(w.requests);
    w.requests.clear();
    KESTREL_MPI_CHECK(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
  }
#endif
  for (int device : w.nccl_devices) nccl_communicator(Device::cuda(device)).join_started();
  w.nccl_devices.clear();
}

void broadcast_(Tensor& t, int root) {
  if (world_size() == 1) return;
  check_contiguous(t, "broadcast_");
  if (t.device().is_cuda()) {
    if (nccl_enabled()) return nccl_communicator(t.device()).broadcast_(t, root);
    return on_staged_copy(t, t.cpu(), [root](Tensor& staged) { broadcast_(staged, root); });
  }
  broadcast_bytes(t.data_ptr(), t.nbytes(), root);
}

void broadcast_bytes(void* data, size_t nbytes, int root) {
  if (world_size() == 1) return;
  KCHECK(root >= 0 && root < world_size(), ValueError, "dist::broadcast: root ", root, " is not a rank of a world of ",
         world_size());
#if defined(KESTREL_HAVE_MPI)
  KESTREL_MPI_CHECK(MPI_Bcast(data, mpi_count(nbytes), MPI_BYTE, root, MPI_COMM_WORLD));
#endif
}

std::vector<double> all_reduce_sum(std::vector<double> values) {
  if (world_size() == 1 || values.empty()) return values;
#if defined(KESTREL_HAVE_MPI)
  KESTREL_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values.data(), mpi_count(values.size()), MPI_DOUBLE, MPI_SUM,
                                  MPI_COMM_WORLD));
#endif
  return values;
}

void barrier() {
  if (world_size() == 1) return;
#if defined(KESTREL_HAVE_MPI)
  KESTREL_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
#endif
}

void abort(int code) {
#if defined(KESTREL_HAVE_MPI)
  if (world().mpi && world_size() > 1) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
  }
#endif
  std::exit(code);
}

}  // namespace kestrel::dist
