"""Loads Kestrel's saved weights into torchvision's models and compares logits.

Usage: check_models.py DIR. DIR/models.txt lists torchvision model names; for
each, DIR/<name>.safetensors holds Kestrel's state_dict (PyTorch names, OIHW),
DIR/<name>_x.npy the input (NHWC) and DIR/<name>_logits.npy Kestrel's eval-mode
logits. Loading is strict (every name and shape must match both ways); exits 1
when any max abs logit difference reaches ATOL.
"""
import os
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file

ATOL = 1e-4


def main(d):
    torch.manual_seed(0)
    failed = False
    with open(os.path.join(d, "models.txt")) as f:
        names = [l.strip() for l in f if l.strip()]
    for name in names:
        model = getattr(torchvision.models, name)(weights=None)
        state = load_file(os.path.join(d, name + ".safetensors"))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            print(f"{name}: state_dict does not load strictly: {e}")
            failed = True
            continue
        model.eval()
        x = torch.from_numpy(np.load(os.path.join(d, name + "_x.npy"))).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            y = model(x).numpy()
        ref = np.load(os.path.join(d, name + "_logits.npy"))
        if y.shape != ref.shape:
            print(f"{name}: logits shape {ref.shape} in Kestrel, {y.shape} in torchvision")
            failed = True
            continue
        diff = np.abs(y - ref)
        worst = np.unravel_index(diff.argmax(), diff.shape)
        ok = diff.max() < ATOL
        print(f"{name}: max |logit diff| = {diff.max():.3g} at {worst} (torch {y[worst]:.6f}, "
              f"kestrel {ref[worst]:.6f}), logits span [{ref.min():.3f}, {ref.max():.3f}], "
              f"tolerance {ATOL}: {'ok' if ok else 'MISMATCH'}")
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
