#!/usr/bin/env python3
"""Recomputes Kestrel's batch norm cases with PyTorch and compares.

Usage: check_norm.py DIR. DIR/norm_cases.txt lists one case per line:
    name training act residual momentum eps
and DIR/<name>_<what>.npy hold the inputs (x NHWC, w, b, rm0, rv0, res, gy) and
Kestrel's results (y, gx, gw, gb, gres, rm1, rv1). The reference is
F.batch_norm on the NCHW permutation of x (BatchNorm2d's computation), plus the
residual and the activation composed from torch ops. Exits 1 when any max abs
difference exceeds the f32 tolerance, printing every comparison.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ACTS = {
    "none": lambda z: z,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "gelu": F.gelu,
}

ATOL = 1e-4
RTOL = 1e-4


def main():
    d = sys.argv[1]
    load = lambda name, what: torch.from_numpy(np.load(os.path.join(d, f"{name}_{what}.npy")))
    failures = 0
    with open(os.path.join(d, "norm_cases.txt")) as f:
        lines = [l.split() for l in f if l.strip()]
    for name, training, act, residual, momentum, eps in lines:
        training, residual = training == "1", residual == "1"
        momentum, eps = float(momentum), float(eps)
        x = load(name, "x").double().requires_grad_()
        w = load(name, "w").double().requires_grad_()
        b = load(name, "b").double().requires_grad_()
        rm = load(name, "rm0").double()
        rv = load(name, "rv0").double()
        res = load(name, "res").double().requires_grad_() if residual else None
        gy = load(name, "gy").double()
        # NHWC -> NCHW for torch, back to NHWC for the comparison.
        perm = [0, x.dim() - 1] + list(range(1, x.dim() - 1))
        inv = [0] + list(range(2, x.dim())) + [1]
        z = F.batch_norm(x.permute(perm), rm, rv, w, b, training, momentum, eps).permute(inv)
        if res is not None:
            z = z + res
        y = ACTS[act](z)
        y.backward(gy)
        checks = [("y", y), ("gx", x.grad), ("gw", w.grad), ("gb", b.grad), ("rm1", rm), ("rv1", rv)]
        if res is not None:
            checks.append(("gres", res.grad))
        for what, ref in checks:
            ours = load(name, what).double()
            ref = ref.detach()
            err = (ours - ref).abs()
            allowed = ATOL + RTOL * ref.abs()
            ok = bool((err <= allowed).all())
            worst = float(err.max())
            print(f"{'ok  ' if ok else 'FAIL'} {name:18s} {what:5s} max abs diff {worst:.3e} "
                  f"(tolerance {ATOL:g} + {RTOL:g}*|ref|)")
            failures += not ok
    print(f"check_norm: {len(lines)} cases, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
