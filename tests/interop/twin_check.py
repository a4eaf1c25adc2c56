"""Compares what Kestrel computed for a model with its PyTorch twin given the
same weights, in float64 (the reference), for check_models.py and
check_emn.py.

Files, for a prefix P: P_before.safetensors (Kestrel's state_dict), P_x.npy
(NHWC input), P_labels.npy, P_eval.npy (eval-mode logits), P_train.npy
(train-mode logits), P_grads.safetensors (the gradient of the mean
cross-entropy of the train-mode logits, Kestrel's layouts: conv weights
OHWI) and P_after.safetensors (the state after that pass: running
statistics updated).

The reference is the twin in float64. Small maps make the norms' backward
ill-conditioned: at a 64 px input EfficientMicroNet-Small's last norms see
2x2 maps, where float32 PyTorch's gradients of the first layers differ from
its own float64 ones by up to 14%; DenseNet-121's by up to 5%. So a tensor
passes where Kestrel's is within the tolerances below of float64's, or no
farther from it than twice float32 PyTorch's distance (for EMN-Small's first
layers Kestrel, whose norms sum in double, is within 0.1%).
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

LOGIT_ATOL = 1e-4
# Gradients: the norm of the difference, of the tensor's norm (at least
# 1e-4 of the model's largest gradient per element: biases before a
# training-mode norm have a gradient of zero, which float32 leaves at 1e-7).
# A norm rather than the largest element: where a pre-activation sits at
# ReLU's kink, float32 and float64 take different sides, and that one
# element may differ by its whole size (seen in DenseNet-121).
GRAD_RTOL = 5e-3
STAT_RTOL = 1e-4  # running statistics, largest element, of the tensor's largest (at least 1)


def max_diff(a, b):
    return float(np.abs(a - b).max()) if a.size else 0.0


def report(name, kestrel, reference, tol, scale=1.0, float32=None, distance=max_diff):
    """Kestrel's distance from the reference, at most tol * scale or twice the
    twin's own float32 result's distance (when given)."""
    diff = distance(kestrel, reference)
    allowed = tol * scale
    if float32 is not None:
        allowed = max(allowed, 2.0 * distance(float32, reference))
    ok = diff <= allowed
    if not ok:
        print(f"  {name}: |diff| {diff:.3g} (scale {scale:.3g}), allowed {allowed:.3g}: MISMATCH")
    return ok


def norm_diff(a, b):
    return float(np.linalg.norm((a - b).ravel()))


def train_pass(model, x, labels):
    model.train()
    logits = model(x)
    F.cross_entropy(logits, labels).backward()
    return logits.detach()


def check_twin(model, prefix, label):
    """model: the twin, built without dropout or stochastic depth. Returns True when all matches."""
    try:
        model.load_state_dict(load_file(prefix + "_before.safetensors"), strict=True)
    except RuntimeError as e:
        print(f"{label}: state_dict does not load strictly: {e}")
        return False
    model32 = copy.deepcopy(model)
    model.double()
    x = torch.from_numpy(np.load(prefix + "_x.npy")).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.load(prefix + "_labels.npy")).long()
    ok = True
    model.eval()
    with torch.no_grad():
        ok &= report("eval logits", np.load(prefix + "_eval.npy"), model(x.double()).numpy(), LOGIT_ATOL)
    logits = train_pass(model, x.double(), labels)
    train_pass(model32, x, labels)
    ok &= report("train logits", np.load(prefix + "_train.npy"), logits.numpy(), LOGIT_ATOL)
    grads = load_file(prefix + "_grads.safetensors")
    params = dict(model.named_parameters())
    params32 = dict(model32.named_parameters())
    if set(grads) != set(params):
        print(f"{label}: gradient names differ: {sorted(set(grads) ^ set(params))[:5]}")
        return False

    def kestrel_layout(g):  # OIHW -> Kestrel's OHWI
        return (g.permute(0, 2, 3, 1) if g.dim() == 4 else g).double().numpy()

    largest = max(p.grad.abs().max().item() for p in params.values())
    for key, p in params.items():
        g = kestrel_layout(p.grad)
        scale = max(float(np.linalg.norm(g.ravel())), 1e-4 * largest * np.sqrt(g.size))
        ok &= report("gradient of " + key, grads[key].double().numpy(), g, GRAD_RTOL, scale,
                     kestrel_layout(params32[key].grad), norm_diff)
    after = load_file(prefix + "_after.safetensors")
    buffers = dict(model.named_buffers())
    buffers32 = dict(model32.named_buffers())
    for key, b in buffers.items():
        want = b.double().numpy()
        ok &= report(key, after[key].double().numpy(), want, STAT_RTOL, max(float(np.abs(want).max()), 1.0),
                     buffers32[key].double().numpy())
    print(f"{label}: eval and train logits, {len(params)} gradients and {len(buffers)} buffers "
          f"{'match' if ok else 'MISMATCH'}")
    return ok


def without_dropout(model):
    """Dropout and stochastic depth off: the train-mode pass must be deterministic."""
    for m in model.modules():
        if isinstance(getattr(m, "p", None), float):
            m.p = 0.0
    return model
