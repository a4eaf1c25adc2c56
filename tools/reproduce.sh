#!/usr/bin/env bash
# Reproduces one seed project's results table: trains every recipe of the
# table in order (teachers before the students they distill into, float
# models before their int8 fine-tuning), evaluates each, then writes
# RUNS/TABLE.md and RUNS/TABLE.csv with `kestrel table`.
#
#   tools/reproduce.sh TABLE [--runs DIR] [--epochs N] [--device D] [--data-dir DIR] [--dry-run] [-- TRAIN FLAGS]
#
# Tables: emn (seed 1), efficientnet (seed 2), cifar10_200k (seed 3),
# distill (seed 4), fashion_mnist. Rerunning continues where it stopped: a
# recipe with an eval report is done, one with a checkpoint resumes
# (exactly, from last.safetensors), a run folder without one starts again.
# --epochs N overrides every recipe's schedule length (a quick pass; it
# changes the results). Flags after -- go to every training command. Each run
# folder records the command that trained it (reproduce.cmd): a rerun with
# other settings (a full pass over a quick one) is refused, not mixed in.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kestrel=${KESTREL_BIN:-$root/build/tools/kestrel}
recipes=$root/tools/recipes

die() { echo "reproduce: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: tools/reproduce.sh TABLE [--runs DIR] [--epochs N] [--device D] [--data-dir DIR] [--dry-run] [-- TRAIN FLAGS]"
if [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  exit 0
fi
table=$1; shift
case $table in
  emn) list="emn_tiny_cifar10 emn_small_cifar10 emn_base_cifar10" ;;
  efficientnet) list="efficientnet_b0_cifar100 efficientnet_b1_cifar100 efficientnet_b2_cifar100
    efficientnet_b3_cifar100 efficientnet_b4_cifar100 efficientnet_b5_cifar100 efficientnet_b6_cifar100
    efficientnet_b7_cifar100 reference_resnet50_cifar100 reference_resnet152_cifar100
    reference_densenet201_cifar100" ;;
  cifar10_200k) list="cifar10_200k_cifar10" ;;
  distill) list="teacher_resnet18_cifar10 teacher_mobilenet_v2_cifar10 teacher_densenet121_cifar10
    mobilenet_v3_small_w0.25_cifar10 mobilenet_v3_small_w0.5_cifar10
    distill_mobilenet_v3_small_w0.25_cifar10 distill_mobilenet_v3_small_w0.5_cifar10
    qat_mobilenet_v3_small_w0.25_cifar10 qat_mobilenet_v3_small_w0.5_cifar10" ;;
  fashion_mnist) list="cifar10_200k_fashion_mnist" ;;
  *) die "unknown table '$table' (tables: emn, efficientnet, cifar10_200k, distill, fashion_mnist)" ;;
esac

runs=runs; epochs=""; device=""; data_dir=""; dry=0; extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --runs) [ $# -ge 2 ] || die "--runs needs a folder"; runs=$2; shift 2 ;;
    --epochs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--epochs needs a positive integer, got '${2:-}'"; epochs=$2; shift 2 ;;
    --device) [ $# -ge 2 ] || die "--device needs a value (auto, cpu, cuda, cuda:N)"; device=$2; shift 2 ;;
    --data-dir) [ $# -ge 2 ] || die "--data-dir needs a folder"; data_dir=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (flags for kestrel train go after --)" ;;
  esac
done
[ "$dry" = 1 ] || [ -x "$kestrel" ] || die "no kestrel binary at $kestrel (build first: tools/quickstart.sh, or set KESTREL_BIN)"

run() {
  echo "+ $*"
  [ "$dry" = 1 ] || "$@"
}

done_runs=()
for name in $list; do
  out=$runs/$name
  done_runs+=("$out")
  case $name in
    distill_*) cmd=(distill --teacher "$runs/teacher_resnet18_cifar10/best.safetensors,$runs/teacher_mobilenet_v2_cifar10/best.safetensors,$runs/teacher_densenet121_cifar10/best.safetensors") ;;
    qat_*) cmd=(qat --checkpoint "$runs/distill_${name#qat_}/best.safetensors") ;;
    *) cmd=(train) ;;
  esac
  cmd+=(--config "$recipes/$name.toml" --out "$out")
  [ -n "$epochs" ] && cmd+=(--epochs "$epochs")
  [ -n "$device" ] && cmd+=(--device "$device")
  [ -n "$data_dir" ] && cmd+=(--data-dir "$data_dir")
  cmd+=(${extra[@]+"${extra[@]}"})
  record=$out/reproduce.cmd
  if [ -f "$record" ] && [ "$(cat "$record")" != "${cmd[*]}" ]; then
    die "$out was trained by another command (a quick --epochs pass?): remove it, or give --runs another folder; it ran: $(cat "$record")"
  fi
  if [ -f "$out/eval/report.json" ]; then
    echo "== $name: done ($out/eval/report.json)"
    continue
  fi
  if [ -f "$out/last.safetensors" ]; then
    echo "== $name: resuming $out"
    run "$kestrel" "${cmd[@]}" --resume
  else
    echo "== $name: training into $out"
    run "$kestrel" "${cmd[@]}" --overwrite  # nothing to lose: no checkpoint yet
  fi
  [ "$dry" = 1 ] || printf '%s\n' "${cmd[*]}" >"$record"
  eval_cmd=(eval --checkpoint "$out/best.safetensors" --out "$out/eval")
  [ -n "$device" ] && eval_cmd+=(--device "$device")
  [ -n "$data_dir" ] && eval_cmd+=(--data-dir "$data_dir")
  run "$kestrel" "${eval_cmd[@]}"
done

echo "== table"
run "$kestrel" table "${done_runs[@]}" --out "$runs/$table.md"
echo "+ $kestrel table ${done_runs[*]} --out $runs/$table.csv"
[ "$dry" = 1 ] || "$kestrel" table "${done_runs[@]}" --out "$runs/$table.csv" >/dev/null
