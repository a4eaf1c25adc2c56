// Attributes for CPU kernels built once per instruction set and picked at
// load time (the project's baseline is x86-64-v2: 4-wide SSE). Everything a
// cloned function calls in its hot loop must be KESTREL_INLINE: an
// out-of-line callee (a lambda, a template helper) is compiled once, for the
// baseline, and keeps the loop scalar.
#pragma once
#include "engine/env.h"

#define KESTREL_INLINE inline __attribute__((always_inline))
// The same for a lambda: [&](auto x) KESTREL_LAMBDA_INLINE { ... }
#define KESTREL_LAMBDA_INLINE __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// AVX-512, AVX2 and baseline builds of one function.
#define KESTREL_CLONES_AVX512 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// AVX2 and baseline builds (where the AVX-512 build measured slower).
#define KESTREL_CLONES_AVX2 __attribute__((target_clones("arch=x86-64-v3", "default")))
// An AVX-512-only function, for a caller that checks the CPU itself.
#define KESTREL_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define KESTREL_HAVE_AVX512_TARGET 1
#else
#define KESTREL_CLONES_AVX512
#define KESTREL_CLONES_AVX2
#define KESTREL_HAVE_AVX512_TARGET 0
#endif

namespace kestrel::cpu {

// Whether this CPU runs the AVX-512 kernels (KESTREL_NO_AVX512=1 turns them off).
inline bool use_avx512() {
#if KESTREL_HAVE_AVX512_TARGET
  static const bool on = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                         !env_switch("KESTREL_NO_AVX512");
  return on;
#else
  return false;
#endif
}

}  // namespace kestrel::cpu
