#!/usr/bin/env python3
"""Recomputes Kestrel's softmax and loss cases with PyTorch and compares.

Usage: check_loss.py DIR. DIR/loss_cases.txt lists one case per line:
    name kind p1 p2
kind: ce (p1 = label smoothing), soft, focal (p1 = gamma, p2 = alpha),
kl (p1 = temperature), softmax / log_softmax (p1 = dim).
DIR/<name>_{x,t,gy}.npy are the inputs and upstream gradient; <name>_{out,gx}.npy
are Kestrel's output and input gradient. Exits 1 when any max abs difference
exceeds the f32 tolerance, printing every comparison.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ATOL = 1e-5
RTOL = 1e-4


def reference(kind, x, t, p1, p2):
    if kind == "ce":
        return F.cross_entropy(x, t, label_smoothing=p1)
    if kind == "soft":
        return F.cross_entropy(x, t)  # probability targets (torch >= 1.10)
    if kind == "focal":
        logpt = F.log_softmax(x, dim=1).gather(1, t[:, None])[:, 0]
        return (-p2 * (1 - logpt.exp()) ** p1 * logpt).mean()
    if kind == "kl":
        T = p1
        return F.kl_div(F.log_softmax(x / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * T * T
    if kind == "softmax":
        return F.softmax(x, dim=int(p1))
    if kind == "log_softmax":
        return F.log_softmax(x, dim=int(p1))
    raise ValueError(f"unknown case kind {kind}")


def main():
    d = sys.argv[1]
    path = lambda name, what: os.path.join(d, f"{name}_{what}.npy")
    failures = 0
    with open(os.path.join(d, "loss_cases.txt")) as f:
        lines = [l.split() for l in f if l.strip()]
    for name, kind, p1, p2 in lines:
        p1, p2 = float(p1), float(p2)
        # Reference in f64 from the exact f32 inputs Kestrel used.
        x = torch.from_numpy(np.load(path(name, "x"))).double().requires_grad_()
        t = torch.from_numpy(np.load(path(name, "t"))) if os.path.exists(path(name, "t")) else None
        if t is not None and t.dtype != torch.int64:
            t = t.double()
        gy = torch.from_numpy(np.load(path(name, "gy"))).double()
        out = reference(kind, x, t, p1, p2)
        out.backward(gy.reshape(out.shape))
        for what, ref in (("out", out.detach()), ("gx", x.grad)):
            ours = torch.from_numpy(np.load(path(name, what))).double().reshape(ref.shape)
            err = (ours - ref).abs()
            ok = bool((err <= ATOL + RTOL * ref.abs()).all())
            print(f"{'ok  ' if ok else 'FAIL'} {name:12s} {what:4s} max abs diff {float(err.max()):.3e} "
                  f"(tolerance {ATOL:g} + {RTOL:g}*|ref|)")
            failures += not ok
    print(f"check_loss: {len(lines)} cases, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
