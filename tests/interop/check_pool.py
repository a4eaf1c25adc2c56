"""Recomputes Kestrel's pooling and resize cases with PyTorch and compares.

Usage: check_pool.py DIR. DIR/cases.txt holds one case per line:
  name kind a b c
kind: max | avg | avg_exclude (a=kernel b=stride c=padding),
      adaptive (a=out_h b=out_w), bilinear | bilinear_ac (a=out_h b=out_w).
DIR/<name>_{x,gy,y,gx}.npy are NHWC. Exits 1 if a max abs difference exceeds
the float32 tolerance.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ATOL = 1e-4


def nchw(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def apply(kind, x, a, b, c):
    if kind == "max":
        return F.max_pool2d(x, a, b, c)
    if kind == "avg":
        return F.avg_pool2d(x, a, b, c, count_include_pad=True)
    if kind == "avg_exclude":
        return F.avg_pool2d(x, a, b, c, count_include_pad=False)
    if kind == "adaptive":
        return F.adaptive_avg_pool2d(x, (a, b))
    if kind in ("bilinear", "bilinear_ac"):
        return F.interpolate(x, size=(a, b), mode="bilinear", align_corners=(kind == "bilinear_ac"))
    raise ValueError(kind)


def main(d):
    failed = False
    with open(os.path.join(d, "cases.txt")) as f:
        lines = [l.split() for l in f if l.strip()]
    for name, kind, a, b, c in lines:
        load = lambda k: np.load(os.path.join(d, f"{name}_{k}.npy"))
        # f32 like Kestrel, so max-pool picks the same element on near ties.
        x = nchw(load("x")).requires_grad_()
        y = apply(kind, x, int(a), int(b), int(c))
        y.backward(nchw(load("gy")))
        diffs = {
            "y": np.abs(y.detach().permute(0, 2, 3, 1).numpy() - load("y")).max(),
            "grad_x": np.abs(x.grad.permute(0, 2, 3, 1).numpy() - load("gx")).max(),
        }
        bad = [k for k, v in diffs.items() if not v <= ATOL]
        print(f"{'FAIL' if bad else 'ok':4} {kind:12} {name:20} " + " ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
        failed |= bool(bad)
    print(f"tolerance {ATOL:.1e}: {'FAILED' if failed else 'all cases match'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
