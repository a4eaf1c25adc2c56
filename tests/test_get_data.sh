#!/usr/bin/env bash
# Offline test of tools/get_data.sh's checksum logic on generated files.
# Usage: test_get_data.sh PATH/TO/get_data.sh
set -u
script=${1:?usage: test_get_data.sh PATH/TO/get_data.sh}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # check NAME EXPECTED_RC COMMAND...
  local name=$1 want=$2; shift 2
  "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [[ $rc -ne $want ]]; then
    echo "FAIL: $name: exit $rc, expected $want"; cat "$tmp/out"; fail=1
  else
    echo "ok: $name"
  fi
}
printf 'hello\n' > "$tmp/hello.txt"            # MD5 b1946ac92492d2347c6235b4d2611184
: > "$tmp/empty.bin"                            # MD5 d41d8cd98f00b204e9800998ecf8427e
check "matching MD5 passes" 0 bash "$script" --verify "$tmp/hello.txt" b1946ac92492d2347c6235b4d2611184
check "upper-case MD5 passes" 0 bash "$script" --verify "$tmp/hello.txt" B1946AC92492D2347C6235B4D2611184
check "empty file MD5 passes" 0 bash "$script" --verify "$tmp/empty.bin" d41d8cd98f00b204e9800998ecf8427e
check "wrong MD5 fails" 1 bash "$script" --verify "$tmp/hello.txt" c32a1d4ab5d03f1284b67883e8d87530
check "missing file fails" 1 bash "$script" --verify "$tmp/nope.tar.gz" c32a1d4ab5d03f1284b67883e8d87530
check "malformed MD5 is rejected" 2 bash "$script" --verify "$tmp/hello.txt" not-an-md5
printf 'hello\n' > "$tmp/cut.txt"; truncate -s 3 "$tmp/cut.txt"
check "truncated file fails" 1 bash "$script" --verify "$tmp/cut.txt" b1946ac92492d2347c6235b4d2611184
grep -q "MD5 .*expected" "$tmp/out" || { echo "FAIL: mismatch message does not name both sums"; fail=1; }
check "unknown argument fails" 1 bash "$script" --bogus

# Downloads, offline: an unreachable mirror is one line naming the URL, exit 1.
check "unreachable URL fails" 1 env KESTREL_CIFAR_URL="file://$tmp/no-mirror" bash "$script" --dest "$tmp/d" cifar10
last=$(tail -1 "$tmp/out")
[[ $last == "get_data.sh: could not download file://$tmp/no-mirror/cifar-10-binary.tar.gz"* ]] ||
  { echo "FAIL: unreachable URL: last line: $last"; fail=1; }
[[ $(grep -c . "$tmp/out") -eq 2 ]] || { echo "FAIL: unreachable URL: more than 'downloading' and one error line"; cat "$tmp/out"; fail=1; }
# A folder left incomplete (an interrupted tar) is not taken as done.
mkdir -p "$tmp/d/cifar-10-batches-bin"
printf 'x' > "$tmp/d/cifar-10-batches-bin/data_batch_1.bin"
check "incomplete folder is fetched again" 1 env KESTREL_CIFAR_URL="file://$tmp/no-mirror" bash "$script" --dest "$tmp/d" cifar10
grep -q "cifar-10-batches-bin is incomplete (data_batch_1.bin missing or cut short)" "$tmp/out" ||
  { echo "FAIL: incomplete folder not named"; cat "$tmp/out"; fail=1; }
# Every file present at its size: complete, nothing downloaded.
for f in data_batch_{1,2,3,4,5}.bin test_batch.bin; do truncate -s 30730000 "$tmp/d/cifar-10-batches-bin/$f"; done
: > "$tmp/d/cifar-10-batches-bin/batches.meta.txt"
check "complete folder is kept" 0 env KESTREL_CIFAR_URL="file://$tmp/no-mirror" bash "$script" --dest "$tmp/d" cifar10
grep -q "is complete; skipping" "$tmp/out" || { echo "FAIL: complete folder not recognised"; cat "$tmp/out"; fail=1; }
exit $fail
