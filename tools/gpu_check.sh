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
# cuBLAS, cuDNN and NCCL come from the system or, failing that, from the
# nvidia-* wheels inside PyTorch's site-packages.
#   KESTREL_GPU_CHECK_SKIP_BENCH=1   skip the benchmarks
#   KESTREL_GPU_BUILD_DIR=build-gpu  build directory
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

say() { printf '== %s (t=%ds)\n' "$*" "$(( $(date +%s) - start_time ))"; }

# ---- CUDA libraries: prefer the system's; otherwise the nvidia-* wheels.
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1" || ls /usr/local/cuda/lib64/"$1"* >/dev/null 2>&1; }
if ! have_lib libcudnn.so || ! have_lib libcublas.so; then
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
  if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKESTREL_WERROR=ON -DKESTREL_BENCH=ON \
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
if ! timeout 300 "$gpu_tests" --gtest_output="xml:$logdir/gpu_tests.xml" >"$logdir/gpu_tests.log" 2>&1; then
  status=1
  grep -E "Failure|FAILED|error" "$logdir/gpu_tests.log" | head -60
fi
tail -3 "$logdir/gpu_tests.log"

# ---- kernel benchmarks
bench_json="$logdir/bench_kernels.json"
rm -f "$bench_json"
if [ "${KESTREL_GPU_CHECK_SKIP_BENCH:-0}" = "0" ] && [ -n "${bench_bin:-}" ] && [ -x "$bench_bin" ]; then
  say "bench_kernels"
  timeout 300 "$bench_bin" --benchmark_min_time=0.05 --benchmark_out="$bench_json" --benchmark_out_format=json \
    >"$logdir/bench_kernels.log" 2>&1 || { status=1; tail -20 "$logdir/bench_kernels.log"; }
  head -3 "$logdir/bench_kernels.log"
fi

# ---- the main job on the GPU: the default recipe on Fashion-MNIST, then eval
if [ -n "${kestrel_bin:-}" ] && [ -x "$kestrel_bin" ] && [ -f "$fmnist/train-images-idx3-ubyte.gz" ]; then
  say "main job on cuda (tools/recipes/fashion_mnist_quickstart.toml)"
  job_start=$(date +%s)
  if timeout 420 "$kestrel_bin" train --config tools/recipes/fashion_mnist_quickstart.toml --device cuda \
       --data-dir "$fmnist" --out "$logdir/quickstart" --overwrite >"$logdir/quickstart.log" 2>&1 &&
     timeout 120 "$kestrel_bin" eval --checkpoint "$logdir/quickstart/best.safetensors" --device cuda \
       --data-dir "$fmnist" --out "$logdir/quickstart/eval" >>"$logdir/quickstart.log" 2>&1; then
    echo "main job: $(( $(date +%s) - job_start )) s" >>"$logdir/quickstart.log"
  else
    status=1
  fi
  tail -15 "$logdir/quickstart.log"
fi

# ---- summary table and report
say "report"
commit=$(cat "${bin:-/nonexistent}/commit" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$logdir" "$bench_json" "$report" "$status" "$commit" <<'PY'
import glob, json, os, statistics, sys, xml.etree.ElementTree as ET, datetime
logdir, bench_json, report, status, commit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
lines = []
def out(s=""):
    print(s); lines.append(s)
out("# GPU report")
out()
out(f"Generated by tools/gpu_check.sh on {datetime.datetime.now().isoformat(timespec='seconds')}, commit {commit}.")
out()
out("## Tests")
out()
out("| suite | tests | failures | skipped |")
out("|---|---|---|---|")
ran = skipped_total = 0
for x in sorted(glob.glob(os.path.join(logdir, "*.xml"))):
    for suite in ET.parse(x).getroot().iter("testsuite"):
        skipped = sum(1 for tc in suite.iter("testcase") if tc.find("skipped") is not None)
        ran += int(suite.get("tests")) - skipped
        skipped_total += skipped
        out(f"| {suite.get('name')} | {suite.get('tests')} | {suite.get('failures')} | {skipped} |")
out()
if os.path.exists(bench_json):
    data = json.load(open(bench_json))
    ctx = data.get("context", {})
    copy = float(ctx.get("copy_gbps", "0") or 0)
    out("## Kernel benchmarks (f16 NHWC)")
    out()
    out(f"Device: {ctx.get('device', '?')}; measured device-to-device copy bandwidth {copy:.0f} GB/s. "
        "GB/s counts each tensor the op must touch once (see bench/bench_kernels.cpp).")
    out()
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate": continue
        op, impl, layer = b["name"].split("/", 2)
        layer = layer.split("/manual_time")[0]
        runs[(op, layer, impl)] = b
    out("| op | layer | kestrel us | cuDNN us | speedup | kestrel GB/s | % copy BW |")
    out("|---|---|---|---|---|---|---|")
    per_op = {}
    for (op, layer, impl), b in sorted(runs.items()):
        if impl != "kestrel": continue
        c = runs.get((op, layer, "cudnn"))
        kt = b["real_time"]; ct = c["real_time"] if c else float("nan")
        scale_us = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b.get("time_unit", "us")]
        kt *= scale_us; ct *= scale_us if c else 1.0
        gbs = b.get("bytes", 0) / (kt * 1e-6) / 1e9 if kt > 0 else 0.0  # from bytes and time, robust to counter modes
        pct = 100 * gbs / copy if copy else float("nan")
        sp = ct / kt if c else float("nan")
        per_op.setdefault(op, []).append((layer, sp, pct))
        out(f"| {op} | {layer} | {kt:.1f} | {ct:.1f} | {sp:.2f}x | {gbs:.0f} | {pct:.0f}% |")
    out()
    out("## Bars")
    out()
    def med(v): return statistics.median(v) if v else float("nan")
    for op in sorted(per_op):
        rows = per_op[op]
        k3 = [r for r in rows if "_k3_" in r[0]] if op.startswith("depthwise") else rows
        msp, mpct = med([r[1] for r in k3]), med([r[2] for r in k3])
        if op.startswith("depthwise"):
            ok = msp >= 1.5 and mpct >= 70
            bar = "3x3 median: >= 1.5x cuDNN and >= 70% of copy BW"
        else:
            ok = min(r[1] for r in rows) > 1.0 and mpct >= 80
            bar = ">= 80% of copy BW (median) and faster than cuDNN BN + activation everywhere"
        out(f"- {op}: median speedup {msp:.2f}x, median {mpct:.0f}% of copy BW -> {'PASS' if ok else 'FAIL'} ({bar})")
else:
    out("Kernel benchmarks did not run (no cuDNN, skipped, or failed; see the build-gpu/gpu-check logs).")
job_log = os.path.join(logdir, "quickstart.log")
if os.path.exists(job_log):
    out()
    out("## Main job on the GPU (fashion_mnist_quickstart recipe, then eval)")
    out()
    out("```")
    for l in open(job_log, errors="replace").read().splitlines()[-25:]:
        out(l)
    out("```")
out()
if status != 0:
    out(f"Overall: FAILURES (see logs in {logdir})")
elif skipped_total:
    out(f"Overall: no failures, but {skipped_total} tests SKIPPED (no usable GPU?); {ran} ran")
else:
    out(f"Overall: all {ran} GPU tests passed")
os.makedirs(os.path.dirname(report), exist_ok=True)
open(report, "w").write("\n".join(lines) + "\n")
PY
[ -n "${OUT:-}" ] && mkdir -p "$OUT" && cp -r "$report" "$logdir" "$OUT/" 2>/dev/null
say "done (report: $report)"
exit $status
