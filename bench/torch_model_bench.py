#!/usr/bin/env python3
"""PyTorch twin of `kestrel bench`: images per second of a model's eval-mode
inference and of whole training steps (forward, cross-entropy, backward, SGD
momentum step, zero_grad) at one batch and input size, median of --iters timed
iterations after --warmup, random inputs and labels. Models come from
torchvision (resnet*, mobilenet_*, efficientnet_b*, densenet*), EfficientMicroNet
(emn_tiny, emn_small, emn_base) from bench/torch_emn.py, else timm. On CUDA
the input and model are channels_last (NHWC, as Kestrel's), on the CPU with
--channels-last, and --amp bf16/fp16 runs the forward under torch.autocast.

Prints one Markdown row per model, the columns of `kestrel bench`. Compare
at inputs over 64 px: at 64 px and below `kestrel bench` builds the CIFAR stem
(EfficientMicroNet here does too).

    python3 bench/torch_model_bench.py efficientnet_b0 resnet50 --input 3x224x224 -b 64 --device cuda --amp bf16
"""
import argparse
import os
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("torch_model_bench: torch is not installed")


def build(name, classes, in_channels, height):
    import torchvision

    if name.startswith("emn_"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from torch_emn import build_emn

        return build_emn(name, classes, in_channels, cifar_stem=height <= 64)
    if hasattr(torchvision.models, name):
        return getattr(torchvision.models, name)(weights=None, num_classes=classes)
    try:
        import timm
    except ImportError:
        sys.exit(f"torch_model_bench: {name} is not a torchvision model and timm is not installed")
    return timm.create_model(name, pretrained=False, num_classes=classes)


def median_ms(fn, warmup, iters, device):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description="PyTorch twin of kestrel bench")
    p.add_argument("models", nargs="+")
    p.add_argument("--input", default="3x224x224")
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default: as kestrel bench, 10 for EfficientMicroNet, else 1000)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="off", choices=["off", "fp16", "bf16"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--channels-last", action="store_true", help="NHWC on the CPU too (always on CUDA)")
    a = p.parse_args()
    try:
        c, h, w = (int(v) for v in a.input.split("x"))
    except ValueError:
        sys.exit(f"torch_model_bench: --input must look like 3x224x224, got '{a.input}'")
    device = torch.device(a.device)
    if a.amp != "off" and device.type != "cuda":
        sys.exit("torch_model_bench: --amp needs --device cuda")
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if device.type == "cuda" or a.channels_last else torch.contiguous_format
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.amp)
    print(f"| model | params | device | batch | input | amp | infer img/s (ms) | train img/s (ms) |  (torch {torch.__version__})")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.models:
        torch.manual_seed(0)
        classes = a.num_classes or (10 if name.startswith("emn_") else 1000)
        model = build(name, classes, c, h).to(device, memory_format=fmt)
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(a.batch_size, c, h, w, device=device).to(memory_format=fmt)
        y = torch.randint(0, classes, (a.batch_size,), device=device)
        autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (lambda: torch.autocast(device.type, enabled=False))

        def infer():
            with torch.no_grad(), autocast():
                model(x)

        model.eval()
        infer_ms = median_ms(infer, a.warmup, a.iters, device)
        train = "-"
        if not a.no_train:
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            scaler = torch.cuda.amp.GradScaler() if a.amp == "fp16" else None

            def step():
                with autocast():
                    loss = F.cross_entropy(model(x).float(), y)
                if scaler:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                opt.zero_grad(set_to_none=True)

            train_ms = median_ms(step, a.warmup, a.iters, device)
            train = f"{1000 * a.batch_size / train_ms:.1f} ({train_ms:.2f})"
        print(f"| {name} | {params} | {device} | {a.batch_size} | {a.input} | {a.amp} | "
              f"{1000 * a.batch_size / infer_ms:.1f} ({infer_ms:.2f}) | {train} |", flush=True)


if __name__ == "__main__":
    main()
