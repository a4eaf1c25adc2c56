#!/usr/bin/env bash
# The main job: build Kestrel, train the default model on Fashion-MNIST
# (tools/recipes/fashion_mnist_quickstart.toml), then print its evaluation report.
# Extra arguments go to `kestrel train` (e.g. --epochs 1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${KESTREL_BUILD_DIR:-build}
out=${KESTREL_RUN_DIR:-runs/quickstart}

echo "== building kestrel ($build)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target kestrel >"$build.kestrel.log" 2>&1 \
  || { grep -E "error" "$build.kestrel.log" | head -30; exit 1; }

echo "== training (run folder $out)"
"$build/tools/kestrel" train --config tools/recipes/fashion_mnist_quickstart.toml --out "$out" --overwrite "$@"

echo "== evaluating $out/best.safetensors"
"$build/tools/kestrel" eval --checkpoint "$out/best.safetensors" --out "$out/eval"
