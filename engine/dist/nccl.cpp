#include "engine/dist/nccl.h"

#include <cstdlib>
#include <map>

#include "engine/dist/process_group.h"
#if defined(KESTREL_HAVE_NCCL)
#include <dlfcn.h>
#include <nccl.h>

#include "engine/cuda/runtime.h"
#endif

namespace kestrel::dist {

#if defined(KESTREL_HAVE_NCCL)

namespace {

// The NCCL entry points Kestrel uses, resolved once.
struct NcclApi {
  ncclResult_t (*get_unique_id)(ncclUniqueId*) = nullptr;
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*comm_destroy)(ncclComm_t) = nullptr;
  ncclResult_t (*all_reduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                             cudaStream_t) = nullptr;
  ncclResult_t (*broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) = nullptr;
  const char* (*error_string)(ncclResult_t) = nullptr;
  std::string unavailable;  // empty when loaded
};

template <typename F>
void resolve(void* lib, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
}

// Never destroyed: dist::finalize() may run from atexit, after static destructors.
const NcclApi& api() {
  static const NcclApi* loaded = new NcclApi([] {
    NcclApi a;
    const char* env = std::getenv("KESTREL_NCCL");
    if (env && std::string(env) == "0") {
      a.unavailable = "KESTREL_NCCL=0";
      return a;
    }
#if defined(KESTREL_CUDA_EMULATOR)
    // tests/emu supplies NCCL (over MPI) when the emulator build has MPI.
    a.get_unique_id = &ncclGetUniqueId;
    a.comm_init_rank = &ncclCommInitRank;
    a.comm_destroy = &ncclCommDestroy;
    a.all_reduce = &ncclAllReduce;
    a.broadcast = &ncclBroadcast;
    a.error_string = &ncclGetErrorString;
#else
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) lib = dlopen("libnccl.so", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
      a.unavailable = std::string("libnccl.so.2 not found (") + dlerror() + ")";
      return a;
    }
    std::string missing;
    resolve(lib, "ncclGetUniqueId", a.get_unique_id, missing);
    resolve(lib, "ncclCommInitRank", a.comm_init_rank, missing);
    resolve(lib, "ncclCommDestroy", a.comm_destroy, missing);
    resolve(lib, "ncclAllReduce", a.all_reduce, missing);
    resolve(lib, "ncclBroadcast", a.broadcast, missing);
    resolve(lib, "ncclGetErrorString", a.error_string, missing);
    if (!missing.empty()) a.unavailable = "libnccl lacks " + missing;
#endif
    return a;
  }());
  return *loaded;
}

void nccl_check(ncclResult_t r, const char* call, const Tensor* t) {
  if (r == ncclSuccess) return;
  throw DeviceError(detail::concat(call, " failed on rank ", rank(), ": ", api().error_string(r),
                                   t ? " (tensor " + shape_str(t->shape()) + " " + dtype_name(t->dtype()) + ")" : ""));
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
    case DType::I8: return ncclInt8;
  }
  throw DTypeError("dist: no NCCL type");
}

}  // namespace

bool nccl_enabled(std::string* why) {
  if (why) *why = api().unavailable;
  return api().unavailable.empty();
}

struct NcclCommunicator::Handle {
  ncclComm_t comm = nullptr;
  // For start_all_reduce_sum_: made on first use.
  cuda::Stream side;
  std::unique_ptr<cuda::Event> inputs_ready, side_done;
  bool started = false;
};

std::string NcclCommunicator::new_unique_id() {
  std::string why;
  KCHECK(nccl_enabled(&why), DeviceError, "NCCL unavailable: ", why);
  ncclUniqueId id;
  nccl_check(api().get_unique_id(&id), "ncclGetUniqueId", nullptr);
  return std::string(id.internal, sizeof(id.internal));
}

NcclCommunicator::NcclCommunicator(int world_size, int rank, const std::string& unique_id, Device device)
    : handle_(std::make_unique<Handle>()), device_(device) {
  std::string why;
  KCHECK(nccl_enabled(&why), DeviceError, "NCCL unavailable: ", why);
  KCHECK(device.is_cuda(), ValueError, "NcclCommunicator: ", device.str(), " is not a CUDA device");
  ncclUniqueId id;
  KCHECK(unique_id.size() == sizeof(id.internal), ValueError, "NcclCommunicator: malformed unique id");
  std::copy(unique_id.begin(), unique_id.end(), id.internal);
  cuda::DeviceGuard guard(device.index);
  nccl_check(api().comm_init_rank(&handle_->comm, world_size, id, rank), "ncclCommInitRank", nullptr);
}

NcclCommunicator::~NcclCommunicator() {
  if (handle_ && handle_->comm) api().comm_destroy(handle_->comm);
}

namespace {
void check_same_device(const Tensor& t, Device communicator, const char* op) {
  KCHECK(t.device() == communicator, ValueError, op, ": tensor on ", t.device().str(), ", communicator on ",
         communicator.str());
}
}  // namespace

void NcclCommunicator::all_reduce_sum_(Tensor& t) {
  check_same_device(t, device_, "NCCL all-reduce");
  cuda::DeviceGuard guard(device_.index);
  nccl_check(api().all_reduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()),
                              ncclSum, handle_->comm, cuda::current_stream(device_.index)),
             "ncclAllReduce", &t);
}

void NcclCommunicator::start_all_reduce_sum_(Tensor& t) {
  check_same_device(t, device_, "NCCL all-reduce");
  cuda::DeviceGuard guard(device_.index);
  Handle& h = *handle_;
  if (!h.side_done) {
    h.side = cuda::Stream::create(device_.index);
    h.inputs_ready = std::make_unique<cuda::Event>(/*timing=*/false);
    h.side_done = std::make_unique<cuda::Event>(/*timing=*/false);
  }
  h.inputs_ready->record(cuda::current_stream(device_.index));
  h.inputs_ready->wait(h.side.handle());
  cuda::record_stream(t.storage()->data(), h.side.handle());  // if freed early, reuse still waits for the reduction
  nccl_check(api().all_reduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()),
                              ncclSum, h.comm, h.side.handle()),
             "ncclAllReduce", &t);
  h.started = true;
}

void NcclCommunicator::join_started() {
  Handle& h = *handle_;
  if (!h.started) return;
  cuda::DeviceGuard guard(device_.index);
  h.side_done->record(h.side.handle());
  h.side_done->wait(cuda::current_stream(device_.index));
  h.started = false;
}

void NcclCommunicator::broadcast_(Tensor& t, int root) {
  check_same_device(t, device_, "NCCL broadcast");
  cuda::DeviceGuard guard(device_.index);
  nccl_check(api().broadcast(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), root,
                             handle_->comm, cuda::current_stream(device_.index)),
             "ncclBroadcast", &t);
}

namespace {
// Never destroyed, as api(): emptied by release_nccl_communicators().
std::map<int, std::unique_ptr<NcclCommunicator>>& communicators() {
  static auto* comms = new std::map<int, std::unique_ptr<NcclCommunicator>>();
  return *comms;
}
}  // namespace

NcclCommunicator& nccl_communicator(Device device) {
  auto& comms = communicators();
  auto it = comms.find(device.index);
  if (it != comms.end()) return *it->second;
  std::string id(sizeof(ncclUniqueId::internal), '\0');
  if (rank() == 0) id = NcclCommunicator::new_unique_id();
  broadcast_bytes(id.data(), id.size(), 0);
  auto comm = std::make_unique<NcclCommunicator>(world_size(), rank(), id, device);
  return *comms.emplace(device.index, std::move(comm)).first->second;
}

void release_nccl_communicators() { communicators().clear(); }

#else  // no CUDA or no nccl.h: CUDA tensors (if any) go through the host

bool nccl_enabled(std::string* why) {
  if (why) *why = "this build has no NCCL (nccl.h was not found)";
  return false;
}
struct NcclCommunicator::Handle {};
std::string NcclCommunicator::new_unique_id() { throw DeviceError("this build has no NCCL"); }
NcclCommunicator::NcclCommunicator(int, int, const std::string&, Device device) : device_(device) {
  throw DeviceError("this build has no NCCL");
}
NcclCommunicator::~NcclCommunicator() = default;
void NcclCommunicator::all_reduce_sum_(Tensor&) {}
void NcclCommunicator::broadcast_(Tensor&, int) {}
void NcclCommunicator::start_all_reduce_sum_(Tensor&) {}
void NcclCommunicator::join_started() {}
NcclCommunicator& nccl_communicator(Device) { throw DeviceError("this build has no NCCL"); }
void release_nccl_communicators() {}

#endif

}  // namespace kestrel::dist
