"""Runs Kestrel's exported ONNX graphs in onnxruntime and compares logits.

Usage: check_onnx.py DIR. DIR/models.txt lists names; for each, DIR/<name>.onnx
is the exported graph, DIR/<name>_x.npy an input batch (NHWC, the batch size
differs from the traced one, so a free batch dim is exercised) and
DIR/<name>_logits.npy Kestrel's eval-mode logits for it.
Exits 1 when any max |logit difference| exceeds ATOL + RTOL * max |logit|.
"""
import os
import sys

import numpy as np
import onnxruntime as ort

ATOL = 1e-5
RTOL = 1e-4


def main(d):
    failed = False
    with open(os.path.join(d, "models.txt")) as f:
        names = [l.strip() for l in f if l.strip()]
    for name in names:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(os.path.join(d, name + ".onnx"), opts, providers=["CPUExecutionProvider"])
        x = np.load(os.path.join(d, name + "_x.npy")).transpose(0, 3, 1, 2).copy()
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
        ref = np.load(os.path.join(d, name + "_logits.npy"))
        if y.shape != ref.shape:
            print(f"{name}: logits shape {ref.shape} in Kestrel, {y.shape} in onnxruntime")
            failed = True
            continue
        diff = np.abs(y - ref)
        tol = ATOL + RTOL * np.abs(ref).max()
        ok = diff.max() <= tol
        print(f"{name}: max |logit diff| = {diff.max():.3g}, logits span [{ref.min():.3f}, {ref.max():.3f}], "
              f"tolerance {tol:.3g}: {'ok' if ok else 'MISMATCH'}")
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
