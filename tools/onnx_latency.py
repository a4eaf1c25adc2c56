#!/usr/bin/env python3
"""Times an exported ONNX model in onnxruntime on the CPU, the way `kestrel eval`
times a checkpoint: batch-1 latency (median, p95 over --iters runs after a
warm-up) and throughput at --batch. Inputs are random; only speed is measured.

Usage: tools/onnx_latency.py MODEL.onnx [--threads 2] [--iters 100] [--batch 256]
Needs onnxruntime and numpy (tools/setup.sh installs them for /usr/bin/python3).
"""
import argparse
import sys
import time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    sys.exit(f"onnx_latency: {e.name} is not installed (tools/setup.sh installs it)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (Kestrel's OpenMP threads, for a fair match)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="batch size of the throughput measurement")
    a = p.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types; one line either way
        sys.exit(f"onnx_latency: cannot load {a.model}: {str(e).splitlines()[0]}")
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(shape, dtype=np.float32)
    for _ in range(10):
        sess.run(None, {inp.name: x1})
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        sess.run(None, {inp.name: x1})
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    median, p95 = times[len(times) // 2], times[min(len(times) - 1, int(0.95 * len(times)))]
    if isinstance(inp.shape[0], int):
        print(f"{a.model}: latency median {median:.3f} ms, p95 {p95:.3f} ms (batch fixed at {inp.shape[0]})")
        return
    xb = rng.standard_normal([a.batch] + shape[1:], dtype=np.float32)
    sess.run(None, {inp.name: xb})
    t = time.perf_counter()
    reps = 3
    for _ in range(reps):
        sess.run(None, {inp.name: xb})
    per_sec = reps * a.batch / (time.perf_counter() - t)
    print(f"{a.model}: latency median {median:.3f} ms, p95 {p95:.3f} ms; throughput {per_sec:.0f} img/s at batch {a.batch}"
          f" ({a.threads} threads)")


if __name__ == "__main__":
    main()
