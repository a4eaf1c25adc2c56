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


def open_session(path, threads, tool="onnx_latency"):
    """A CPU session with `threads` intra-op threads; a load failure exits with one line."""
    if path.endswith(".safetensors"):
        sys.exit(f"{tool}: {path} is a Kestrel checkpoint, not an ONNX model; `kestrel export -c {path}` "
                 "writes one beside it")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types; one line either way
        sys.exit(f"{tool}: cannot load {path}: {str(e).splitlines()[0]}")


def measure_speed(sess, iters, batch):
    """(median ms, p95 ms) at batch 1 and images/s at `batch` (None when the batch dim is fixed)."""
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(shape, dtype=np.float32)
    for _ in range(10):
        sess.run(None, {inp.name: x1})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {inp.name: x1})
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    median, p95 = times[len(times) // 2], times[min(len(times) - 1, int(0.95 * len(times)))]
    if isinstance(inp.shape[0], int):
        return median, p95, None
    xb = rng.standard_normal([batch] + shape[1:], dtype=np.float32)
    sess.run(None, {inp.name: xb})
    reps, t = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t < 2.0:  # at least 3 batches and 2 s
        sess.run(None, {inp.name: xb})
        reps += 1
    return median, p95, reps * batch / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (Kestrel's OpenMP threads, for a fair match)")
    p.add_argument("--iters", type=int, default=100, help="timed batch-1 runs after the warm-up")
    p.add_argument("--batch", type=int, default=256, help="batch size of the throughput measurement")
    a = p.parse_args()
    sess = open_session(a.model, a.threads)
    median, p95, per_sec = measure_speed(sess, a.iters, a.batch)
    if per_sec is None:
        print(f"{a.model}: latency median {median:.3f} ms, p95 {p95:.3f} ms "
              f"(batch fixed at {sess.get_inputs()[0].shape[0]})")
        return
    print(f"{a.model}: latency median {median:.3f} ms, p95 {p95:.3f} ms; throughput {per_sec:.0f} img/s at batch {a.batch}"
          f" ({a.threads} threads)")


if __name__ == "__main__":
    main()
