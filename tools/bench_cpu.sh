#!/usr/bin/env bash
# Kestrel vs PyTorch, one CPU training step of the 150,690-parameter CIFAR net
# (batch 128, SGD momentum) at 1x28x28 and 3x32x32, same thread count, one run.
# Prints a table and rewrites the measured section of docs/performance.md.
#
#   tools/bench_cpu.sh                 # threads = nproc, 3 interleaved rounds
#   THREADS=2 ROUNDS=5 tools/bench_cpu.sh
#
# Environment:
#   THREADS     OpenMP / torch.set_num_threads thread count (default: nproc)
#   ROUNDS      interleaved Kestrel+PyTorch rounds; medians over rounds (default 3)
#   BUILD       build directory with bench_train_step (default: build-perf;
#               configured and built here when the binary is missing)
#   PYTHON      interpreter with torch (default: /usr/bin/python3)
#   QUIET_LOAD  wait (up to 10 min) until the 1-minute load average is below
#               this before each round (default: unset, no waiting)
#   NO_DOC=1    print only; leave docs/performance.md alone
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS="${THREADS:-$(nproc)}"
ROUNDS="${ROUNDS:-3}"
BUILD="${BUILD:-$ROOT/build-perf}"
PYTHON="${PYTHON:-/usr/bin/python3}"
BIN="$BUILD/bench/bench_train_step"
DOC="$ROOT/docs/performance.md"

if [[ ! -x "$BIN" ]]; then
  echo "bench_cpu.sh: building $BIN" >&2
  cmake -S "$ROOT" -B "$BUILD" -DKESTREL_CUDA=OFF -DKESTREL_BENCH=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" --target bench_train_step -j "$(nproc)" >/dev/null
fi
"$PYTHON" -c "import torch" 2>/dev/null || { echo "bench_cpu.sh: $PYTHON cannot import torch (apt-get install python3-torch)" >&2; exit 1; }

wait_quiet() {
  [[ -n "${QUIET_LOAD:-}" ]] || return 0
  local deadline=$((SECONDS + 600))
  while (( SECONDS < deadline )); do
    awk -v lim="$QUIET_LOAD" '{ exit !($1 < lim) }' /proc/loadavg && return 0
    sleep 10
  done
  echo "bench_cpu.sh: load still $(cut -d' ' -f1 /proc/loadavg) after 10 min; measuring anyway" >&2
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS="$THREADS"
for ((r = 1; r <= ROUNDS; ++r)); do
  wait_quiet
  echo "round $r/$ROUNDS: load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  cut -d' ' -f1 /proc/loadavg >>"$TMP/load"
  "$BIN" --benchmark_min_time=3 --benchmark_repetitions=3 --benchmark_format=json >"$TMP/kestrel.$r.json" 2>/dev/null
  "$PYTHON" "$ROOT/bench/torch_train_step.py" --threads "$THREADS" --steps 15 >"$TMP/torch.$r.jsonl"
done

CPU_MODEL="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
"$PYTHON" - "$TMP" "$ROUNDS" "$THREADS" "$DOC" "${NO_DOC:-0}" "$CPU_MODEL" <<'EOF'
import datetime, json, os, statistics, sys
import torch

tmp, rounds, threads, doc, no_doc, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1", sys.argv[6]
kes, tor = {}, {}  # shape -> [img/s per round]; (shape, format) -> [img/s per round]
for r in range(1, rounds + 1):
    with open(f"{tmp}/kestrel.{r}.json") as f:
        for b in json.load(f)["benchmarks"]:
            if b.get("aggregate_name") != "median":
                continue
            c, hw = b["run_name"].split("/")[1:3]  # BM_TrainStep/C:1/HW:28/...
            shape = f"{c[2:]}x{hw[3:]}x{hw[3:]}"
            kes.setdefault(shape, []).append(b["img_per_s"])
    with open(f"{tmp}/torch.{r}.jsonl") as f:
        for line in f:
            t = json.loads(line)
            tor.setdefault((t["shape"], t["memory_format"]), []).append(t["img_per_s"])
loads = [float(x) for x in open(f"{tmp}/load").read().split()]

def spread(v):
    return f"{min(v):.0f}-{max(v):.0f}"

rows = []
for shape in sorted(kes, key=lambda s: s != "1x28x28"):
    k = statistics.median(kes[shape])
    fmts = {fmt: statistics.median(v) for (s, fmt), v in tor.items() if s == shape}
    best = max(fmts, key=fmts.get)
    rows.append((shape, k, kes[shape], fmts, best, tor[(shape, best)]))

head = "| input | Kestrel img/s | PyTorch img/s (best format) | Kestrel / PyTorch | PyTorch channels-first | PyTorch channels-last |"
sep = "|---|---|---|---|---|---|"
lines = [head, sep]
for shape, k, kv, fmts, best, bv in rows:
    lines.append(f"| {shape} | {k:.1f} ({spread(kv)}) | {fmts[best]:.1f} ({spread(bv)}, {best}) | {k / fmts[best]:.2f}x | "
                 f"{fmts.get('channels_first', float('nan')):.1f} | {fmts.get('channels_last', float('nan')):.1f} |")
table = "\n".join(lines)
print(table)

if no_doc:
    sys.exit(0)
date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
begin, end = f"<!-- bench_cpu:begin threads={threads} ", f"<!-- bench_cpu:end threads={threads} -->"
section = f"""{begin} (written by tools/bench_cpu.sh; edits here are overwritten) -->
### {threads} thread{"s" if threads != 1 else ""}

Measured {date} with `THREADS={threads} ROUNDS={rounds} tools/bench_cpu.sh`:
{os.cpu_count()} logical CPUs (nproc), {cpu}; {threads} threads for both engines;
PyTorch {torch.__version__} (CPU). Batch 128, SGD momentum 0.9, weight decay 5e-4,
dropout 0.2, forward + cross-entropy + backward + step + zero_grad per step.

{table}

Kestrel: median of {rounds} rounds, each the median of 3 Google Benchmark repetitions
(>= 3 s each); the range over rounds in brackets. PyTorch: median over rounds of the
median of 15 timed steps (3 warm-up), in both memory formats; the faster format is the
baseline for the ratio. 1-minute load average at the start of each round:
{", ".join(f"{x:.2f}" for x in loads)} (other work on the machine inflates both sides).
{end}"""

text = open(doc).read() if os.path.exists(doc) else "# CPU performance\n"
b, e = text.find(begin), text.find(end)
if b < 0 or e < 0:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
else:
    text = text[:b] + section + text[e + len(end):]
with open(doc, "w") as f:
    f.write(text)
print(f"wrote {doc}", file=sys.stderr)
EOF
