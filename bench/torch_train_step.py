#!/usr/bin/env python3
"""PyTorch twin of bench/bench_train_step.cpp: one CPU training step of the
150,690-parameter depthwise-separable CIFAR net (models/cifar_net.cpp, layer for
layer), batch 128, SGD momentum 0.9 / weight decay 5e-4 / lr 0.05, dropout 0.2
in train mode: forward, cross-entropy, backward, step, zero_grad(set_to_none).

Prints one JSON object per (shape, memory format) with the median step time
and images/s. tools/bench_cpu.sh runs it beside Kestrel's benchmark.

    python3 bench/torch_train_step.py --threads 2 --steps 20
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

STEM = 20
LAYERS = [(20, 1, 2), (40, 2, 2), (80, 2, 2), (160, 2, 2)]  # (out, stride, blocks)
BATCH = 128
CLASSES = 10


class SeparableBlock(nn.Module):
    """dw3x3 (stride) -> pw1x1 -> BN -> ReLU -> dw3x3 -> pw1x1 -> BN, plus the input
    (1x1 conv + BN when channels or stride change), then ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.dw1 = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.pw1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.dw2 = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False)
        self.pw2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = self.shortcut(x) if self.shortcut is not None else x
        h = F.relu(self.bn1(self.pw1(self.dw1(x))))
        h = self.bn2(self.pw2(self.dw2(h)))
        return F.relu(h + identity)


class CifarNet(nn.Module):
    def __init__(self, in_channels=3, classes=CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, STEM, 3, 1, 1, bias=False), nn.BatchNorm2d(STEM),
                                  nn.ReLU(inplace=True))
        blocks, cin = [], STEM
        for out, stride, n in LAYERS:
            layer = []
            for b in range(n):
                layer.append(SeparableBlock(cin, out, stride if b == 0 else 1))
                cin = out
            blocks.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():  # the same init as models/common.cpp (kaiming fan_out)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


def time_steps(channels, side, memory_format, steps, warmup):
    torch.manual_seed(0)
    model = CifarNet(channels).train().to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(BATCH, channels, side, side).contiguous(memory_format=memory_format)
    y = torch.randint(0, CLASSES, (BATCH,))

    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "shape": f"{channels}x{side}x{side}",
        "memory_format": "channels_last" if memory_format == torch.channels_last else "channels_first",
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "median_ms": med * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "img_per_s": BATCH / med,
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--shapes", default="1x28,3x32", help="comma list of CxHW")
    ap.add_argument("--formats", default="channels_first,channels_last")
    ap.add_argument("--check-params", action="store_true", help="only check the parameter counts")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)

    for c, want in ((3, 150690), (1, 150330)):
        got = sum(p.numel() for p in CifarNet(c).parameters())
        if got != want:
            sys.exit(f"torch_train_step.py: CifarNet({c}) has {got} parameters, Kestrel's cifar10_200k has {want}")
    if a.check_params:
        print("parameter counts match Kestrel's cifar10_200k (150,690 at 3 channels, 150,330 at 1)")
        return

    formats = {"channels_first": torch.contiguous_format, "channels_last": torch.channels_last}
    for spec in a.shapes.split(","):
        c, side = (int(v) for v in spec.split("x"))
        for name in a.formats.split(","):
            print(json.dumps(time_steps(c, side, formats[name], a.steps, a.warmup)), flush=True)


if __name__ == "__main__":
    main()
