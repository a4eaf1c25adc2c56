// The NCCL calls Kestrel makes (engine/dist/nccl.cpp), for the CPU emulator.
// Emulated device memory is host memory and streams run synchronously, so a
// collective is the MPI one over the same pointers, done at the call. Without
// MPI (or outside mpirun) the world is one rank and a collective leaves the data
// as it is. Half types are summed in f64 and rounded once (NCCL rounds after
// each addition; for the two ranks of the tests that is the same).
#include <nccl.h>

#include <cstring>
#include <vector>

#include "tests/emu/cuda_emu.h"
#include "tests/emu/element.h"
#if defined(KESTREL_HAVE_MPI)
#include <mpi.h>
#endif

struct ncclComm {
  int nranks = 1;
  int rank = 0;
};

namespace {

// This process's place in MPI_COMM_WORLD, or {0, 1} outside an MPI job.
struct Place {
  int rank = 0, size = 1;
};
Place world_place() {
  Place p;
#if defined(KESTREL_HAVE_MPI)
  int on = 0;
  MPI_Initialized(&on);
  if (on) {
    MPI_Comm_rank(MPI_COMM_WORLD, &p.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &p.size);
  }
#endif
  return p;
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    default: return 8;
  }
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof(id->internal));
  std::memcpy(id->internal, "kestrel-emu", 11);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (std::memcmp(id.internal, "kestrel-emu", 11) != 0) return ncclInvalidArgument;
  // The emulator's world is MPI_COMM_WORLD: the ranks must be its ranks.
  const Place place = world_place();
  if (nranks != place.size || rank != place.rank) return ncclInvalidUsage;
  *comm = new ncclComm{nranks, rank};
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL)";
    case ncclInvalidUsage: return "invalid usage (emulated NCCL)";
    default: return "error (emulated NCCL)";
  }
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  if (op != ncclSum || !comm) return ncclInvalidArgument;
  kestrel::emu::log_collective(stream);
  if (send != recv) std::memmove(recv, send, count * type_size(type));
  if (comm->nranks == 1) return ncclSuccess;
#if defined(KESTREL_HAVE_MPI)
  MPI_Datatype mpi = MPI_DATATYPE_NULL;
  switch (type) {
    case ncclFloat32: mpi = MPI_FLOAT; break;
    case ncclFloat64: mpi = MPI_DOUBLE; break;
    case ncclInt32: mpi = MPI_INT32_T; break;
    case ncclInt64: mpi = MPI_INT64_T; break;
    case ncclUint8: mpi = MPI_UINT8_T; break;
    case ncclInt8: mpi = MPI_INT8_T; break;
    case ncclFloat16: case ncclBfloat16: {
      const int kind = type == ncclFloat16 ? kestrel::emu::kF16 : kestrel::emu::kBF16;
      std::vector<double> wide(count);
      for (size_t i = 0; i < count; ++i) wide[i] = kestrel::emu::load_element(recv, kind, static_cast<int64_t>(i));
      if (MPI_Allreduce(MPI_IN_PLACE, wide.data(), static_cast<int>(count), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD))
        return ncclSystemError;
      for (size_t i = 0; i < count; ++i) kestrel::emu::store_element(recv, kind, static_cast<int64_t>(i), wide[i]);
      return ncclSuccess;
    }
    default: return ncclInvalidArgument;
  }
  return MPI_Allreduce(MPI_IN_PLACE, recv, static_cast<int>(count), mpi, MPI_SUM, MPI_COMM_WORLD) == MPI_SUCCESS
             ? ncclSuccess
             : ncclSystemError;
#else
  return ncclInvalidUsage;
#endif
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!comm || root < 0 || root >= comm->nranks) return ncclInvalidArgument;
  kestrel::emu::log_collective(stream);
  const size_t bytes = count * type_size(type);
  if (comm->rank == root && send != recv) std::memmove(recv, send, bytes);
  if (comm->nranks == 1) return ncclSuccess;
#if defined(KESTREL_HAVE_MPI)
  return MPI_Bcast(recv, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD) == MPI_SUCCESS ? ncclSuccess
                                                                                                  : ncclSystemError;
#else
  return ncclInvalidUsage;
#endif
}

}  // extern "C"
