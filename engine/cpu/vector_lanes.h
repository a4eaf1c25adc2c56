// GCC vector types for the CPU kernels: N lanes held in registers whatever
// the ISA (16 floats are one AVX-512 register, two AVX2 or four SSE).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "engine/cpu/isa.h"

namespace kestrel::cpu {

template <typename T, int64_t N>
struct Lanes {
  typedef T type __attribute__((vector_size(sizeof(T) * N)));
};

template <typename V, typename T>
KESTREL_INLINE void load_lanes(V& v, const T* p) {
  std::memcpy(&v, p, sizeof v);
}

template <typename V, typename T>
KESTREL_INLINE void store_lanes(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// Calls block(lanes, c) over channels [0, C) in blocks of Bytes (one vector
// register's width), lanes an integral_constant. A ragged tail is one more
// block (or half block) that ends at C, overlapping the one before: for
// kernels that overwrite their outputs, recomputing a few channels costs less
// than a partial block spilled to memory. C must be at least half a block.
template <typename T, int64_t Bytes, typename F>
KESTREL_INLINE void for_overlapping_channel_blocks(int64_t C, F&& block) {
  constexpr int64_t kBlock = Bytes / sizeof(T), kHalf = kBlock / 2;
  using Full = std::integral_constant<int64_t, kBlock>;
  using Half = std::integral_constant<int64_t, kHalf>;
  int64_t c = 0;
  for (; c + kBlock <= C; c += kBlock) block(Full{}, c);
  if (c == C) return;
  if (C - c <= kHalf)
    block(Half{}, C - kHalf);
  else if (C >= kBlock)
    block(Full{}, C - kBlock);
  else {  // kHalf < C < kBlock
    block(Half{}, 0);
    block(Half{}, C - kHalf);
  }
}

// Calls block(lanes, c) over channels [0, C) in disjoint blocks of Bytes,
// then a half and a quarter block where they fit, then single lanes (a layer
// of 20 floats with 64-byte blocks is 16 + 4): for kernels that add into
// their outputs, where overlapping blocks would add twice.
template <typename T, int64_t Bytes, typename F>
KESTREL_INLINE void for_disjoint_channel_blocks(int64_t C, F&& block) {
  constexpr int64_t kBlock = Bytes / sizeof(T), kHalf = kBlock / 2, kQuarter = kBlock / 4;
  int64_t c = 0;
  for (; c + kBlock <= C; c += kBlock) block(std::integral_constant<int64_t, kBlock>{}, c);
  if (c + kHalf <= C) {
    block(std::integral_constant<int64_t, kHalf>{}, c);
    c += kHalf;
  }
  if (kQuarter > 1 && c + kQuarter <= C) {
    block(std::integral_constant<int64_t, kQuarter>{}, c);
    c += kQuarter;
  }
  for (; c < C; ++c) block(std::integral_constant<int64_t, 1>{}, c);
}

}  // namespace kestrel::cpu
