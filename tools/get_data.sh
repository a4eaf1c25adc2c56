#!/usr/bin/env bash
# Downloads the CIFAR-10 and CIFAR-100 binary releases from their official
# location (Krizhevsky, 2009), checks their MD5 sums, and unpacks them.
#
#   tools/get_data.sh [--dest DIR] [cifar10] [cifar100]   (default: both, into ./datasets)
#   tools/get_data.sh --verify FILE MD5                     (exit 0 when FILE's MD5 is MD5)
#
# After it: DIR/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin and
# DIR/cifar-100-binary/{train,test}.bin, which data::open_cifar10/100 read.
# A folder already there is checked file by file (sizes included) and
# unpacked again when incomplete. KESTREL_CIFAR_URL names a mirror.
# Fashion-MNIST comes from the Debian package dataset-fashion-mnist.
set -euo pipefail

CIFAR_URL=${KESTREL_CIFAR_URL:-https://www.cs.toronto.edu/~kriz}
CIFAR10_FILE=cifar-10-binary.tar.gz
CIFAR10_MD5=c32a1d4ab5d03f1284b67883e8d87530
CIFAR100_FILE=cifar-100-binary.tar.gz
CIFAR100_MD5=03b5dce01913d631647c71ecec9e9cb8

die() { echo "get_data.sh: $*" >&2; exit 1; }

md5_of() {
  if command -v md5sum >/dev/null 2>&1; then
    md5sum "$1" | cut -d' ' -f1
  elif command -v md5 >/dev/null 2>&1; then
    md5 -q "$1"
  elif command -v openssl >/dev/null 2>&1; then
    openssl md5 -r "$1" | cut -d' ' -f1
  else
    die "no md5sum, md5 or openssl to check downloads with"
  fi
}

# verify FILE MD5: 0 when the file exists and its MD5 matches (case-insensitive).
verify() {
  local file=$1 want
  want=$(printf '%s' "$2" | tr 'A-F' 'a-f')
  [[ $want =~ ^[0-9a-f]{32}$ ]] || { echo "get_data.sh: '$2' is not an MD5 (32 hex digits)" >&2; return 2; }
  [[ -f $file ]] || { echo "get_data.sh: $file: no such file" >&2; return 1; }
  local got
  got=$(md5_of "$file")
  if [[ $got != "$want" ]]; then
    echo "get_data.sh: $file: MD5 $got, expected $want (corrupt or incomplete download; delete it and retry)" >&2
    return 1
  fi
  echo "$file: MD5 OK"
}

# One line on failure (the tool's own reason in it); a progress bar only on a terminal.
download() {
  local url=$1 out=$2 err
  err=$(mktemp)
  local ok=0
  if command -v curl >/dev/null 2>&1; then
    if [[ -t 2 ]]; then
      curl -fL --retry 3 -# -o "$out.part" "$url" || ok=$?
    else
      curl -fsSL --retry 3 -o "$out.part" "$url" 2>"$err" || ok=$?
    fi
  elif command -v wget >/dev/null 2>&1; then
    if [[ -t 2 ]]; then
      wget -q --show-progress -O "$out.part" "$url" || ok=$?
    else
      wget -q -O "$out.part" "$url" 2>"$err" || ok=$?
    fi
  else
    die "need curl or wget to download $url"
  fi
  local reason
  reason=$(grep -v '^Warning' "$err" | tail -1 || true)
  rm -f "$err"
  if [[ $ok -ne 0 ]]; then
    rm -f "$out.part"
    die "could not download $url (${reason:-exit $ok}); check the network, or put $(basename "$out") in $(dirname "$out") yourself and rerun"
  fi
  mv "$out.part" "$out"
}

# The first missing or wrongly sized file of DIR, from NAME:BYTES pairs; empty when complete.
first_missing() {
  local dir=$1; shift
  local pair name bytes
  for pair in "$@"; do
    name=${pair%%:*}; bytes=${pair#*:}
    if [[ ! -f $dir/$name ]] || [[ $bytes != "-" && $(wc -c <"$dir/$name") -ne $bytes ]]; then
      echo "$name"
      return
    fi
  done
}

fetch() {  # fetch FILE MD5 DIR_IT_UNPACKS_TO NAME:BYTES...
  local file=$1 md5=$2 unpacked=$3; shift 3
  if [[ -d $DEST/$unpacked ]]; then
    local missing
    missing=$(first_missing "$DEST/$unpacked" "$@")
    if [[ -z $missing ]]; then
      echo "$DEST/$unpacked is complete; skipping"
      return
    fi
    echo "$DEST/$unpacked is incomplete ($missing missing or cut short); unpacking it again"
  fi
  if [[ -f $DEST/$file ]] && verify "$DEST/$file" "$md5" >/dev/null 2>&1; then
    echo "$DEST/$file already downloaded"
  else
    echo "downloading $CIFAR_URL/$file"
    download "$CIFAR_URL/$file" "$DEST/$file"
  fi
  verify "$DEST/$file" "$md5" || die "refusing to unpack $DEST/$file"
  rm -rf "${DEST:?}/$unpacked"
  tar -xzf "$DEST/$file" -C "$DEST"
  local missing_after
  missing_after=$(first_missing "$DEST/$unpacked" "$@")
  [[ -z $missing_after ]] || die "$DEST/$file unpacked without $missing_after"
  echo "unpacked $DEST/$unpacked"
}

main() {
  DEST=datasets
  local want=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --verify)
        [[ $# -eq 3 ]] || die "usage: get_data.sh --verify FILE MD5"
        verify "$2" "$3"
        return $?
        ;;
      --dest) [[ $# -ge 2 ]] || die "--dest needs a directory"; DEST=$2; shift 2 ;;
      cifar10|cifar100) want+=("$1"); shift ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; return 0 ;;
      *) die "unknown argument '$1' (expected cifar10, cifar100, --dest DIR or --verify FILE MD5)" ;;
    esac
  done
  [[ ${#want[@]} -gt 0 ]] || want=(cifar10 cifar100)
  mkdir -p "$DEST"
  for w in "${want[@]}"; do
    case $w in
      # 10,000 records of 1 label + 3,072 pixel bytes per batch; CIFAR-100 records have 2 labels.
      cifar10) fetch "$CIFAR10_FILE" "$CIFAR10_MD5" cifar-10-batches-bin data_batch_{1,2,3,4,5}.bin:30730000 \
                 test_batch.bin:30730000 batches.meta.txt:- ;;
      cifar100) fetch "$CIFAR100_FILE" "$CIFAR100_MD5" cifar-100-binary train.bin:153700000 test.bin:30740000 \
                  fine_label_names.txt:- coarse_label_names.txt:- ;;
    esac
  done
}

main "$@"
