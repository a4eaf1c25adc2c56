#!/usr/bin/env bash
# GPU proof in two steps, so the device machine spends its time running, not
# compiling:
#
#   tools/gpu_check.sh pack   # on a build machine with nvcc (no GPU needed):
#                             # Release build for sm_80 + sm_90 of the GPU test
#                             # suite (one binary), bench_kernels and kestrel,
#                             # packed with the non-CUDA shared libraries they
#                             # need into build-gpu-bundle/ (carry that path).
#   tools/gpu_check.sh        # on the GPU machine: runs the bundle when present,
#                             # otherwise builds here first; then every GPU test,
#                             # the kernel benchmarks against cuDNN, a summary
#                             # table, and docs/gpu-report.md (copied to $OUT).
#
# cuBLAS, cuDNN and NCCL (loaded at run time) come from the system or, failing
# that, from the nvidia-* wheels inside PyTorch's site-packages.
#   KESTREL_GPU_CHECK_SKIP_BENCH=1   skip the benchmarks
#   KESTREL_GPU_BUILD_DIR=build-gpu  build directory
#   KESTREL_GPU_CHECK_BUDGET_S=560   seconds for the whole run (a device call
#                                    has 600): each step's time limit is cut
#                                    to what is left, so the report is always written
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-run}
build=${KESTREL_GPU_BUILD_DIR:-build-gpu}
bundle_dir=build-gpu-bundle
jobs=$(nproc)
logdir="$build/gpu-check"
start_time=$(date +%s)
report=docs/gpu-report.md

budget=${KESTREL_GPU_CHECK_BUDGET_S:-560}
# step_limit WANT RESERVE: WANT seconds, or fewer so that RESERVE remain for later steps.
step_limit() {
  local left=$(( budget - ($(date +%s) - start_time) - $2 ))
  left=$(( left < $1 ? left : $1 ))
  echo $(( left < 1 ? 1 : left ))  # never 0: timeout 0 would mean no limit
}

say() { printf '== %s (t=%ds)\n' "$*" "$(( $(date +%s) - start_time ))"; }

# ---- CUDA libraries: prefer the system's; otherwise the nvidia-* wheels.
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1" || ls /usr/local/cuda/lib64/"$1"* >/dev/null 2>&1; }
if ! have_lib libcudnn.so || ! have_lib libcublas.so || ! have_lib libnccl.so; then
  for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/*/lib \
           /usr/local/lib/python3*/dist-packages/nvidia/*/lib \
           "$HOME"/.local/lib/python3*/site-packages/nvidia/*/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  export LD_LIBRARY_PATH
  export CMAKE_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
  echo "using CUDA libraries from: ${LD_LIBRARY_PATH:-<none found>}"
fi

configure_and_build() {  # targets...
  mkdir -p "$build" "$logdir"
  say "configure ($build, Release, sm_80;sm_90)"
  # No MPI (the device machine has one GPU) and no ONNX export (a CPU-side tool):
  # the bundle carries neither runtime.
  if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKESTREL_WERROR=ON -DKESTREL_BENCH=ON -DKESTREL_MPI=OFF -DKESTREL_ONNX=OFF \
       -DCMAKE_CUDA_ARCHITECTURES="80;90" ${CMAKE_LIBRARY_PATH:+-DCMAKE_LIBRARY_PATH="$CMAKE_LIBRARY_PATH"} \
       >"$logdir/configure.log" 2>&1; then
    tail -30 "$logdir/configure.log"; echo "configure failed"; exit 1
  fi
  grep -E "CUDA backend|cuDNN" "$logdir/configure.log"
  local targets=("$@")
  grep -q "cuDNN (benchmark baseline): /" "$logdir/configure.log" || targets=("${targets[@]/bench_kernels}")
  say "build ${targets[*]}"
  if ! cmake --build "$build" -j "$jobs" --target ${targets[*]} >"$logdir/build.log" 2>&1; then
    grep -E "error|Error" "$logdir/build.log" | head -40; echo "build failed (log: $logdir/build.log)"; exit 1
  fi
}

binary_path() { find "$build" -name "$1" -type f -perm -u+x | head -1; }

if [ "$mode" = "pack" ]; then
  configure_and_build gpu_tests bench_kernels kestrel
  rm -rf "$bundle_dir" && mkdir -p "$bundle_dir/stage/bin" "$bundle_dir/stage/lib"
  for b in gpu_tests bench_kernels kestrel; do
    p=$(binary_path "$b"); [ -n "$p" ] && cp "$p" "$bundle_dir/stage/bin/"
  done
  # Shared libraries a bare CUDA image may lack (OpenBLAS, gfortran, benchmark, ...);
  # libc, the C++ runtime (newer there) and the CUDA libraries come from the device machine.
  for b in "$bundle_dir"/stage/bin/*; do
    ldd "$b" | awk '/=> \//{print $3}'
  done | sort -u | grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudnn[^/]*|libcublas[^/]*|libnccl)\.so' \
    | while read -r lib; do cp -L "$lib" "$bundle_dir/stage/lib/"; done
  git rev-parse --short HEAD >"$bundle_dir/stage/commit"
  # The main job's data, so the device can train the default model on it.
  fmnist_src=/usr/share/datasets/fashion-mnist
  [ -d "$fmnist_src" ] && mkdir -p "$bundle_dir/stage/fashion-mnist" && cp "$fmnist_src"/*.gz "$bundle_dir/stage/fashion-mnist/"
  tar -C "$bundle_dir/stage" -cJf "$bundle_dir/kestrel-gpu.tar.xz" . && rm -rf "$bundle_dir/stage"
  say "bundle $(du -h "$bundle_dir/kestrel-gpu.tar.xz" | cut -f1) in $bundle_dir (carry: [\"$bundle_dir\"])"
  exit 0
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "$logdir"
if [ -f "$bundle_dir/kestrel-gpu.tar.xz" ]; then
  bin=$(mktemp -d)
  trap 'rm -rf "$bin"' EXIT
  tar -C "$bin" -xJf "$bundle_dir/kestrel-gpu.tar.xz"
  export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "using the prebuilt bundle (commit $(cat "$bin/commit"))"
  gpu_tests="$bin/bin/gpu_tests"; bench_bin="$bin/bin/bench_kernels"; kestrel_bin="$bin/bin/kestrel"
  fmnist="$bin/fashion-mnist"
else
  configure_and_build gpu_tests bench_kernels kestrel
  gpu_tests=$(binary_path gpu_tests); bench_bin=$(binary_path bench_kernels); kestrel_bin=$(binary_path kestrel)
  fmnist=/usr/share/datasets/fashion-mnist
fi

# ---- GPU tests
status=0
say "gpu_tests"
# A test that finds no usable GPU fails here rather than skip: this machine has one.
if ! KESTREL_REQUIRE_GPU=1 timeout "$(step_limit 300 240)" "$gpu_tests" --gtest_output="xml:$logdir/gpu_tests.xml" >"$logdir/gpu_tests.log" 2>&1; then
  status=1
  grep -E "Failure|FAILED|error" "$logdir/gpu_tests.log" | head -60
fi
tail -3 "$logdir/gpu_tests.log"

# ---- kernel benchmarks: first both sides of every comparison once at a small
# size, outputs checked against each other; then the timings
bench_json="$logdir/bench_kernels.json"
rm -f "$bench_json" "$logdir/bench_verify.log"
if [ "${KESTREL_GPU_CHECK_SKIP_BENCH:-0}" = "0" ] && [ -n "${bench_bin:-}" ] && [ -x "$bench_bin" ]; then
  say "bench_kernels --verify"
  timeout "$(step_limit 60 200)" "$bench_bin" --verify >"$logdir/bench_verify.log" 2>&1 || status=1
  grep -E "FAIL|MISSING" "$logdir/bench_verify.log" | head -20
  tail -1 "$logdir/bench_verify.log"
  say "bench_kernels"
  timeout "$(step_limit 240 150)" "$bench_bin" --benchmark_min_time=0.05 --benchmark_out="$bench_json" \
    --benchmark_out_format=json >"$logdir/bench_kernels.log" 2>&1 || { status=1; tail -20 "$logdir/bench_kernels.log"; }
  head -3 "$logdir/bench_kernels.log"
fi

# ---- the main job on the GPU: the default recipe on Fashion-MNIST, then eval
if [ -n "${kestrel_bin:-}" ] && [ -x "$kestrel_bin" ] && [ -f "$fmnist/train-images-idx3-ubyte.gz" ]; then
  say "main job on cuda (tools/recipes/fashion_mnist_quickstart.toml)"
  job_start=$(date +%s)
  if timeout "$(step_limit 420 60)" "$kestrel_bin" train --config tools/recipes/fashion_mnist_quickstart.toml --device cuda \
       --data-dir "$fmnist" --out "$logdir/quickstart" --overwrite >"$logdir/quickstart.log" 2>&1 &&
     timeout "$(step_limit 120 15)" "$kestrel_bin" eval --checkpoint "$logdir/quickstart/best.safetensors" --device cuda \
       --data-dir "$fmnist" --out "$logdir/quickstart/eval" >>"$logdir/quickstart.log" 2>&1; then
    echo "main job: $(( $(date +%s) - job_start )) s" >>"$logdir/quickstart.log"
  else
    status=1
  fi
  tail -15 "$logdir/quickstart.log"
  # The two loaders on the same run (same batches, so the same losses): images per second.
  for loader in threads resident; do
    echo "--- loader $loader" >>"$logdir/quickstart.log"
    timeout "$(step_limit 60 10)" "$kestrel_bin" train --config tools/recipes/fashion_mnist_quickstart.toml --device cuda \
      --data-dir "$fmnist" --epochs 2 --loader "$loader" --no-progress --out "$logdir/loader_$loader" --overwrite \
      2>&1 | grep -E "^epoch|loader" >>"$logdir/quickstart.log" || status=1
  done
  grep -A3 -E "^--- loader" "$logdir/quickstart.log"
fi

# ---- whole models beside PyTorch (the device image has it): images per second
# of inference and training steps, bf16, batch 64 at 224 px
if [ -n "${kestrel_bin:-}" ] && [ -x "$kestrel_bin" ] && [ "${KESTREL_GPU_CHECK_SKIP_MODELS:-0}" = "0" ]; then
  say "models beside PyTorch"
  models_log="$logdir/model_bench.log"
  : >"$models_log"
  deadline=$(( $(date +%s) + $(step_limit 150 10) ))
  for m in emn_small efficientnet_b0 mobilenet_v2 resnet50; do
    left=$(( deadline - $(date +%s) )); [ "$left" -gt 5 ] || break
    timeout "$left" "$kestrel_bin" bench -m "$m" --input 3x224x224 -b 64 --device cuda --amp bf16 --no-progress >>"$models_log" 2>&1 \
      || { status=1; echo "kestrel bench $m failed" >>"$models_log"; }
  done
  # Batch-1 latency at 32 px, where launches dominate: eager, then CUDA graph replays.
  echo "### Batch-1 inference, 3x32x32, f32: eager rows, then --cuda-graph rows" >>"$models_log"
  for graph in "" --cuda-graph; do
    for m in emn_small mobilenet_v3_small; do
      left=$(( deadline - $(date +%s) )); [ "$left" -gt 5 ] || break
      timeout "$left" "$kestrel_bin" bench -m "$m" --input 3x32x32 -b 1 --num-classes 100 --no-train --iters 200 \
        --device cuda --no-progress $graph 2>/dev/null | tail -1 >>"$models_log" \
        || { status=1; echo "kestrel bench $m $graph failed" >>"$models_log"; }
    done
  done
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -gt 5 ] && python3 -c "import torch" 2>/dev/null; then
    timeout "$left" python3 bench/torch_model_bench.py emn_small efficientnet_b0 mobilenet_v2 resnet50 --input 3x224x224 -b 64 \
      --device cuda --amp bf16 >>"$models_log" 2>&1 || echo "torch_model_bench did not finish" >>"$models_log"
  fi
  cat "$models_log"
fi

# ---- summary table and report
say "report"
commit=$(cat "${bin:-/nonexistent}/commit" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 tools/gpu_report.py "$logdir" "$bench_json" "$report" "$status" "$commit"
# A device call brings back at most 8 files from $OUT: the report and the logs that explain it.
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$report" "$OUT/"
  for f in gpu_tests.xml gpu_tests.log bench_verify.log bench_kernels.json bench_kernels.log quickstart.log \
           model_bench.log; do
    [ -f "$logdir/$f" ] && cp "$logdir/$f" "$OUT/"
  done
fi
say "done (report: $report)"
exit $status
