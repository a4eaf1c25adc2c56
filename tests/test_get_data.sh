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
exit $fail
