// One side of a kernel benchmark (Kestrel's kernel or the cuDNN/cuBLAS
// baseline) as an object: the device buffers it owns, filled the same way on
// both sides, the launch to time, the minimal bytes it must move, and the
// outputs it writes. bench_kernels times a case's launch; with --verify it
// launches both sides of a comparison once and checks that their outputs agree,
// so a baseline that computes something else is caught before it is timed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kestrel::bench {

enum class Elem { F16, F32 };

struct Buffer {
  void* p = nullptr;
  size_t count = 0;
  Elem elem = Elem::F16;
  Buffer(size_t count, Elem elem);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t elem_bytes() const { return elem == Elem::F16 ? 2 : 4; }
  size_t bytes() const { return count * elem_bytes(); }
  std::vector<float> download() const;
};

class Case {
 public:
  // Filled from `seed` with values in [lo, hi] that f16 holds exactly, so an
  // f16 and an f32 buffer with the same seed hold the same numbers.
  Buffer& input(size_t count, Elem elem, uint32_t seed, float lo = -1.f, float hi = 1.f);
  // Filled with NaN: an output element left unwritten fails the comparison.
  Buffer& scratch(size_t count, Elem elem);
  // A workspace of at least `bytes`.
  void* workspace(size_t bytes);
  void output(const std::string& name, const Buffer& b) { outputs_.push_back({name, &b}); }

  std::function<void()> launch;
  double bytes = 0;  // minimal bytes moved per launch (see bench_kernels.cpp)

  struct Output {
    std::string name;
    const Buffer* buffer;
  };
  const std::vector<Output>& outputs() const { return outputs_; }

 private:
  std::vector<std::unique_ptr<Buffer>> buffers_;
  std::vector<Output> outputs_;
};

// Compares the outputs the two cases share by name; prints one line each.
// An output agrees when max |a - b| <= tolerance * max |b| and neither holds a
// NaN. Returns the number that disagree (a name on one side only counts).
int compare_outputs(const std::string& label, const Case& kestrel, const Case& baseline, double tolerance);

}  // namespace kestrel::bench
