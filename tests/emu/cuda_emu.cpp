// The kernel emulator's scheduler: blocks one after another, a block's
// threads as fibers. See cuda_emu.h for the model.
#include "tests/emu/cuda_emu.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

// Fiber switch: save the callee-saved registers and the FP control words on
// the current stack, store its pointer in *from, load `to` and restore. One
// call costs nanoseconds; swapcontext's signal-mask syscall made the emulator
// spend half its time in the kernel.
extern "C" void kestrel_emu_switch(void** from, void* to);
asm(R"(
  .text
  .globl kestrel_emu_switch
  .type kestrel_emu_switch, @function
kestrel_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kestrel_emu_switch, .-kestrel_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace kestrel::emu {

uint3 block_idx;
dim3 block_dim, grid_dim;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxSharedBytes = 48 * 1024;  // without cudaFuncSetAttribute, as on the hardware

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  uint3 tid;
  int lane = 0, warp = 0;
  State state = State::Done;
  bool vote = false;  // predicate offered at the current __syncthreads_count
  std::vector<unsigned char> stack;
};

struct Scheduler {
  std::vector<Fiber> fibers;
  void* home = nullptr;
  Fiber* current = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::vector<unsigned char> shared;
  // Shuffle exchange slots: [thread][8 bytes], and which lanes offered a value.
  std::vector<unsigned char> slots = std::vector<unsigned char>(kMaxThreads * 8);
  int votes = 0;  // true predicates at the last released block barrier
  const Launch* launch = nullptr;
  std::string error;
  cudaError_t last_error = cudaSuccess;
};

Scheduler& sched() {
  static Scheduler s;
  return s;
}

[[noreturn]] void fiber_main() {
  Scheduler& s = sched();
  s.body(s.ctx);
  s.current->state = State::Done;
  kestrel_emu_switch(&s.current->sp, s.home);
  __builtin_unreachable();  // a finished fiber is never switched to again
}

void park(State st) {
  Scheduler& s = sched();
  s.current->state = st;
  kestrel_emu_switch(&s.current->sp, s.home);
}

// A fresh stack whose first switch "returns" into fiber_main with the stack
// aligned as after a call.
void* fresh_stack(std::vector<unsigned char>& stack) {
  uintptr_t top = reinterpret_cast<uintptr_t>(stack.data() + stack.size()) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;  // fake return address of fiber_main; keeps (entry rsp + 8) 16-aligned
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);
  for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--sp = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  return sp;
}

std::string where(const Launch& l) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s<<<(%u,%u,%u), (%u,%u,%u), %zu>>> block (%u,%u,%u)", l.kernel, l.grid.x, l.grid.y,
                l.grid.z, l.block.x, l.block.y, l.block.z, l.shared_bytes, block_idx.x, block_idx.y, block_idx.z);
  return buf;
}

std::string check_config(const Launch& l) {
  const unsigned long long threads = 1ull * l.block.x * l.block.y * l.block.z;
  if (l.grid.x == 0 || l.grid.y == 0 || l.grid.z == 0) return "empty grid";
  if (threads == 0) return "empty block";
  if (threads > kMaxThreads) return "more than 1024 threads per block";
  if (l.block.z > 64) return "blockDim.z over 64";
  if (l.grid.y > 65535 || l.grid.z > 65535) return "gridDim.y or gridDim.z over 65535";
  if (l.grid.x > 2147483647u) return "gridDim.x over 2^31-1";
  if (l.shared_bytes > kMaxSharedBytes) return "over 48 KiB of dynamic shared memory";
  return "";
}

// Runs one block to completion; returns an empty string or what went wrong.
std::string run_block(Scheduler& s, int threads, bool reverse) {
  for (int i = 0; i < threads; ++i) {
    Fiber& f = s.fibers[i];
    f.tid = uint3{static_cast<unsigned>(i) % block_dim.x, static_cast<unsigned>(i) / block_dim.x % block_dim.y,
                  static_cast<unsigned>(i) / (block_dim.x * block_dim.y)};
    f.lane = i % 32;
    f.warp = i / 32;
    f.state = State::Ready;
    f.sp = fresh_stack(f.stack);
  }
  const int warps = (threads + 31) / 32;
  for (;;) {
    for (int k = 0; k < threads; ++k) {
      Fiber& f = s.fibers[reverse ? threads - 1 - k : k];
      if (f.state != State::Ready) continue;
      s.current = &f;
      kestrel_emu_switch(&s.home, f.sp);
    }
    // Everyone is done or waiting at a barrier. Warp barriers first: a warp
    // whose lanes all wait at a shuffle goes on.
    bool released = false;
    for (int w = 0; w < warps; ++w) {
      const int lo = w * 32, hi = std::min(threads, lo + 32);
      int waiting = 0;
      for (int i = lo; i < hi; ++i) waiting += s.fibers[i].state == State::AtWarpBarrier;
      if (waiting == 0) continue;
      if (hi - lo < 32) return "a full-mask warp shuffle in a partial warp (block size not a multiple of 32)";
      if (waiting < hi - lo) return "a warp shuffle that some lanes of the warp never reach (exited or at __syncthreads)";
      for (int i = lo; i < hi; ++i) s.fibers[i].state = State::Ready;
      released = true;
    }
    if (released) continue;
    int done = 0, at_barrier = 0;
    for (int i = 0; i < threads; ++i) {
      done += s.fibers[i].state == State::Done;
      at_barrier += s.fibers[i].state == State::AtBlockBarrier;
    }
    if (done == threads) return "";
    if (done > 0) return "__syncthreads reached by some threads of the block while others had exited";
    if (at_barrier != threads) return "deadlock: threads wait at different barriers";
    s.votes = 0;
    for (int i = 0; i < threads; ++i) {
      s.votes += s.fibers[i].vote;
      s.fibers[i].state = State::Ready;
    }
  }
}

}  // namespace

const uint3& thread_idx() { return sched().current->tid; }

unsigned char* dynamic_shared() { return sched().shared.data(); }

int sync_block(bool predicate) {
  Scheduler& s = sched();
  s.current->vote = predicate;
  park(State::AtBlockBarrier);
  return s.votes;  // stable until every thread has arrived at the next barrier
}

void shuffle_xor(void* v, size_t bytes, unsigned mask, int lane_mask) {
  Scheduler& s = sched();
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda emulator: only full-mask shuffles are modelled\n");
    std::abort();
  }
  const int me = s.current->warp * 32 + s.current->lane;
  const int other = s.current->warp * 32 + ((s.current->lane ^ lane_mask) & 31);
  std::memcpy(&s.slots[static_cast<size_t>(me) * 8], v, bytes);
  park(State::AtWarpBarrier);  // every lane has offered its value
  std::memcpy(v, &s.slots[static_cast<size_t>(other) * 8], bytes);
  park(State::AtWarpBarrier);  // every lane has read before any slot is reused
}

void run(const Launch& launch, void (*body)(void*), void* ctx) {
  // One launch at a time, whichever host thread asks: the device is serial here.
  static std::mutex one_launch;
  std::lock_guard<std::mutex> lock(one_launch);
  Scheduler& s = sched();
  const std::string bad = check_config(launch);
  if (!bad.empty()) {
    s.error = std::string(launch.kernel) + ": invalid launch configuration: " + bad;
    s.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const int threads = static_cast<int>(launch.block.x * launch.block.y * launch.block.z);
  if (s.fibers.size() < static_cast<size_t>(threads)) {
    s.fibers.resize(threads);
    for (Fiber& f : s.fibers)
      if (f.stack.empty()) f.stack.resize(kStackBytes);
  }
  block_dim = launch.block;
  grid_dim = launch.grid;
  s.body = body;
  s.ctx = ctx;
  s.launch = &launch;
  s.shared.assign(std::max<size_t>(launch.shared_bytes, 16), 0xff);
  uint64_t index = 0;
  for (unsigned z = 0; z < launch.grid.z; ++z)
    for (unsigned y = 0; y < launch.grid.y; ++y)
      for (unsigned x = 0; x < launch.grid.x; ++x, ++index) {
        block_idx = uint3{x, y, z};
        std::fill(s.shared.begin(), s.shared.end(), 0xff);  // NaN: unwritten shared memory poisons results
        const std::string err = run_block(s, threads, index % 2 == 1);
        if (!err.empty()) {
          s.error = where(launch) + ": " + err;
          std::fprintf(stderr, "cuda emulator: %s\n", s.error.c_str());
          s.last_error = cudaErrorLaunchFailure;
          s.current = nullptr;
          return;
        }
      }
  s.current = nullptr;
}

cudaError_t launch_error(bool clear) {
  const cudaError_t e = sched().last_error;
  if (clear) sched().last_error = cudaSuccess;
  return e;
}

const char* launch_error_message() { return sched().error.c_str(); }

}  // namespace kestrel::emu

