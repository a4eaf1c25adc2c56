"""Recomputes Kestrel's conv2d cases with PyTorch and compares.

Usage: check_conv.py DIR. DIR/cases.txt holds one case per line:
  name stride_h stride_w pad_h pad_w dilation_h dilation_w groups has_bias
and DIR/<name>_{x,w,b,gy,y,gx,gw,gb}.npy hold Kestrel's inputs (NHWC, OHWI),
upstream gradient, output and gradients. Exits 1 if any max abs difference
exceeds the float32 tolerance.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ATOL = 2e-4


def nhwc_to_nchw(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def main(d):
    failed = False
    with open(os.path.join(d, "cases.txt")) as f:
        lines = [l.split() for l in f if l.strip()]
    for fields in lines:
        name = fields[0]
        sh, sw, ph, pw, dh, dw, groups, has_bias = map(int, fields[1:])
        load = lambda k: np.load(os.path.join(d, f"{name}_{k}.npy"))
        x = nhwc_to_nchw(load("x")).double().requires_grad_()
        w = nhwc_to_nchw(load("w")).double().requires_grad_()  # OHWI -> OIHW
        b = torch.from_numpy(load("b")).double().requires_grad_() if has_bias else None
        y = F.conv2d(x, w, b, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
        y.backward(nhwc_to_nchw(load("gy")).double())
        diffs = {
            "y": np.abs(y.detach().permute(0, 2, 3, 1).numpy() - load("y")).max(),
            "grad_x": np.abs(x.grad.permute(0, 2, 3, 1).numpy() - load("gx")).max(),
            "grad_w": np.abs(w.grad.permute(0, 2, 3, 1).numpy() - load("gw")).max(),
        }
        if has_bias:
            diffs["grad_b"] = np.abs(b.grad.numpy() - load("gb")).max()
        bad = [k for k, v in diffs.items() if not v <= ATOL]
        status = "FAIL" if bad else "ok"
        print(f"{status:4} conv2d {name:28} " + " ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
        failed |= bool(bad)
    print(f"tolerance {ATOL:.1e}: {'FAILED' if failed else 'all cases match'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
