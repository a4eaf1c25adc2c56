"""Compares what Kestrel computed for a model with its PyTorch twin given the
same weights, for check_models.py and check_emn.py.

Files, for a prefix P: P_before.safetensors (Kestrel's state_dict), P_x.npy
(NHWC input), P_labels.npy; Kestrel in float32, as users run it: P_eval32.npy
and P_train32.npy (eval- and train-mode logits); Kestrel in float64 (its
float64 kernels, the same weights): P_eval.npy, P_train.npy, P_grads.safetensors
(the gradient of the mean cross-entropy of the train-mode logits, Kestrel's
layouts: conv weights OHWI) and P_after.safetensors (the state after that
pass: running statistics updated).

The twin runs in float64. Against it Kestrel's float64 must agree to
rounding; its float32 logits within LOGIT_ATOL. Gradients are compared in
float64 only: in float32 both engines' gradients of the first layers differ
from float64 by percents (EMN-Small's by up to 14% in float32 PyTorch at
64 px, where the last norms see 2x2 maps; DenseNet-121's by up to 5%, where
pre-activations at ReLU's kink take either side), so a float32 comparison
could only be loose.
"""
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

LOGIT_ATOL = 1e-4   # Kestrel's float32 logits
F64_RTOL = 1e-7    # float64, of the tensor's norm (worst seen: 3e-8, in the hard-swish models)


def report(name, kestrel, reference, tol, scale):
    diff = float(np.linalg.norm((kestrel - reference).ravel()))
    ok = diff <= tol * scale
    if not ok:
        print(f"  {name}: |diff| {diff:.3g} (scale {scale:.3g}), tolerance {tol}: MISMATCH")
    return ok


def norm(a):
    return float(np.linalg.norm(a.ravel()))


def check_twin(model, prefix, label):
    """model: the twin, built without dropout or stochastic depth. Returns True when all matches."""
    try:
        model.load_state_dict(load_file(prefix + "_before.safetensors"), strict=True)
    except RuntimeError as e:
        print(f"{label}: state_dict does not load strictly: {e}")
        return False
    model.double()
    x = torch.from_numpy(np.load(prefix + "_x.npy")).permute(0, 3, 1, 2).contiguous().double()
    labels = torch.from_numpy(np.load(prefix + "_labels.npy")).long()
    ok = True
    model.eval()
    with torch.no_grad():
        logits = model(x).numpy()
    ok &= report("float64 eval logits", np.load(prefix + "_eval.npy"), logits, F64_RTOL, norm(logits))
    worst32 = np.abs(np.load(prefix + "_eval32.npy") - logits).max()
    model.train()
    out = model(x)
    F.cross_entropy(out, labels).backward()
    logits = out.detach().numpy()
    ok &= report("float64 train logits", np.load(prefix + "_train.npy"), logits, F64_RTOL, norm(logits))
    worst32 = max(worst32, np.abs(np.load(prefix + "_train32.npy") - logits).max())
    if worst32 > LOGIT_ATOL:
        print(f"  float32 logits: max |diff| {worst32:.3g}, tolerance {LOGIT_ATOL}: MISMATCH")
        ok = False
    grads = load_file(prefix + "_grads.safetensors")
    params = dict(model.named_parameters())
    if set(grads) != set(params):
        print(f"{label}: gradient names differ: {sorted(set(grads) ^ set(params))[:5]}")
        return False
    # Biases before a training-mode norm have a gradient of zero: compared to
    # the model's largest gradient instead.
    largest = max(p.grad.abs().max().item() for p in params.values())
    for key, p in params.items():
        g = (p.grad.permute(0, 2, 3, 1) if p.grad.dim() == 4 else p.grad).numpy()  # OIHW -> Kestrel's OHWI
        ok &= report("gradient of " + key, grads[key].double().numpy(), g, F64_RTOL,
                     max(norm(g), 1e-4 * largest * np.sqrt(g.size)))
    after = load_file(prefix + "_after.safetensors")
    buffers = dict(model.named_buffers())
    for key, b in buffers.items():
        want = b.double().numpy()
        ok &= report(key, after[key].double().numpy(), want, F64_RTOL, max(norm(want), 1.0))
    print(f"{label}: float64 logits, {len(params)} gradients and {len(buffers)} buffers, float32 logits "
          f"(max |diff| {worst32:.2g}) {'match' if ok else 'MISMATCH'}")
    return ok


def without_dropout(model):
    """Dropout and stochastic depth off: the train-mode pass must be deterministic."""
    for m in model.modules():
        if isinstance(getattr(m, "p", None), float):
            m.p = 0.0
    return model
