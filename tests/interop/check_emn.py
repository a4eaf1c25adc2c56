"""Runs Kestrel's EfficientMicroNet weights in bench/torch_emn.py (an
independent PyTorch implementation) and compares what Kestrel computed.

Usage: check_emn.py DIR. For each NAME listed in DIR/models.txt ("emn_tiny
10 3 cifar": variant, classes, input channels, stem), DIR holds
NAME_before.safetensors (Kestrel's state_dict), NAME_x.npy (NHWC input),
NAME_labels.npy, NAME_eval.npy (eval-mode logits), NAME_train.npy (train-mode
logits), NAME_grads.safetensors (the gradient of the mean cross-entropy of
the train-mode logits, Kestrel's layouts: conv weights OHWI) and
NAME_after.safetensors (the state after that forward: running statistics
updated). Exits 1 on any mismatch.

The twin runs in float64: at a 64 px input the last stages' norms see 2x2
maps, where float32 PyTorch's own gradients of the first layers differ from
its float64 ones by up to 14% (Kestrel's, which sum the norms' statistics in
double, by under 0.1%).
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from torch_emn import build_emn  # noqa: E402

LOGIT_ATOL = 1e-4
# Gradients: of the tensor's largest, or of 1e-4 times the model's largest
# where that is more (biases before a training-mode norm have a gradient of
# zero, which float32 leaves at 1e-7).
GRAD_RTOL = 2e-3
STAT_RTOL = 1e-4  # running statistics, of the tensor's largest


def worst(name, got, want, tol, scale=1.0):
    diff = np.abs(got - want).max() if got.size else 0.0
    ok = diff <= tol * scale
    if not ok:
        print(f"  {name}: max |diff| {diff:.3g} (scale {scale:.3g}), tolerance {tol}: MISMATCH")
    return ok


def check(d, name, classes, channels, stem):
    torch.manual_seed(0)
    model = build_emn(name, classes, channels, stem == "cifar", dropout=0.0)
    model.load_state_dict(load_file(os.path.join(d, name + "_before.safetensors")), strict=True)
    model.double()
    x = torch.from_numpy(np.load(os.path.join(d, name + "_x.npy"))).permute(0, 3, 1, 2).contiguous().double()
    labels = torch.from_numpy(np.load(os.path.join(d, name + "_labels.npy"))).long()
    ok = True
    model.eval()
    with torch.no_grad():
        ok &= worst("eval logits", model(x).numpy(), np.load(os.path.join(d, name + "_eval.npy")), LOGIT_ATOL)
    model.train()
    logits = model(x)
    ok &= worst("train logits", logits.detach().numpy(), np.load(os.path.join(d, name + "_train.npy")), LOGIT_ATOL)
    F.cross_entropy(logits, labels).backward()
    grads = load_file(os.path.join(d, name + "_grads.safetensors"))
    params = dict(model.named_parameters())
    if set(grads) != set(params):
        print(f"  gradient names differ: {sorted(set(grads) ^ set(params))[:5]}")
        return False
    largest = max(p.grad.abs().max().item() for p in params.values())
    for key, p in params.items():
        g = p.grad.permute(0, 2, 3, 1) if p.grad.dim() == 4 else p.grad  # OIHW -> Kestrel's OHWI
        scale = max(g.abs().max().item(), 1e-4 * largest)
        ok &= worst("gradient of " + key, g.numpy(), grads[key].double().numpy(), GRAD_RTOL, scale)
    after = load_file(os.path.join(d, name + "_after.safetensors"))
    for key, b in model.named_buffers():
        want = after[key].double().numpy()
        ok &= worst(key, b.double().numpy(), want, STAT_RTOL, max(np.abs(want).max(), 1.0))
    print(f"{name}: logits, {len(params)} gradients and {len(list(model.buffers()))} buffers "
          f"{'match' if ok else 'MISMATCH'}")
    return ok


def main(d):
    with open(os.path.join(d, "models.txt")) as f:
        rows = [line.split() for line in f if line.strip()]
    failed = False
    for name, classes, channels, stem in rows:
        failed |= not check(d, name, int(classes), int(channels), stem)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
