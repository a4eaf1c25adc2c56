"""EfficientMicroNet (Tiny / Small / Base) in PyTorch, with Kestrel's
parameter names and layouts (models/emn.cpp, docs/models.md), so that a
Kestrel checkpoint loads with strict=True.

For side-by-side checks and speed baselines only, never needed to train with
Kestrel: tests/interop/check_emn.py compares logits, gradients and running
statistics with Kestrel's; bench/torch_model_bench.py emn_tiny ... times it.

    from torch_emn import build_emn
    model = build_emn("emn_tiny", classes=10, cifar_stem=True)
"""
import torch
import torch.nn.functional as F
from torch import nn

RE, HS = "relu", "hardswish"

# Per variant: stem width, stages (channels, blocks, first stride, expansion,
# depthwise kernel, activation), head width. The table of models/emn.cpp.
VARIANTS = {
    "emn_tiny": (16, [(16, 1, 1, 1.0, 3, RE), (24, 2, 2, 4.0, 3, RE), (32, 3, 2, 4.0, 5, RE),
                      (64, 4, 2, 3.0, 3, HS), (96, 3, 1, 3.0, 5, HS), (144, 3, 2, 3.0, 5, HS)], 1280),
    "emn_small": (16, [(16, 1, 1, 1.0, 3, RE), (24, 2, 2, 4.0, 3, RE), (48, 3, 2, 4.0, 5, RE),
                       (96, 4, 2, 6.0, 3, HS), (136, 3, 1, 6.0, 5, HS), (224, 3, 2, 6.0, 5, HS)], 1280),
    "emn_base": (24, [(24, 1, 1, 1.0, 3, RE), (32, 2, 2, 4.0, 3, RE), (64, 3, 2, 4.0, 5, RE),
                      (128, 4, 2, 6.0, 3, HS), (208, 3, 1, 6.0, 5, HS), (384, 3, 2, 6.0, 5, HS)], 1280),
}
DILATIONS = (1, 2, 3)  # multi-scale feature aggregation branches


def make_divisible(v, divisor=8):
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def activation(name):
    return {RE: nn.ReLU(), HS: nn.Hardswish()}.get(name, nn.Identity())


class ConvBNAct(nn.Module):
    """Children "0" (conv, no bias) and "1" (batch norm), as Kestrel names them."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, dilation=1, act=None):
        super().__init__()
        self.add_module("0", nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 * dilation, dilation, groups,
                                       bias=False))
        self.add_module("1", nn.BatchNorm2d(cout))
        self.act = activation(act)

    def forward(self, x):
        return self.act(self._modules["1"](self._modules["0"](x)))


class GhostModule(nn.Module):
    """A 1x1 conv makes half the maps, a cheap 3x3 depthwise conv the rest from them."""

    def __init__(self, cin, cout, act):
        super().__init__()
        init = (cout + 1) // 2
        self.out = cout
        self.primary_conv = ConvBNAct(cin, init, 1, act=act)
        self.cheap_operation = ConvBNAct(init, init, 3, groups=init, act=act)

    def forward(self, x):
        a = self.primary_conv(x)
        return torch.cat([a, self.cheap_operation(a)], 1)[:, :self.out]


class CoordinateAttention(nn.Module):
    """Hou et al. 2021: pool along W and along H, a shared 1x1 conv + BN +
    hard-swish, then one sigmoid gate per axis."""

    def __init__(self, channels, reduction=32):
        super().__init__()
        mip = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        rows = x.mean(3, keepdim=True)                     # [N,C,H,1]
        cols = x.mean(2, keepdim=True).permute(0, 1, 3, 2)  # [N,C,W,1]
        y = F.hardswish(self.bn1(self.conv1(torch.cat([rows, cols], 2))))
        y_h, y_w = torch.split(y, [h, w], 2)
        gate_h = torch.sigmoid(self.conv_h(y_h))
        gate_w = torch.sigmoid(self.conv_w(y_w.permute(0, 1, 3, 2)))
        return x * gate_h * gate_w


class IRABlock(nn.Module):
    """Ghost expansion, depthwise conv, coordinate attention, ghost projection;
    a residual when the shapes allow."""

    def __init__(self, cin, cout, expand, kernel, stride, act):
        super().__init__()
        mid = make_divisible(cin * expand)
        self.residual = stride == 1 and cin == cout
        self.ghost1 = GhostModule(cin, mid, act) if mid != cin else None
        self.dw = ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act)
        self.ca = CoordinateAttention(mid)
        self.ghost2 = GhostModule(mid, cout, None)

    def forward(self, x):
        h = self.ghost1(x) if self.ghost1 is not None else x
        h = self.ghost2(self.ca(self.dw(h)))
        return h + x if self.residual else h


class MultiScaleAggregation(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.branches = nn.ModuleList(ConvBNAct(channels, channels, 3, groups=channels, dilation=d)
                                      for d in DILATIONS)
        self.fuse = ConvBNAct(channels * len(DILATIONS), channels, 1, act=HS)

    def forward(self, x):
        return self.fuse(torch.cat([b(x) for b in self.branches], 1))


class EMN(nn.Module):
    def __init__(self, variant, classes=10, in_channels=3, cifar_stem=False, dropout=0.2):
        super().__init__()
        stem, stages, head = VARIANTS[variant]
        self.stem = ConvBNAct(in_channels, stem, 3, 1 if cifar_stem else 2, act=HS)
        self.stages = nn.Sequential()
        cin, first_downsample = stem, True
        for channels, blocks, stride, expand, kernel, act in stages:
            if stride == 2 and first_downsample:
                first_downsample = False
                if cifar_stem:
                    stride = 1  # 32x32: 32-32-32-16-8-8-4
            stage = nn.Sequential()
            for i in range(blocks):
                stage.append(IRABlock(cin, channels, expand, kernel, stride if i == 0 else 1, act))
                cin = channels
            self.stages.append(stage)
        self.msfa = MultiScaleAggregation(cin)
        self.head = ConvBNAct(cin, head, 1, act=HS)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, classes))

    def forward(self, x):
        h = self.head(self.msfa(self.stages(self.stem(x))))
        return self.classifier(h.mean((2, 3)))


def build_emn(name, classes=10, in_channels=3, cifar_stem=False, dropout=0.2):
    if name not in VARIANTS:
        raise ValueError(f"torch_emn: no variant '{name}' (valid: {', '.join(VARIANTS)})")
    return EMN(name, classes, in_channels, cifar_stem, dropout)
