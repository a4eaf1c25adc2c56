#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "data/pinned_batch.h"
#include "engine/error.h"

namespace kestrel::data {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Tags keep the streams for shuffling, samples and batches apart.
constexpr uint64_t kShuffleTag = 0x5348554646ULL;  // "SHUFF"
constexpr uint64_t kSampleTag = 0x53414D50ULL;     // "SAMP"
constexpr uint64_t kBatchTag = 0x42415443ULL;      // "BATC"

}  // namespace

uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ a);
  h = splitmix64(h ^ b);
  return splitmix64(h ^ c);
}

uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t dataset_index) {
  return derive_seed(seed, kSampleTag, static_cast<uint64_t>(epoch), static_cast<uint64_t>(dataset_index));
}

uint64_t batch_seed(uint64_t seed, int64_t epoch, int64_t batch_index) {
  return derive_seed(seed, kBatchTag, static_cast<uint64_t>(epoch), static_cast<uint64_t>(batch_index));
}

std::vector<int64_t> epoch_order(int64_t size, bool shuffle, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(size));
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {
    Generator gen(derive_seed(seed, kShuffleTag, static_cast<uint64_t>(epoch)));
    for (int64_t i = static_cast<int64_t>(order.size()) - 1; i > 0; --i)
      std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(gen.randint(0, i + 1))]);
  }
  return order;
}

int64_t batch_count(const LoaderOptions& opts, int64_t n) {
  return opts.drop_last ? n / opts.batch_size : (n + opts.batch_size - 1) / opts.batch_size;
}

std::pair<int64_t, int64_t> batch_positions(const LoaderOptions& opts, int64_t dataset_size, int64_t batch_index) {
  KCHECK(batch_index >= 0 && batch_index < batch_count(opts, dataset_size), ValueError, "DataLoader: batch ",
         batch_index, " out of range for an epoch of ", batch_count(opts, dataset_size), " batches");
  const int64_t batch_begin = batch_index * opts.batch_size;
  const int64_t whole = std::min<int64_t>(opts.batch_size, dataset_size - batch_begin);
  return {batch_begin + whole * opts.shard_rank / opts.shard_count,
          batch_begin + whole * (opts.shard_rank + 1) / opts.shard_count};
}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, LoaderOptions opts, Transform sample_transform,
                       BatchTransform batch_transform)
    : dataset_(std::move(dataset)),
      opts_(opts),
      sample_transform_(std::move(sample_transform)),
      batch_transform_(std::move(batch_transform)) {
  KCHECK(dataset_ != nullptr, ValueError, "DataLoader: no dataset");
  KCHECK(opts_.batch_size > 0, ValueError, "DataLoader: batch_size must be > 0, got ", opts_.batch_size);
  KCHECK(opts_.num_workers >= 0, ValueError, "DataLoader: num_workers must be >= 0, got ", opts_.num_workers);
  KCHECK(opts_.prefetch > 0, ValueError, "DataLoader: prefetch must be > 0, got ", opts_.prefetch);
  KCHECK(opts_.shard_count > 0 && opts_.shard_rank >= 0 && opts_.shard_rank < opts_.shard_count, ValueError,
         "DataLoader: shard ", opts_.shard_rank, " of ", opts_.shard_count, " does not exist");
  pin_ = opts_.pin_memory && pinned_memory_available();
}

DataLoader::~DataLoader() { stop_workers(); }

int64_t DataLoader::num_batches() const { return batch_count(opts_, dataset_->size()); }

std::vector<int64_t> DataLoader::epoch_order(int64_t epoch) const {
  return data::epoch_order(dataset_->size(), opts_.shuffle, opts_.seed, epoch);
}

Batch DataLoader::load_batch(int64_t epoch, int64_t batch_index, const std::vector<int64_t>& order) const {
  const auto [begin, end] = batch_positions(opts_, static_cast<int64_t>(order.size()), batch_index);
  Batch b;
  b.epoch = epoch;
  b.index = batch_index;
  b.indices.assign(order.begin() + begin, order.begin() + end);
  const int64_t n = end - begin;
  if (n == 0) return b;  // an empty part; next() skips it
  std::vector<int64_t> labels(static_cast<size_t>(n));
  int h = 0, w = 0, c = 0;
  float* dst = nullptr;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t idx = b.indices[static_cast<size_t>(i)];
    Example ex = dataset_->get(idx);
    FImage img = to_float(ex.image, opts_.to_float_scale);
    if (sample_transform_) {
      Generator gen(sample_seed(opts_.seed, epoch, idx));
      sample_transform_(img, gen);
    }
    if (i == 0) {
      h = img.h;
      w = img.w;
      c = img.c;
      b.images = Tensor::empty({n, h, w, c});
      dst = b.images.data<float>();
    }
    KCHECK(img.h == h && img.w == w && img.c == c, ShapeError, "DataLoader: example ", idx, " is ", img.h, "x", img.w,
           "x", img.c, " after the sample transform but example ", b.indices[0], " of the same batch is ", h, "x", w,
           "x", c, "; add a resize or crop to the transform");
    std::memcpy(dst + static_cast<size_t>(i) * img.data.size(), img.data.data(), img.data.size() * sizeof(float));
    labels[static_cast<size_t>(i)] = ex.label;
  }
  b.labels = Tensor::from_vector_i64(labels, {n});
  if (batch_transform_ && (opts_.mix_until_epoch < 0 || epoch < opts_.mix_until_epoch)) {
    Generator gen(batch_seed(opts_.seed, epoch, batch_index));
    batch_transform_(b, gen);
  }
  if (pin_) b.pinned = stage_pinned(b);  // on the worker thread, off the training loop
  return b;
}

void DataLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  space_cv_.notify_all();
  ready_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  ready_.clear();
  stop_ = false;
}

void DataLoader::start_epoch(int64_t epoch, int64_t start_batch) {
  KCHECK(epoch >= 0, ValueError, "DataLoader: epoch must be >= 0, got ", epoch);
  KCHECK(start_batch >= 0 && start_batch <= num_batches(), ValueError, "DataLoader: cannot start epoch ", epoch,
         " at batch ", start_batch, "; an epoch has ", num_batches(), " batches");
  stop_workers();
  epoch_ = epoch;
  order_ = epoch_order(epoch);
  next_assign_ = next_consume_ = start_batch;
  end_ = num_batches();
  const int64_t threads = std::min<int64_t>(opts_.num_workers, end_ - start_batch);
  for (int64_t t = 0; t < threads; ++t) workers_.emplace_back(&DataLoader::worker_loop, this);
}

void DataLoader::worker_loop() {
  for (;;) {
    int64_t b = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      space_cv_.wait(lock, [&] { return stop_ || next_assign_ >= end_ || next_assign_ < next_consume_ + opts_.prefetch; });
      if (stop_ || next_assign_ >= end_) return;
      b = next_assign_++;
    }
    Slot slot;
    try {
      slot.batch = load_batch(epoch_, b, order_);
    } catch (...) {
      slot.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ready_[b] = std::move(slot);
    }
    ready_cv_.notify_all();
  }
}

bool DataLoader::next(Batch& out) {
  KCHECK(epoch_ >= 0, ValueError, "DataLoader: call start_epoch() before next()");
  do {
    if (!next_any(out)) return false;
  } while (out.indices.empty());
  return true;
}

bool DataLoader::next_any(Batch& out) {
  if (next_consume_ >= end_) return false;
  if (workers_.empty()) {
    out = load_batch(epoch_, next_consume_, order_);
    ++next_consume_;
    return true;
  }
  Slot slot;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_cv_.wait(lock, [&] { return ready_.count(next_consume_) > 0; });
    auto it = ready_.find(next_consume_);
    slot = std::move(it->second);
    ready_.erase(it);
    ++next_consume_;
  }
  space_cv_.notify_all();
  if (slot.error) std::rethrow_exception(slot.error);
  out = std::move(slot.batch);
  return true;
}

}  // namespace kestrel::data
