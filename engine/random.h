// Seeded generator state. Draws consume a counter range so a sequence of
// draws is reproducible and resumable (seed, offset) on any device.
#pragma once
#include <cstdint>

namespace kestrel {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed; offset_ = offset; }
  // Reserves n counters; returns the first.
  uint64_t advance(uint64_t n) {
    const uint64_t first = offset_;
    offset_ += n;
    return first;
  }
  // Host-side scalar draws for augmentation and shuffling.
  double uniform();                   // [0, 1)
  int64_t randint(int64_t low, int64_t high);  // [low, high)
  double normal();

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace kestrel
