// Inverse index maps for gather-style backward passes. For one spatial dim, an
// output index o reads some input indices i; Taps lists, for every i, the
// (o, k, weight) entries that read it, in CSR form. Built once per call, so the
// hot loops of col2im, pooling and resize backward do no div/mod and each
// input element is written by exactly one thread.
#pragma once
#include <cstdint>
#include <vector>

namespace kestrel::cpu {

struct Taps {
  std::vector<int64_t> start;  // size in + 1; entries of i are [start[i], start[i+1])
  std::vector<int64_t> o, k;   // output index and kernel tap of each entry
  std::vector<double> wt;      // weight of each entry (resize only; empty otherwise)

  // add(o, i, k, w) is called twice (count pass, fill pass) by build().
  template <typename Visit>
  static Taps build(int64_t in, bool weighted, Visit&& visit) {
    Taps t;
    t.start.assign(in + 1, 0);
    visit([&](int64_t o, int64_t i, int64_t k, double w) {
      (void)o, (void)k, (void)w;
      ++t.start[i + 1];
    });
    for (int64_t i = 0; i < in; ++i) t.start[i + 1] += t.start[i];
    t.o.resize(t.start[in]);
    t.k.resize(t.start[in]);
    if (weighted) t.wt.resize(t.start[in]);
    std::vector<int64_t> fill(t.start.begin(), t.start.end() - 1);
    visit([&](int64_t o, int64_t i, int64_t k, double w) {
      const int64_t e = fill[i]++;
      t.o[e] = o;
      t.k[e] = k;
      if (weighted) t.wt[e] = w;
    });
    return t;
  }
};

// Strided, dilated, padded kernel windows (convolution and pooling).
inline Taps kernel_taps(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dil) {
  return Taps::build(in, false, [&](auto&& add) {
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < kernel; ++k) {
        const int64_t i = o * stride - pad + k * dil;
        if (i >= 0 && i < in) add(o, i, k, 1.0);
      }
  });
}

}  // namespace kestrel::cpu
