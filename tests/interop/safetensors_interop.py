"""Safetensors interop with Python's `safetensors` package.

  check PATH   read a file Kestrel wrote; every tensor must equal the pattern below
  write PATH   write the same pattern (numpy dtypes only: numpy has no bfloat16)

Pattern, for flat index i: ((7 i) mod 23) - 11 for signed integers, that over 4
for floats (exact in every float dtype), ((7 i) mod 23) * 10 for U8.
Exit code 0 on success; failures are printed.
"""
import sys

import numpy as np
import safetensors
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

# name -> (safetensors dtype, shape); test_safetensors.cpp uses the same table.
TENSORS = {
    "block.weight": ("F32", (3, 4, 5)),
    "half": ("F16", (7,)),
    "bf": ("BF16", (2, 3)),
    "dbl": ("F64", (4, 1)),
    "i32": ("I32", (5,)),
    "i64": ("I64", (2, 2)),
    "u8": ("U8", (6,)),
    "i8": ("I8", (3, 3)),
    "scalar": ("F64", ()),
    "empty": ("F32", (0, 3)),
}
NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I32": np.int32, "I64": np.int64,
         "U8": np.uint8, "I8": np.int8}


def pattern(dtype, shape):
    n = int(np.prod(shape, dtype=np.int64))
    k = (np.arange(n, dtype=np.int64) * 7) % 23
    if dtype == "U8":
        v = k * 10
    elif dtype in ("I32", "I64", "I8"):
        v = k - 11
    else:
        v = (k - 11) / 4.0
    return v.astype(np.float64).reshape(shape)


def bf16_to_f64(raw, shape):
    bits = np.frombuffer(bytes(raw), dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64).reshape(shape)


def check(path):
    bad = 0
    # 1) the Rust core's own parse of the whole file
    with open(path, "rb") as f:
        parsed = dict(safetensors.deserialize(f.read()))
    if set(parsed) != set(TENSORS):
        print("names differ:", sorted(parsed), "vs", sorted(TENSORS))
        return 1
    for name, (dtype, shape) in TENSORS.items():
        info = parsed[name]
        if info["dtype"] != dtype or tuple(info["shape"]) != shape:
            print(f"{name}: header says {info['dtype']} {info['shape']}, expected {dtype} {list(shape)}")
            bad += 1
            continue
        if dtype == "BF16":
            got = bf16_to_f64(info["data"], shape)
        else:
            got = np.frombuffer(bytes(info["data"]), dtype=np.dtype(NUMPY[dtype]).newbyteorder("<"))
            got = got.astype(np.float64).reshape(shape)
        if not np.array_equal(got, pattern(dtype, shape)):
            print(f"{name}: values differ: {got.ravel()[:8]} vs {pattern(dtype, shape).ravel()[:8]}")
            bad += 1
    # 2) the numpy front end, for every dtype numpy has
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        for name, (dtype, shape) in TENSORS.items():
            if dtype == "BF16":
                continue
            arr = f.get_tensor(name)
            if arr.dtype != NUMPY[dtype] or arr.shape != shape:
                print(f"{name}: numpy gives {arr.dtype} {arr.shape}")
                bad += 1
            elif not np.array_equal(arr.astype(np.float64), pattern(dtype, shape)):
                print(f"{name}: numpy values differ")
                bad += 1
    if meta != {"format": "pt", "producer": "kestrel"}:
        print("metadata differs:", meta)
        bad += 1
    print(f"checked {len(TENSORS)} tensors from {path}: {bad} problems")
    return 1 if bad else 0


def write(path):
    tensors = {name: pattern(dtype, shape).astype(NUMPY[dtype])
               for name, (dtype, shape) in TENSORS.items() if dtype != "BF16"}
    save_file(tensors, path, metadata={"producer": "python", "format": "np"})
    # round trip through the package itself as a sanity check of the script
    back = load_file(path)
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())
    print(f"wrote {len(tensors)} tensors to {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("check", "write"):
        print(__doc__)
        sys.exit(2)
    sys.exit(check(sys.argv[2]) if sys.argv[1] == "check" else write(sys.argv[2]))
