"""Runs Kestrel's int8 (QDQ) ONNX graphs in onnxruntime and compares logits.

Usage: check_onnx_int8.py DIR. Each line of DIR/models.txt is
"NAME MIN_INT8 SIMULATED_RTOL INT8_RTOL":
DIR/NAME.onnx is the exported quantized graph, DIR/NAME_x.npy an input batch
(NHWC) and DIR/NAME_logits.npy Kestrel's fake-quantized logits for it.

Two sessions per graph:
- unoptimized: onnxruntime runs each QuantizeLinear / DequantizeLinear as
  written, the arithmetic Kestrel simulates; logits must agree within
  SIMULATED_RTOL of their span (float sums in another order can land a value
  on the neighbouring grid point).
- optimized (the default, what users run): onnxruntime fuses the QDQ pattern
  into integer kernels (QLinearConv, QGemm, ...). At least MIN_INT8 of them
  must appear, and the logits must agree within INT8_RTOL of their span
  (integer requantization rounds differently from the float simulation).
Exits 1 on any failure.
"""
import json
import os
import sys
from collections import Counter

import numpy as np
import onnxruntime as ort

INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearConcat",
                "QLinearSigmoid", "QLinearMatMul", "ConvInteger", "MatMulIntegerToFloat")


def run(path, x, level):
    """Logits, and how many nodes of each op type onnxruntime ran (from its profile)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(os.path.dirname(path), "profile")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    nodes = {(e["name"], e["args"]["op_name"]) for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}
    return y, Counter(op for _, op in nodes)


def main(d):
    failed = False
    with open(os.path.join(d, "models.txt")) as f:
        rows = [l.split() for l in f if l.strip()]
    for name, min_int8, sim_rtol, int8_rtol in rows:
        path = os.path.join(d, name + ".onnx")
        x = np.load(os.path.join(d, name + "_x.npy")).transpose(0, 3, 1, 2).copy()
        ref = np.load(os.path.join(d, name + "_logits.npy"))
        span = float(ref.max() - ref.min()) or 1.0
        simulated, _ = run(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        fused, ops = run(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        int8_ops = {k: v for k, v in ops.items() if k in INT8_KERNELS}
        d_sim = float(np.abs(simulated - ref).max())
        d_int8 = float(np.abs(fused - ref).max())
        agree = float((fused.argmax(1) == ref.argmax(1)).mean())
        ok = (d_sim <= float(sim_rtol) * span and d_int8 <= float(int8_rtol) * span
              and sum(int8_ops.values()) >= int(min_int8))
        print(f"{name}: logit span {span:.3f}; max |diff| QDQ as written {d_sim:.3g}, int8 kernels {d_int8:.3g} "
              f"(top-1 agreement {agree:.2f}); int8 kernels {int8_ops}, float Conv left {ops.get('Conv', 0)}: "
              f"{'ok' if ok else 'MISMATCH'}")
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
