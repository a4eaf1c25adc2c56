#!/usr/bin/env bash
# Installs every build and test dependency on a fresh Debian machine.
# Idempotent and quiet: prints nothing unless something fails.
set -euo pipefail

log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail() { echo "setup: $1 (log follows)" >&2; cat "$log" >&2; exit 1; }

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi

packages=(
  build-essential cmake pkg-config git ccache
  libopenblas-dev libstb-dev libcli11-dev nlohmann-json3-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
  libonnx-dev libprotobuf-dev
  python3 python3-pip python3-numpy python3-torch python3-torchvision
  dataset-fashion-mnist xz-utils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo_cmd apt-get update -qq >>"$log" 2>&1 || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
    || fail "apt-get install ${missing[*]} failed"
fi

# Python interop tests only (never needed to train): safetensors and
# onnxruntime for the system Python that has torch, and timm (GhostNet's
# reference) without its dependencies, so pip leaves Debian's torch alone.
for module in safetensors onnxruntime timm; do
  if ! /usr/bin/python3 -c "import $module" >/dev/null 2>&1; then
    no_deps=(); [ "$module" = timm ] && no_deps=(--no-deps)
    /usr/bin/python3 -m pip install -q --break-system-packages "${no_deps[@]}" "$module" >>"$log" 2>&1 \
      || fail "pip install $module failed"
  fi
done
