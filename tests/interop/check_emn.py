"""Runs Kestrel's EfficientMicroNet weights in bench/torch_emn.py, an
independent PyTorch implementation, and compares logits, gradients and
running statistics with Kestrel's (tests/interop/twin_check.py).

Usage: check_emn.py DIR. DIR/models.txt lists "NAME CLASSES CHANNELS STEM"
rows ("emn_tiny 10 3 cifar"); DIR/NAME_* are twin_check.py's files.
Exits 1 on any mismatch.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from torch_emn import build_emn  # noqa: E402
from twin_check import check_twin  # noqa: E402


def main(d):
    torch.manual_seed(0)
    failed = False
    with open(os.path.join(d, "models.txt")) as f:
        rows = [line.split() for line in f if line.strip()]
    for name, classes, channels, stem in rows:
        model = build_emn(name, int(classes), int(channels), stem == "cifar", dropout=0.0)
        failed |= not check_twin(model, os.path.join(d, name), name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
