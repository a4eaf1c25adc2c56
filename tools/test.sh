#!/usr/bin/env bash
# Builds Kestrel and runs the whole test suite (GPU tests skip without a GPU).
# Under CI (or KESTREL_SANITIZE_TESTS=1) the CPU unit tests then run again in an
# AddressSanitizer + UndefinedBehaviorSanitizer build; KESTREL_SANITIZE_TESTS=0 skips that.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=$(nproc)
# ccache keys then use paths relative to the checkout, so a fresh clone elsewhere hits the cache.
export CCACHE_BASEDIR="$root"
build=${KESTREL_BUILD_DIR:-build}

build_tree() {  # dir, target, cmake args...
  local dir=$1 target=$2; shift 2
  cmake -S . -B "$dir" "$@" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; exit 1; }
  if ! cmake --build "$dir" -j "$jobs" --target "$target" >"$dir.build.log" 2>&1; then
    grep -E "error|Error" "$dir.build.log" | head -50
    echo "build of $dir failed (full log: $dir.build.log)"
    exit 1
  fi
}

echo "== building ($build)"
build_tree "$build" all -DCMAKE_BUILD_TYPE=Release -DKESTREL_WERROR=ON

sanitize=${KESTREL_SANITIZE_TESTS:-${CI:-0}}
[ "$sanitize" = "true" ] && sanitize=1
status=0
if [ "$sanitize" != "0" ]; then
  echo "== building build-asan (ASan + UBSan, CPU only)"
  # Also the build without MPI (a world of one), as the GPU bundle is built.
  build_tree build-asan unit_tests -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKESTREL_SANITIZE=ON -DKESTREL_CUDA=OFF \
    -DKESTREL_BENCH=OFF -DKESTREL_WERROR=ON -DKESTREL_MPI=OFF
  echo "== CPU unit tests under ASan + UBSan"
  (cd build-asan && KESTREL_CPU_NO_CACHE=1 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest -j "$jobs" --output-on-failure -L unit) || status=1
fi

echo "== test suite"
(cd "$build" && ctest -j "$jobs" --output-on-failure) || status=1

# Every CUDA test again, on the CPU emulator of the CUDA execution model
# (tests/emu): the kernels and the CUDA backend run here, GPU or not.
# Needs only the CUDA headers; KESTREL_EMULATOR_TESTS=0 skips it.
if [ "${KESTREL_EMULATOR_TESTS:-1}" != "0" ]; then
  if [ -f "${CUDA_HOME:-/usr/local/cuda}/include/cuda_runtime.h" ] || command -v nvcc >/dev/null 2>&1; then
    # Under UndefinedBehaviorSanitizer: the kernels' index arithmetic and
    # vector loads (alignment) are checked as they run.
    echo "== building build-emu (CUDA backend on the CPU emulator, UBSan)"
    build_tree build-emu cuda_tests -DCMAKE_BUILD_TYPE=Release -DKESTREL_CUDA_EMULATOR=ON -DKESTREL_BENCH=ON \
      -DKESTREL_WERROR=ON "-DCMAKE_CXX_FLAGS=-fsanitize=undefined -fno-sanitize-recover=undefined" \
      -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=undefined
    # Without the caching allocator every tensor gets its own guarded,
    # NaN-filled pages: reads past a tensor's end crash and reads of unwritten
    # memory fail the parity checks. The allocator's own tests, and the CUDA graphs'
    # private pools, then run with it too.
    echo "== CUDA tests on the emulator"
    (cd build-emu && KESTREL_CUDA_NO_CACHE=1 UBSAN_OPTIONS=print_stacktrace=1 ctest -j "$jobs" --output-on-failure \
      -L cuda) || status=1
    (cd build-emu && ctest -j "$jobs" --output-on-failure -L cuda -R 'CudaKernels\.(Caching|BlockUsed)|CudaGraph\.') \
      || status=1
  else
    echo "== CUDA tests on the emulator: skipped (no CUDA headers: install the CUDA toolkit to run them)"
  fi
fi
exit $status
