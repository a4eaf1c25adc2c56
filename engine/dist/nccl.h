// NCCL collectives for CUDA tensors. libnccl is loaded at run time (dlopen),
// so binaries start, and single-GPU runs work, where it is not installed; only
// a multi-GPU job then falls back to copying through host memory and MPI.
#pragma once
#include <memory>
#include <string>

#include "engine/tensor.h"

namespace kestrel::dist {

// True when libnccl loaded (and KESTREL_NCCL is not 0). `why` gets the reason when not.
bool nccl_enabled(std::string* why = nullptr);

// One communicator over the world's ranks for one device of this process.
class NcclCommunicator {
 public:
  // A fresh id for a new communicator: made on one rank, sent to the others.
  static std::string new_unique_id();
  // Every rank calls this with the same id; `device` is this rank's GPU.
  NcclCommunicator(int world_size, int rank, const std::string& unique_id, Device device);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // On the device's current stream, ordered with the ops around them.
  void all_reduce_sum_(Tensor& t);
  void broadcast_(Tensor& t, int root);
  // On the communicator's own stream, after the current stream's work so far,
  // so later kernels on the current stream overlap it. `t` must stay alive and
  // untouched until join_started() (which orders the current stream after it).
  void start_all_reduce_sum_(Tensor& t);
  void join_started();
  Device device() const { return device_; }

 private:
  struct Handle;
  std::unique_ptr<Handle> handle_;
  Device device_;
};

// The world's communicator for `device`, created on first use (a collective:
// every rank must reach it).
NcclCommunicator& nccl_communicator(Device device);
void release_nccl_communicators();

}  // namespace kestrel::dist
