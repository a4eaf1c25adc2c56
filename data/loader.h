// A threaded, prefetching, deterministic mini-batch loader.
//
//   auto train = data::open_cifar10(dir, data::Split::Train);
//   data::LoaderOptions lo;  lo.batch_size = 128;  lo.seed = 42;  lo.num_workers = 4;
//   data::DataLoader loader(train, lo, train_transform, data::cutmix(1.0, 10));
//   for (int64_t epoch = start_epoch; epoch < epochs; ++epoch) {
//     loader.start_epoch(epoch, epoch == start_epoch ? resume_batch : 0);
//     data::Batch b;
//     while (loader.next(b)) { ... b.images [N,H,W,C] f32, b.labels [N] i64, b.targets [N,K] or undefined ... }
//   }
//
// Determinism: the order of an epoch is a shuffle seeded by (seed, epoch);
// each sample's augmentation generator is seeded by (seed, epoch, dataset
// index) and each batch transform's by (seed, epoch, batch index; under
// sharding each rank's part is transformed on its own). Batches
// are therefore the same for any number of workers, and a run resumed at
// (epoch, batch k) sees exactly the batches an uninterrupted run would.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "data/batch.h"
#include "data/dataset.h"
#include "data/transforms.h"

namespace kestrel::data {

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;
  bool drop_last = false;
  uint64_t seed = 0;
  int num_workers = 2;  // 0 loads on the calling thread
  int prefetch = 4;     // batches loaded or in flight ahead of the consumer (bounded queue)
  float to_float_scale = 1.0f / 255.0f;  // u8 -> float before the sample transform
  // Also stage each batch in pinned host memory (Batch::pinned) so the copy to
  // a CUDA device is asynchronous (data/pinned_batch.h). Ignored, and batches
  // are exactly as without it, when no CUDA device is present.
  bool pin_memory = false;
  // Data parallel: this loader yields part shard_rank of shard_count equal,
  // contiguous parts of each batch; batch_size stays the whole batch's. The
  // parts of all ranks together are the batch one process would see, with the
  // same per-sample augmentation. A part left empty by a short last batch is
  // skipped.
  int shard_rank = 0;
  int shard_count = 1;
  // Batch mixing (DataLoader's batch transform, ResidentLoader's mixer) in
  // epochs before this one only; -1: in every epoch.
  int64_t mix_until_epoch = -1;
};

// Derives independent 64-bit seeds from a tuple (splitmix64 mixing).
uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0);
// The generators every loader uses: a sample's augmentation, a batch's mixing.
uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t dataset_index);
uint64_t batch_seed(uint64_t seed, int64_t epoch, int64_t batch_index);
// Dataset indices of `epoch` (a shuffle seeded by (seed, epoch), or identity).
std::vector<int64_t> epoch_order(int64_t size, bool shuffle, uint64_t seed, int64_t epoch);
// Positions [first, second) of `order` that batch `batch_index` gives this rank.
std::pair<int64_t, int64_t> batch_positions(const LoaderOptions& opts, int64_t dataset_size, int64_t batch_index);
int64_t batch_count(const LoaderOptions& opts, int64_t dataset_size);

// What a trainer or an evaluation reads batches from: the threaded host
// loader below, or the resident loader (data/resident_loader.h).
class BatchLoader {
 public:
  virtual ~BatchLoader() = default;
  virtual int64_t num_batches() const = 0;
  virtual int64_t dataset_size() const = 0;
  virtual const LoaderOptions& options() const = 0;
  // Begins `epoch` at batch `start_batch` (0 for a fresh epoch; k to resume).
  virtual void start_epoch(int64_t epoch, int64_t start_batch = 0) = 0;
  // The next batch of the current epoch; false when the epoch is done.
  virtual bool next(Batch& out) = 0;
};

class DataLoader : public BatchLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, LoaderOptions opts, Transform sample_transform = {},
             BatchTransform batch_transform = {});
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  int64_t num_batches() const override;
  int64_t dataset_size() const override { return dataset_->size(); }
  const LoaderOptions& options() const override { return opts_; }

  void start_epoch(int64_t epoch, int64_t start_batch = 0) override;
  // Errors from workers (a bad file) are rethrown here.
  bool next(Batch& out) override;

  // Resume state: the epoch and the index of the batch next() returns next.
  int64_t epoch() const { return epoch_; }
  int64_t next_batch_index() const { return next_consume_; }

  // Dataset indices in the order of `epoch` (identity without shuffle).
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  // Builds one batch synchronously; what the workers run.
  Batch load_batch(int64_t epoch, int64_t batch_index) const { return load_batch(epoch, batch_index, epoch_order(epoch)); }

 private:
  Batch load_batch(int64_t epoch, int64_t batch_index, const std::vector<int64_t>& order) const;
  bool next_any(Batch& out);  // next(), empty shard parts included
  void stop_workers();
  void worker_loop();

  std::shared_ptr<const Dataset> dataset_;
  LoaderOptions opts_;
  Transform sample_transform_;
  BatchTransform batch_transform_;
  bool pin_ = false;  // pin_memory requested and a CUDA device present

  struct Slot {
    Batch batch;
    std::exception_ptr error;
  };
  std::mutex mutex_;
  std::condition_variable ready_cv_, space_cv_;
  std::map<int64_t, Slot> ready_;
  std::vector<std::thread> workers_;
  std::vector<int64_t> order_;
  int64_t epoch_ = -1;
  int64_t next_assign_ = 0, next_consume_ = 0, end_ = 0;
  bool stop_ = false;
};

}  // namespace kestrel::data
