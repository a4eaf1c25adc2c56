"""Recomputes Kestrel's linear case with PyTorch and compares.

Usage: check_linear.py DIR, where DIR holds {x,w,b,gy,y,gx,gw,gb}.npy written by
tests/test_linear.cpp. Exits 1 if a max abs difference exceeds the f32 tolerance.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ATOL = 1e-4


def main(d):
    load = lambda k: np.load(os.path.join(d, f"{k}.npy"))
    x = torch.from_numpy(load("x")).double().requires_grad_()
    w = torch.from_numpy(load("w")).double().requires_grad_()
    b = torch.from_numpy(load("b")).double().requires_grad_()
    y = F.linear(x, w, b)
    y.backward(torch.from_numpy(load("gy")).double())
    diffs = {
        "y": np.abs(y.detach().numpy() - load("y")).max(),
        "grad_x": np.abs(x.grad.numpy() - load("gx")).max(),
        "grad_w": np.abs(w.grad.numpy() - load("gw")).max(),
        "grad_b": np.abs(b.grad.numpy() - load("gb")).max(),
    }
    bad = [k for k, v in diffs.items() if not v <= ATOL]
    print(("FAIL" if bad else "ok  ") + " linear " + " ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    print(f"tolerance {ATOL:.1e}: {'FAILED' if bad else 'all match'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
