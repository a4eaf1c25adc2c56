#include "bench/kernel_case.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/cuda/runtime.h"
#include "engine/half.h"

namespace kestrel::bench {

Buffer::Buffer(size_t n, Elem e) : count(n), elem(e) {
  KESTREL_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes(), 1)));
}

Buffer::~Buffer() { cudaFree(p); }

std::vector<float> Buffer::download() const {
  std::vector<float> out(count);
  if (elem == Elem::F32) {
    KESTREL_CUDA_CHECK(cudaMemcpy(out.data(), p, bytes(), cudaMemcpyDeviceToHost));
    return out;
  }
  std::vector<uint16_t> bits(count);
  KESTREL_CUDA_CHECK(cudaMemcpy(bits.data(), p, bytes(), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < count; ++i) out[i] = Half::to_float(bits[i]);
  return out;
}

namespace {

// splitmix64 of (seed, i): a fixed stream per seed, independent of the device.
float unit_value(uint32_t seed, size_t i) {
  uint64_t z = (static_cast<uint64_t>(seed) << 40) + i + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) / static_cast<float>(1u << 24);
}

// The first values.size() elements of b.
void upload(Buffer& b, const std::vector<float>& values) {
  if (values.empty()) return;
  if (b.elem == Elem::F32) {
    KESTREL_CUDA_CHECK(cudaMemcpy(b.p, values.data(), values.size() * 4, cudaMemcpyHostToDevice));
    return;
  }
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = Half::from_float(values[i]);
  KESTREL_CUDA_CHECK(cudaMemcpy(b.p, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
}

}  // namespace

Buffer& Case::input(size_t count, Elem elem, uint32_t seed, float lo, float hi) {
  buffers_.push_back(std::make_unique<Buffer>(count, elem));
  Buffer& b = *buffers_.back();
  // The first kPeriod values from the stream, repeated by device copies: large
  // benchmark tensors fill fast, and --verify's small ones are the stream itself.
  constexpr size_t kPeriod = size_t{1} << 20;
  const size_t period = std::min(count, kPeriod);
  std::vector<float> values(period);
  for (size_t i = 0; i < period; ++i)
    values[i] = Half::to_float(Half::from_float(lo + (hi - lo) * unit_value(seed, i)));
  upload(b, values);
  for (size_t done = period; done < count; done *= 2) {
    const size_t n = std::min(done, count - done);
    KESTREL_CUDA_CHECK(cudaMemcpy(static_cast<char*>(b.p) + done * b.elem_bytes(), b.p, n * b.elem_bytes(),
                                  cudaMemcpyDeviceToDevice));
  }
  return b;
}

Buffer& Case::scratch(size_t count, Elem elem) {
  buffers_.push_back(std::make_unique<Buffer>(count, elem));
  KESTREL_CUDA_CHECK(cudaMemset(buffers_.back()->p, 0xff, buffers_.back()->bytes()));  // NaN in f16 and f32
  return *buffers_.back();
}

void* Case::workspace(size_t bytes) {
  buffers_.push_back(std::make_unique<Buffer>((bytes + 3) / 4, Elem::F32));
  return buffers_.back()->p;
}

int compare_outputs(const std::string& label, const Case& kestrel, const Case& baseline, double tolerance) {
  int failures = 0;
  for (const auto& ref : baseline.outputs()) {
    const auto it = std::find_if(kestrel.outputs().begin(), kestrel.outputs().end(),
                                 [&](const Case::Output& o) { return o.name == ref.name; });
    if (it == kestrel.outputs().end()) {
      std::printf("verify %-70s %-12s MISSING on the kestrel side\n", label.c_str(), ref.name.c_str());
      ++failures;
      continue;
    }
    const std::vector<float> a = it->buffer->download(), b = ref.buffer->download();
    bool nan = a.size() != b.size();
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
      if (std::isnan(a[i]) || std::isnan(b[i])) nan = true;
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
      max_err = std::max(max_err, std::fabs(static_cast<double>(a[i]) - b[i]));
    }
    const double rel = max_err / std::max(max_ref, 1e-30);
    const bool ok = !nan && rel <= tolerance;
    std::printf("verify %-70s %-12s max|ref| %9.3g  max err %9.3g  rel %8.2e  %s\n", label.c_str(),
                ref.name.c_str(), max_ref, max_err, rel, ok ? "ok" : (nan ? "FAIL (NaN or size)" : "FAIL"));
    failures += ok ? 0 : 1;
  }
  return failures;
}

}  // namespace kestrel::bench
