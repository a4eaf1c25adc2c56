// Loops that OpenMP splits over its threads only when there is enough work.
// `#pragma omp parallel for if (false)` still enters a parallel region, and
// libgomp pays a futex system call for each one even with one thread; a
// batch-1 forward pass of the CIFAR net entered about 70 (strace -c). These
// helpers test the condition first and run small loops on the caller.
#pragma once
#include <omp.h>

#include <cstdint>

namespace kestrel::cpu {

// Whether a loop flagged `parallel` has more than this thread to run on.
inline bool use_threads(bool parallel) { return parallel && omp_get_max_threads() > 1 && !omp_in_parallel(); }

// The number of per-thread partial results a reduction flagged `parallel`
// needs for parallel_for_each_thread: 1 when it runs on the caller.
inline int partial_count(bool parallel) { return use_threads(parallel) ? omp_get_max_threads() : 1; }

// body(i) for i in [0, n), split statically over the threads when `parallel`.
template <typename F>
inline void parallel_for(int64_t n, bool parallel, F&& body) {
  if (use_threads(parallel)) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// body(begin, end) over [0, n): one contiguous range per thread when
// `parallel`, else the whole range on the caller. For flat loops that should
// stay vectorized inside body.
template <typename F>
inline void parallel_range(int64_t n, bool parallel, F&& body) {
  if (!use_threads(parallel)) return body(int64_t{0}, n);
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
    body(n * t / threads, n * (t + 1) / threads);
  }
}

// body(t, i) for i in [0, n), t in [0, threads) the index of the thread that
// runs it, so each thread accumulates into partial result t (threads from
// partial_count; static schedule, so the split depends on the count only).
template <typename F>
inline void parallel_for_each_thread(int64_t n, int threads, F&& body) {
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) body(0, i);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(t, i);
  }
}

}  // namespace kestrel::cpu
