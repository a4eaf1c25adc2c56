#!/usr/bin/env bash
# Downloads the CIFAR-10 and CIFAR-100 binary releases from their official
# location (Krizhevsky, 2009), checks their MD5 sums, and unpacks them.
#
#   tools/get_data.sh [--dest DIR] [cifar10] [cifar100]   (default: both, into ./datasets)
#   tools/get_data.sh --verify FILE MD5                     (exit 0 when FILE's MD5 is MD5)
#
# After it: DIR/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin and
# DIR/cifar-100-binary/{train,test}.bin, which data::open_cifar10/100 read.
# Fashion-MNIST comes from the Debian package dataset-fashion-mnist.
set -euo pipefail

CIFAR_URL=https://www.cs.toronto.edu/~kriz
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

download() {
  local url=$1 out=$2
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 3 -o "$out.part" "$url"
  elif command -v wget >/dev/null 2>&1; then
    wget -O "$out.part" "$url"
  else
    die "need curl or wget to download $url"
  fi
  mv "$out.part" "$out"
}

fetch() {  # fetch FILE MD5 DIR_IT_UNPACKS_TO
  local file=$1 md5=$2 unpacked=$3
  if [[ -d $DEST/$unpacked ]]; then
    echo "$DEST/$unpacked exists; skipping"
    return
  fi
  if [[ -f $DEST/$file ]] && verify "$DEST/$file" "$md5" >/dev/null 2>&1; then
    echo "$DEST/$file already downloaded"
  else
    echo "downloading $CIFAR_URL/$file"
    download "$CIFAR_URL/$file" "$DEST/$file"
  fi
  verify "$DEST/$file" "$md5" || die "refusing to unpack $DEST/$file"
  tar -xzf "$DEST/$file" -C "$DEST"
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
      -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; return 0 ;;
      *) die "unknown argument '$1' (expected cifar10, cifar100, --dest DIR or --verify FILE MD5)" ;;
    esac
  done
  [[ ${#want[@]} -gt 0 ]] || want=(cifar10 cifar100)
  mkdir -p "$DEST"
  for w in "${want[@]}"; do
    case $w in
      cifar10) fetch "$CIFAR10_FILE" "$CIFAR10_MD5" cifar-10-batches-bin ;;
      cifar100) fetch "$CIFAR100_FILE" "$CIFAR100_MD5" cifar-100-binary ;;
    esac
  done
}

main "$@"
