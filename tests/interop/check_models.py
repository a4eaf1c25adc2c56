"""Loads Kestrel's weights into torchvision's (or timm's) models and compares
logits, gradients and running statistics (tests/interop/twin_check.py).

Usage: check_models.py DIR. DIR/models.txt lists "NAME LIBRARY" rows
(torchvision or timm); DIR/<name>_* are twin_check.py's files. Loading is
strict (every name and shape must match both ways). Exits 1 on any mismatch.
"""
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from twin_check import check_twin, without_dropout  # noqa: E402


def main(d):
    torch.manual_seed(0)
    failed = False
    with open(os.path.join(d, "models.txt")) as f:
        rows = [line.split() for line in f if line.strip()]
    for name, library in rows:
        if library == "timm":
            import timm

            model = timm.create_model(name, pretrained=False, drop_rate=0.0)
        else:
            model = getattr(torchvision.models, name)(weights=None)
        model = without_dropout(model)
        failed |= not check_twin(model, os.path.join(d, name), name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
