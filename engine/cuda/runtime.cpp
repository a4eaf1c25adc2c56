// CUDA runtime layer; see runtime.h. Written and compiled, untested on GPU.
#include "engine/cuda/runtime.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "engine/env.h"
#include "engine/storage.h"

namespace kestrel::cuda {

// ---------------------------------------------------------------- devices

namespace {
struct DeviceInfo {
  int count = 0;
  std::string reason;
};

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    DeviceInfo d;
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // clear the error so later calls start clean
      d.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
      n = 0;
    } else if (n == 0) {
      d.reason = "cudaGetDeviceCount reports no CUDA device";
    }
    d.count = n;
    return d;
  }();
  return info;
}

void require_device() {
  KCHECK(device_info().count > 0, DeviceError, "CUDA is not available: ", device_info().reason);
}

int resolve(int device) { return device < 0 ? current_device() : device; }
}  // namespace

bool cuda_available() { return device_info().count > 0; }
int device_count() { return device_info().count; }
std::string unavailable_reason() { return device_info().reason; }

int current_device() {
  require_device();
  int d = 0;
  KESTREL_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int index) {
  require_device();
  KCHECK(index >= 0 && index < device_count(), DeviceError, "cuda:", index, " does not exist (this machine has ",
         device_count(), " CUDA device", device_count() == 1 ? "" : "s", ")");
  KESTREL_CUDA_CHECK(cudaSetDevice(index));
}

std::string device_name(int index) {
  require_device();
  cudaDeviceProp prop;
  KESTREL_CUDA_CHECK_CTX(cudaGetDeviceProperties(&prop, index), "device ", index);
  return prop.name;
}

int multiprocessor_count(int index) {
  require_device();
  int v = 0;
  KESTREL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, index));
  return v;
}

DeviceGuard::DeviceGuard(int index) {
  previous_ = current_device();
  if (index != previous_) set_device(index);
}
DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line, const std::string& context) {
  // Sticky errors (a faulting kernel) poison the context; a plain error is
  // cleared here so the next call does not report it again.
  (void)cudaGetLastError();
  std::string msg = std::string("CUDA call failed: ") + call + ": " + cudaGetErrorName(err) + " (" +
                    cudaGetErrorString(err) + ")";
  if (!context.empty()) msg += " [" + context + "]";
  const char* base = std::strrchr(file, '/');
  msg += " at " + std::string(base != nullptr ? base + 1 : file) + ":" + std::to_string(line);
  throw DeviceError(msg);
}

// ---------------------------------------------------------------- streams, events

Stream Stream::create(int device, bool non_blocking) {
  Stream s;
  s.device_ = resolve(device);
  DeviceGuard g(s.device_);
  KESTREL_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream_, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault));
  s.owned_ = true;
  return s;
}
Stream::~Stream() {
  if (owned_ && stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}
Stream::Stream(Stream&& o) noexcept : stream_(o.stream_), device_(o.device_), owned_(o.owned_) {
  o.stream_ = nullptr;
  o.owned_ = false;
}
Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (owned_ && stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    stream_ = o.stream_;
    device_ = o.device_;
    owned_ = o.owned_;
    o.stream_ = nullptr;
    o.owned_ = false;
  }
  return *this;
}
void Stream::synchronize() const { KESTREL_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
bool Stream::query() const {
  const cudaError_t e = cudaStreamQuery(stream_);
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  KESTREL_CUDA_CHECK(e);
  return true;
}

namespace {
constexpr int kMaxDevices = 64;
thread_local cudaStream_t t_current_stream[kMaxDevices] = {};
}  // namespace

cudaStream_t current_stream(int device) {
  const int d = resolve(device);
  return d < kMaxDevices ? t_current_stream[d] : nullptr;
}
void set_current_stream(cudaStream_t stream, int device) {
  const int d = resolve(device);
  KCHECK(d < kMaxDevices, DeviceError, "device index ", d, " out of range");
  t_current_stream[d] = stream;
}
StreamScope::StreamScope(cudaStream_t stream, int device) : device_(resolve(device)) {
  previous_ = current_stream(device_);
  set_current_stream(stream, device_);
}
StreamScope::~StreamScope() { t_current_stream[device_] = previous_; }

Event::Event(bool timing) {
  require_device();
  KESTREL_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
}
Event::~Event() {
  if (event_ != nullptr) (void)cudaEventDestroy(event_);
}
void Event::record(cudaStream_t stream) { KESTREL_CUDA_CHECK(cudaEventRecord(event_, stream)); }
void Event::synchronize() const { KESTREL_CUDA_CHECK(cudaEventSynchronize(event_)); }
bool Event::query() const {
  const cudaError_t e = cudaEventQuery(event_);
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  KESTREL_CUDA_CHECK(e);
  return true;
}
void Event::wait(cudaStream_t stream) const { KESTREL_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }
float Event::elapsed_ms(const Event& end) const {
  float ms = 0.f;
  KESTREL_CUDA_CHECK(cudaEventElapsedTime(&ms, event_, end.event_));
  return ms;
}

// ---------------------------------------------------------------- caching allocator

size_t allocation_bucket(size_t nbytes) {
  if (nbytes == 0) return 0;
  if (nbytes <= 4096) return (nbytes + 511) / 512 * 512;
  int top = 63;
  while (((nbytes - 1) >> top) == 0) --top;  // 2^top <= nbytes-1 < 2^(top+1)
  const size_t step = size_t{1} << (top - 2);  // four classes per power of two
  return (nbytes + step - 1) / step * step;
}

namespace {

struct Block {
  void* ptr = nullptr;
  size_t size = 0;  // bucket size
  int device = 0;
  cudaStream_t stream = nullptr;           // allocation stream: free list owner
  std::vector<cudaStream_t> extra_streams;  // record_stream()
};

struct PendingFree {
  Block block;
  std::vector<cudaEvent_t> events;
};

class CachingAllocator final : public DeviceAllocator {
 public:
  CachingAllocator() {
    caching_ = !env_switch("KESTREL_CUDA_NO_CACHE");
  }

  bool caching() const { return caching_; }

  void* allocate(size_t nbytes, int device_index) override {
    cudaStream_t stream = current_stream(device_index);
    void* ptr = allocate_on(nbytes, device_index, stream);
    if (ptr != nullptr && poison_.load(std::memory_order_relaxed)) {
      DeviceGuard g(device_index);
      KESTREL_CUDA_CHECK_CTX(cudaMemsetAsync(ptr, 0xFF, nbytes, stream), "poisoning a new ", nbytes, "-byte tensor");
    }
    return ptr;
  }

  void set_poison(bool on) { poison_.store(on, std::memory_order_relaxed); }

  void* allocate_on(size_t nbytes, int device, cudaStream_t stream) {
    require_device();
    if (nbytes == 0) return nullptr;
    KCHECK(device >= 0 && device < device_count() && device < kMaxDevices, DeviceError, "cuda:", device,
           " does not exist (this machine has ", device_count(), " CUDA devices)");
    const size_t size = caching_ ? allocation_bucket(nbytes) : nbytes;
    std::lock_guard<std::mutex> lock(mu_);
    AllocatorStats& st = stats_[device];
    ++st.alloc_count;
    if (caching_) {
      process_pending();
      auto& list = free_[FreeKey{device, stream, size}];
      if (!list.empty()) {
        Block b = std::move(list.back());
        list.pop_back();
        ++st.cache_hits;
        return hand_out(std::move(b), st);
      }
    }
    DeviceGuard g(device);
    void* ptr = nullptr;
    cudaError_t e = cudaMalloc(&ptr, size);
    if (e == cudaErrorMemoryAllocation && caching_) {
      (void)cudaGetLastError();
      release_cached(device);  // give unused blocks back and try once more
      e = cudaMalloc(&ptr, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw DeviceError(detail::concat("CUDA out of memory (cudaMalloc of ", size, " bytes on cuda:", device,
                                       " failed: ", cudaGetErrorString(e), "); allocated ", st.allocated,
                                       " bytes, reserved ", st.reserved, " bytes by Kestrel"));
    }
    ++st.cuda_mallocs;
    st.reserved += size;
    st.peak_reserved = std::max(st.peak_reserved, st.reserved);
    Block b;
    b.ptr = ptr;
    b.size = size;
    b.device = device;
    b.stream = stream;
    return hand_out(std::move(b), st);
  }

  void deallocate(void* ptr, size_t, int) override { free_block(ptr); }

  void free_block(void* ptr) {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(ptr);
    KCHECK(it != active_.end(), DeviceError, "CUDA free of a pointer the caching allocator did not hand out");
    Block b = std::move(it->second);
    active_.erase(it);
    AllocatorStats& st = stats_[b.device];
    st.allocated -= b.size;
    if (!caching_) {
      // While a graph's pool is private, cudaFree could meet its capture
      // (refused) or free memory it replays into: the block waits.
      if (!private_.empty()) {
        parked_.push_back(std::move(b));
        return;
      }
      st.reserved -= b.size;
      DeviceGuard g(b.device);
      KESTREL_CUDA_CHECK(cudaFree(b.ptr));
      return;
    }
    if (b.extra_streams.empty()) {
      free_[FreeKey{b.device, b.stream, b.size}].push_back(std::move(b));
      return;
    }
    // Used on other streams: reusable once each of them passes this point.
    DeviceGuard g(b.device);
    PendingFree pf;
    for (cudaStream_t s : b.extra_streams) {
      cudaEvent_t ev = nullptr;
      KESTREL_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
      KESTREL_CUDA_CHECK(cudaEventRecord(ev, s));
      pf.events.push_back(ev);
    }
    b.extra_streams.clear();
    pf.block = std::move(b);
    pending_.push_back(std::move(pf));
  }

  void record_stream(void* ptr, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(ptr);
    KCHECK(it != active_.end(), DeviceError, "record_stream on a pointer the caching allocator did not hand out");
    Block& b = it->second;
    if (stream == b.stream) return;
    for (cudaStream_t s : b.extra_streams)
      if (s == stream) return;
    b.extra_streams.push_back(stream);
  }

  void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) override {
    copy_sync(dst, dst_dev, src, src_dev, nbytes);
  }

  void memset_zero(void* ptr, size_t nbytes, int device_index) override {
    DeviceGuard g(device_index);
    KESTREL_CUDA_CHECK_CTX(cudaMemsetAsync(ptr, 0, nbytes, current_stream(device_index)), nbytes, " bytes");
  }

  void begin_private(cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    KCHECK(stream != nullptr, DeviceError, "a private pool needs a stream of its own, not the legacy default stream");
    private_.insert(stream);
  }

  // Gives the stream's free and parked blocks back to the driver once its work is done.
  void end_private(cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    if (private_.erase(stream) == 0) return;
    KESTREL_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<Block> released;
    for (auto it = free_.begin(); it != free_.end();) {
      if (it->first.stream != stream) {
        ++it;
        continue;
      }
      for (Block& b : it->second) released.push_back(std::move(b));
      it = free_.erase(it);
    }
    for (auto it = parked_.begin(); it != parked_.end();) {
      if (private_.count(it->stream) != 0) {
        ++it;
        continue;
      }
      released.push_back(std::move(*it));
      it = parked_.erase(it);
    }
    for (Block& b : released) {
      DeviceGuard g(b.device);
      KESTREL_CUDA_CHECK(cudaFree(b.ptr));
      stats_[b.device].reserved -= b.size;
    }
  }

  AllocatorStats stats(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_[device];
  }
  void reset_peak(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_[device].peak_allocated = stats_[device].allocated;
    stats_[device].peak_reserved = stats_[device].reserved;
  }
  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    for (int d = 0; d < device_count() && d < kMaxDevices; ++d) {
      DeviceGuard g(d);  // synchronize device d, not whichever is current
      (void)cudaDeviceSynchronize();
      release_cached(d);
    }
  }

 private:
  struct FreeKey {
    int device;
    cudaStream_t stream;
    size_t size;
    bool operator<(const FreeKey& o) const {
      if (device != o.device) return device < o.device;
      if (stream != o.stream) return std::less<cudaStream_t>()(stream, o.stream);
      return size < o.size;
    }
  };

  void* hand_out(Block b, AllocatorStats& st) {
    st.allocated += b.size;
    st.peak_allocated = std::max(st.peak_allocated, st.allocated);
    void* p = b.ptr;
    active_.emplace(p, std::move(b));
    return p;
  }

  // Moves pending frees whose streams have all passed to the free lists.
  void process_pending() {
    for (size_t i = 0; i < pending_.size();) {
      bool done = true;
      for (cudaEvent_t ev : pending_[i].events) {
        const cudaError_t e = cudaEventQuery(ev);
        if (e == cudaErrorNotReady) {
          (void)cudaGetLastError();
          done = false;
          break;
        }
      }
      if (!done) {
        ++i;
        continue;
      }
      for (cudaEvent_t ev : pending_[i].events) (void)cudaEventDestroy(ev);
      Block b = std::move(pending_[i].block);
      free_[FreeKey{b.device, b.stream, b.size}].push_back(std::move(b));
      pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  void release_cached(int device) {
    DeviceGuard g(device);
    for (auto it = free_.begin(); it != free_.end();) {
      if (it->first.device != device || private_.count(it->first.stream) != 0) {
        ++it;
        continue;
      }
      for (Block& b : it->second) {
        (void)cudaFree(b.ptr);
        stats_[device].reserved -= b.size;
      }
      it = free_.erase(it);
    }
  }

  bool caching_ = true;
  std::atomic<bool> poison_{false};
  std::mutex mu_;
  std::unordered_map<void*, Block> active_;
  std::map<FreeKey, std::vector<Block>> free_;
  std::vector<PendingFree> pending_;
  std::set<cudaStream_t> private_;  // begin_private_pool streams
  std::vector<Block> parked_;       // frees without the cache while a pool is private
  AllocatorStats stats_[kMaxDevices];
};

CachingAllocator& allocator() {
  // Never destroyed: Storage objects with static lifetime may free after main.
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

void* device_allocate(size_t nbytes, int device, cudaStream_t stream) {
  const int d = resolve(device);
  return allocator().allocate_on(nbytes, d, stream != nullptr ? stream : current_stream(d));
}
void device_free(void* ptr) { allocator().free_block(ptr); }
void record_stream(void* ptr, cudaStream_t stream) { allocator().record_stream(ptr, stream); }
AllocatorStats allocator_stats(int device) {
  const int d = resolve(device);
  KCHECK(d < kMaxDevices, DeviceError, "device index ", d, " out of range");
  return allocator().stats(d);
}
void reset_peak_stats(int device) { allocator().reset_peak(resolve(device)); }
void empty_cache() {
  if (cuda_available()) allocator().empty();
}
bool caching_enabled() { return allocator().caching(); }
void begin_private_pool(cudaStream_t stream) { allocator().begin_private(stream); }
void end_private_pool(cudaStream_t stream) { allocator().end_private(stream); }
void set_poison_allocations(bool on) { allocator().set_poison(on); }

void ensure_registered() {
  static const bool once = [] {
    register_device_allocator(DeviceType::CUDA, &allocator());
    return true;
  }();
  (void)once;
}

// ---------------------------------------------------------------- pinned host memory

namespace {
struct PinnedCache {
  std::mutex mu;
  std::unordered_map<void*, size_t> active;
  std::map<size_t, std::vector<void*>> free;
};
PinnedCache& pinned_cache() {
  static PinnedCache* c = new PinnedCache();
  return *c;
}
}  // namespace

void* pinned_allocate(size_t nbytes) {
  require_device();
  if (nbytes == 0) return nullptr;
  const size_t size = allocation_bucket(nbytes);
  PinnedCache& c = pinned_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto& list = c.free[size];
  void* p = nullptr;
  if (!list.empty()) {
    p = list.back();
    list.pop_back();
  } else {
    KESTREL_CUDA_CHECK_CTX(cudaHostAlloc(&p, size, cudaHostAllocPortable), size, " bytes of pinned host memory");
  }
  c.active.emplace(p, size);
  return p;
}

void pinned_free(void* ptr) {
  if (ptr == nullptr) return;
  PinnedCache& c = pinned_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.active.find(ptr);
  KCHECK(it != c.active.end(), DeviceError, "pinned_free of a pointer pinned_allocate did not hand out");
  c.free[it->second].push_back(ptr);
  c.active.erase(it);
}

// ---------------------------------------------------------------- copies

void copy_async(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return;
  require_device();
  const int dev = dst_dev.is_cuda() ? dst_dev.index : src_dev.index;
  DeviceGuard g(dev);
  if (stream == nullptr) stream = current_stream(dev);
  cudaMemcpyKind kind = cudaMemcpyDefault;
  if (dst_dev.is_cuda() && src_dev.is_cuda()) {
    kind = cudaMemcpyDeviceToDevice;
    if (dst_dev.index != src_dev.index) {
      // A peer copy queued on the destination's stream does not wait for the
      // source device's work: the kernel still writing src must finish first.
      {
        DeviceGuard on_src(src_dev.index);
        Event src_done(false);
        src_done.record(current_stream(src_dev.index));
        src_done.wait(stream);
      }  // destroying a recorded event is safe: CUDA frees it once it completes
      KESTREL_CUDA_CHECK_CTX(cudaMemcpyPeerAsync(dst, dst_dev.index, src, src_dev.index, nbytes, stream), nbytes,
                             " bytes ", src_dev.str(), " -> ", dst_dev.str());
      return;
    }
  } else if (dst_dev.is_cuda()) {
    kind = cudaMemcpyHostToDevice;
  } else if (src_dev.is_cuda()) {
    kind = cudaMemcpyDeviceToHost;
  } else {
    kind = cudaMemcpyHostToHost;
  }
  KESTREL_CUDA_CHECK_CTX(cudaMemcpyAsync(dst, src, nbytes, kind, stream), nbytes, " bytes ", src_dev.str(), " -> ",
                         dst_dev.str());
}

namespace {

// Small host-to-device copies go through pinned blocks, so the host need not
// wait for the stream to drain: each block returns to the pinned cache once
// the event recorded after its copy has passed. A training step's small
// uploads (labels, soft targets, the resident loader's batch plan) then keep
// the host running ahead of the device.
constexpr size_t kStagedUploadMax = size_t{1} << 20;
constexpr size_t kMaxUploadsInFlight = 256;  // past this, wait for the oldest

struct StagedUpload {
  void* block;
  std::unique_ptr<Event> done;
};

struct StagingQueue {
  std::mutex mu;
  std::deque<StagedUpload> in_flight;  // in stream order: the front finishes first
};

StagingQueue& staging_queue() {
  static StagingQueue* q = new StagingQueue();
  return *q;
}

void upload_staged(void* dst, Device dst_dev, const void* src, size_t nbytes) {
  StagingQueue& q = staging_queue();
  std::lock_guard<std::mutex> lock(q.mu);
  while (!q.in_flight.empty() && (q.in_flight.size() >= kMaxUploadsInFlight || q.in_flight.front().done->query())) {
    q.in_flight.front().done->synchronize();
    pinned_free(q.in_flight.front().block);
    q.in_flight.pop_front();
  }
  DeviceGuard g(dst_dev.index);
  void* block = pinned_allocate(nbytes);
  std::memcpy(block, src, nbytes);
  cudaStream_t stream = current_stream(dst_dev.index);
  auto done = std::make_unique<Event>(false);
  try {
    copy_async(dst, dst_dev, block, Device::cpu(), nbytes, stream);
    done->record(stream);
  } catch (...) {
    pinned_free(block);  // the copy never started
    throw;
  }
  q.in_flight.push_back({block, std::move(done)});
}

}  // namespace

void copy_sync(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  if (nbytes == 0) return;
  require_device();
  if (src_dev.is_cpu() && dst_dev.is_cuda() && nbytes <= kStagedUploadMax)
    return upload_staged(dst, dst_dev, src, nbytes);
  const int dev = dst_dev.is_cuda() ? dst_dev.index : src_dev.index;
  DeviceGuard g(dev);
  cudaStream_t stream = current_stream(dev);
  copy_async(dst, dst_dev, src, src_dev, nbytes, stream);
  KESTREL_CUDA_CHECK_CTX(cudaStreamSynchronize(stream), "after copying ", nbytes, " bytes ", src_dev.str(), " -> ",
                         dst_dev.str());
}

}  // namespace kestrel::cuda
